//! Telling the pool records an rbdm before issue 15 wrote from Ceph's, so an old store is
//! refused by name instead of misread.
//!
//! Decision: refuse, with [`Error::Unsupported`] naming the record; there is no store-level
//! marker, because each old value is told from a Ceph one by its bytes alone:
//!
//! - Names and ids (`rbd_directory` values, `rbd_id.<name>` data) were raw bytes; Ceph's are
//!   u32-length strings. A name has no NUL byte (`check_name`) and an id is hex, so a raw value
//!   has none, while the length of a Ceph string of at most 255 bytes has NUL in its bytes
//!   1 to 3. A value is old exactly when it is non-empty, UTF-8 and NUL-free.
//! - Trash entries were rbdm's v1 `{name, source string, u64 seconds, u64 seconds}`; Ceph's
//!   `TrashImageSpec` decoder refuses them (the name's first byte lands in the top byte of a
//!   string length, past the value), and [`is_old_trash`] recognises them exactly.

use rbdm_cls::denc::Decoder;
use rbdm_cls::DecodeError;

use crate::Error;

/// What to do about a store that holds old records.
const ADVICE: &str = "this store was written by an rbdm older than Ceph's on-disk format \
                      (issue 15); export its images with that rbdm and import them here";

/// The error for an old-format record `what`.
pub(crate) fn old_record(what: &str) -> Error {
    Error::Unsupported(format!("{what} is in rbdm's pre-Ceph encoding: {ADVICE}"))
}

/// A raw name or id as an rbdm before issue 15 stored it.
pub(crate) fn is_old_string(bytes: &[u8]) -> bool {
    !bytes.is_empty() && !bytes.contains(&0) && std::str::from_utf8(bytes).is_ok()
}

/// A trash entry as an rbdm before issue 15 stored it: struct v1/compat 1 holding a name,
/// a source string, and two u64 timestamps, nothing else.
pub(crate) fn is_old_trash(bytes: &[u8]) -> bool {
    let mut d = Decoder::new("old trash entry", bytes);
    let body = d.versioned(1, 1, |b, v| {
        if v.v != 1 {
            return Ok(false);
        }
        b.string()?;
        let source = b.string()?;
        b.u64()?;
        b.u64()?;
        Ok(b.remaining() == 0 && ["USER", "MIGRATION", "REMOVING"].contains(&source.as_str()))
    });
    matches!(body, Ok(true)) && d.finish().is_ok()
}

/// A Ceph record that did not decode: an old-format refusal when `old` recognises it,
/// otherwise corruption naming the decoder's offset.
pub(crate) fn undecodable(
    what: &str,
    bytes: &[u8],
    e: DecodeError,
    old: fn(&[u8]) -> bool,
) -> Error {
    if old(bytes) {
        old_record(what)
    } else {
        Error::Corrupt(format!("{what}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::Enc;
    use rbdm_cls::directory::encode_string;
    use rbdm_cls::trash::{TrashImageSpec, TrashSource, TrashState};
    use rbdm_cls::UTime;

    fn old_trash(name: &str, source: &str) -> Vec<u8> {
        Enc::new()
            .versioned(1, 1, |e| {
                e.str(name)
                    .str(source)
                    .u64(1_700_000_000)
                    .u64(1_700_000_060);
            })
            .finish()
    }

    #[test]
    fn raw_and_prefixed_strings_never_look_alike() {
        for s in [
            "a",
            "img",
            "103bc9ebfadc",
            "\u{1}\u{1}\u{1}",
            &"n".repeat(255),
        ] {
            assert!(is_old_string(s.as_bytes()), "{s:?}");
            assert!(!is_old_string(&encode_string(s)), "{s:?}");
        }
        assert!(!is_old_string(b""));
    }

    #[test]
    fn old_trash_entries_are_recognised_and_ceph_refuses_them() {
        for (name, source) in [("t", "USER"), ("migsrc", "MIGRATION"), ("x", "REMOVING")] {
            let old = old_trash(name, source);
            assert!(is_old_trash(&old), "{name}");
            assert!(TrashImageSpec::decode(&old).is_err(), "{name}");
        }
        assert!(!is_old_trash(&old_trash("t", "OTHER")));
        let mut longer = old_trash("t", "USER");
        longer.push(0);
        assert!(!is_old_trash(&longer));
    }

    #[test]
    fn ceph_trash_entries_are_not_old() {
        let spec = TrashImageSpec {
            source: TrashSource::User,
            name: "trashed".into(),
            deletion_time: UTime { sec: 5, nsec: 6 },
            deferment_end_time: UTime { sec: 5, nsec: 6 },
            state: TrashState::Normal,
        };
        assert!(!is_old_trash(&spec.encode()));
    }
}
