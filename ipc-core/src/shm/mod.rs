//! Shared-memory segments (DESIGN.md §4).
