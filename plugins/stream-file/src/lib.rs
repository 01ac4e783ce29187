//! The `file` stream.
