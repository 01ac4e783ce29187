//! The one decode error: which record, at which byte offset, what was wrong.

use thiserror::Error;

/// A record that is not what Ceph would have written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{record}: {kind} at byte {offset}")]
pub struct DecodeError {
    /// The record being decoded (for example `cls_rbd_snap`).
    pub record: &'static str,
    /// Offset into the value where decoding failed.
    pub offset: usize,
    /// What was wrong there.
    pub kind: DecodeErrorKind,
}

/// What made a record undecodable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeErrorKind {
    /// The value ends before a field of `need` bytes.
    #[error("truncated: need {need} bytes, {have} left")]
    Truncated { need: usize, have: usize },
    /// A versioned struct whose compat version is newer than this decoder understands.
    #[error("struct compat version {compat} is newer than supported {supported}")]
    UnsupportedVersion { compat: u8, supported: u8 },
    /// A struct version older than the oldest form this record ever had.
    #[error("struct version {version} below the minimum {min}")]
    VersionTooOld { version: u8, min: u8 },
    /// Bytes left after a value that must fill the whole record.
    #[error("{extra} trailing bytes")]
    TrailingBytes { extra: usize },
    /// A field holding a value outside its enumeration or range.
    #[error("invalid {field}: {value}")]
    InvalidValue { field: &'static str, value: u64 },
    /// A checksum that does not match the bytes it covers.
    #[error("{what} crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
}
