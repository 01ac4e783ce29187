//! Ceph's byte encodings for header values.
