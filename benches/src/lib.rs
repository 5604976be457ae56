//! Shared helpers of the CRADLE benchmarks.
