//! The disk tier (issue 7): being written.
