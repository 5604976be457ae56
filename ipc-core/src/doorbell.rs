//! Doorbells (DESIGN.md §6).
