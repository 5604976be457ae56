//! Unit tests for shm.
