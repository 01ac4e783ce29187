//! `rbd_trash` values: `cls::rbd::TrashImageSpec` (version 2; version 1 decoded).

use crate::denc::{byte_enum, decode_versioned, encode_versioned};
use crate::error::DecodeError;
use crate::UTime;

byte_enum! {
/// Why an image is in the trash (`cls::rbd::TrashImageSource`, one byte).
pub enum TrashSource("trash source") {
    User = 0,
    Mirroring = 1,
    Migration = 2,
    Removing = 3,
    UserParent = 4,
}
}

byte_enum! {
/// What is happening to a trashed image (`cls::rbd::TrashImageState`, one byte).
pub enum TrashState("trash state") {
    Normal = 0,
    Moving = 1,
    Removing = 2,
    Restoring = 3,
}
}

/// One trash entry, keyed `id_<image id>` in `rbd_trash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashImageSpec {
    pub source: TrashSource,
    pub name: String,
    pub deletion_time: UTime,
    pub deferment_end_time: UTime,
    pub state: TrashState,
}

impl TrashImageSpec {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned("TrashImageSpec", bytes, 2, 1, |d, sv| {
            let source = TrashSource::decode(d)?;
            let name = d.string()?;
            let deletion_time = UTime::decode(d)?;
            let deferment_end_time = UTime::decode(d)?;
            let state = if sv.v >= 2 {
                TrashState::decode(d)?
            } else {
                TrashState::Normal
            };
            Ok(TrashImageSpec {
                source,
                name,
                deletion_time,
                deferment_end_time,
                state,
            })
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(2, 1, |e| {
            e.u8(self.source as u8);
            e.string(&self.name);
            self.deletion_time.encode(e);
            self.deferment_end_time.encode(e);
            e.u8(self.state as u8);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denc::Encoder;

    #[test]
    fn v1_decodes_as_normal_state() {
        let mut e = Encoder::new();
        e.versioned(1, 1, |e| {
            e.u8(2);
            e.string("img");
            UTime { sec: 1, nsec: 0 }.encode(e);
            UTime { sec: 2, nsec: 0 }.encode(e);
        });
        let spec = TrashImageSpec::decode(&e.into_bytes()).unwrap();
        assert_eq!(spec.source, TrashSource::Migration);
        assert_eq!(spec.state, TrashState::Normal);
    }

    #[test]
    fn source_outside_the_enum_is_refused_with_offset() {
        // a source byte outside the enumeration, at offset 6 (after the struct header)
        let mut e = Encoder::new();
        e.versioned(1, 1, |e| {
            e.u8(9);
        });
        let err = TrashImageSpec::decode(&e.into_bytes()).unwrap_err();
        assert_eq!(err.offset, 6);
        assert!(err.to_string().contains("trash source"), "{err}");
    }
}
