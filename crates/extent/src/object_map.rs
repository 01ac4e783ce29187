//! The object map: two bits per object, persisted with a crc32 so a torn write is detected.
/// The state of one object, in Ceph's numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ObjectState {
    Nonexistent = 0,
    Exists = 1,
    Pending = 2,
    ExistsClean = 3,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMap {
    len: u64,
    bits: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectMapError {
    #[error("object map is truncated: {0}")]
    Truncated(String),
    #[error("object map checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("object map is malformed: {0}")]
    Malformed(String),
}
