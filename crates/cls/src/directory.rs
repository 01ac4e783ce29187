//! Pool-level naming records: `rbd_directory` values and its `state` key, `rbd_id.<name>`
//! data, and the trash sources' names as `rbd trash ls` prints them.

use crate::denc::{byte_enum, whole, Encoder};
use crate::error::DecodeError;
use crate::trash::TrashSource;

/// The `rbd_directory` key holding the [`DirectoryState`] (only namespaces' directories
/// have it; absent reads as ready).
pub const STATE_KEY: &str = "state";

byte_enum! {
/// `cls::rbd::DirectoryState`, one byte: what `dir_state_set` writes.
pub enum DirectoryState("directory state") {
    Ready = 0,
    AddDisabled = 1,
}
}

impl DirectoryState {
    pub fn decode_value(bytes: &[u8]) -> Result<Self, DecodeError> {
        whole("directory state", bytes, Self::decode)
    }

    pub fn encode(self) -> Vec<u8> {
        vec![self as u8]
    }
}

/// A `name_<name>` / `id_<id>` value or `rbd_id.<name>` data: a u32-length string.
pub fn encode_string(s: &str) -> Vec<u8> {
    let mut e = Encoder::new();
    e.string(s);
    e.into_bytes()
}

/// The inverse of [`encode_string`]; the string must fill the value.
pub fn decode_string(record: &'static str, bytes: &[u8]) -> Result<String, DecodeError> {
    whole(record, bytes, |d| d.string())
}

impl TrashSource {
    /// `rbd trash ls`'s SOURCE column (librbd's `trash_source_string`).
    pub fn name(self) -> &'static str {
        match self {
            TrashSource::User => "USER",
            TrashSource::Mirroring => "MIRRORING",
            TrashSource::Migration => "MIGRATION",
            TrashSource::Removing => "REMOVING",
            TrashSource::UserParent => "USER_PARENT",
        }
    }
}

impl std::fmt::Display for TrashSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_match_the_golden_directory() {
        // golden ns1/rbd_directory id_103bc9ebfadc and ns1/rbd_id.nsimg
        assert_eq!(encode_string("nsimg"), b"\x05\0\0\0nsimg");
        let id = b"\x0c\0\0\x00103bc9ebfadc";
        assert_eq!(decode_string("rbd_id", id).unwrap(), "103bc9ebfadc");
        assert!(decode_string("rbd_id", b"103bc9ebfadc").is_err());
    }

    #[test]
    fn state_is_one_byte() {
        assert_eq!(DirectoryState::Ready.encode(), [0]);
        assert_eq!(
            DirectoryState::decode_value(&[1]).unwrap(),
            DirectoryState::AddDisabled
        );
        assert!(DirectoryState::decode_value(&[2]).is_err());
        assert!(DirectoryState::decode_value(&[0, 0]).is_err());
    }

    #[test]
    fn sources_print_as_rbd_does() {
        assert_eq!(TrashSource::User.to_string(), "USER");
        assert_eq!(TrashSource::UserParent.name(), "USER_PARENT");
    }
}
