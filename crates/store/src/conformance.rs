//! The shared conformance suite every backend runs.
