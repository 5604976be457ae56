//! cradle-client: see DESIGN.md §1. Built in the issues after the foundation.
