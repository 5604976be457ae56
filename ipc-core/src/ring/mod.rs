//! The SPSC frame ring (DESIGN.md §5).
