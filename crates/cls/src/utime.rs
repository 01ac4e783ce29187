//! `utime_t`: u32 seconds then u32 nanoseconds, Ceph's timestamp in every record.

use crate::denc::{Decoder, Encoder};
use crate::error::DecodeError;

/// A Ceph timestamp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct UTime {
    pub sec: u32,
    pub nsec: u32,
}

impl UTime {
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(UTime {
            sec: d.u32()?,
            nsec: d.u32()?,
        })
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.u32(self.sec);
        e.u32(self.nsec);
    }
}
