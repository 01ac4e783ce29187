//! `snapshot_<id>` header values: `cls_rbd_snap` (version 8, older versions decoded) and its
//! `cls::rbd::SnapshotNamespace`.

use crate::denc::{byte_enum, decode_versioned, encode_versioned, Decoder, Encoder, StructVersion};
use crate::error::DecodeError;
use crate::parent::ClsRbdParent;
use crate::UTime;

const RECORD: &str = "cls_rbd_snap";

byte_enum! {
/// `RBD_PROTECTION_STATUS_*`, one byte.
pub enum ProtectionStatus("protection_status") {
    Unprotected = 0,
    Unprotecting = 1,
    Protected = 2,
}
}

/// A mirror snapshot's namespace fields (`MirrorSnapshotNamespace`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MirrorNamespace {
    /// `MirrorSnapshotState`: 0 primary, 1 primary demoted, 2 non-primary, 3 non-primary
    /// demoted.
    pub state: u8,
    pub complete: bool,
    pub mirror_peer_uuids: Vec<String>,
    pub primary_mirror_uuid: String,
    pub primary_snap_id: u64,
    pub last_copied_object_number: u64,
    pub snap_seqs: Vec<(u64, u64)>,
}

/// `cls::rbd::SnapshotNamespace`: which kind of snapshot this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotNamespace {
    /// Type 0: a snapshot a user took.
    User,
    /// Type 1: part of a group snapshot.
    Group {
        group_pool: i64,
        group_id: String,
        group_snapshot_id: String,
    },
    /// Type 2: a removed snapshot kept because clones still use it.
    Trash {
        original_name: String,
        original_snapshot_namespace_type: u32,
    },
    /// Type 3: a snapshot-based mirroring snapshot.
    Mirror(MirrorNamespace),
    /// Any other type; Ceph decodes these as "unknown" with no fields, kept here as bytes.
    Unknown { kind: u32, body: Vec<u8> },
}

impl SnapshotNamespace {
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.versioned(1, 1, |d, _| {
            let kind = d.u32()?;
            let ns = match kind {
                0 => Self::User,
                1 => Self::Group {
                    group_pool: d.i64()?,
                    group_id: d.string()?,
                    group_snapshot_id: d.string()?,
                },
                2 => Self::Trash {
                    original_name: d.string()?,
                    original_snapshot_namespace_type: d.u32()?,
                },
                3 => Self::Mirror(decode_mirror(d)?),
                _ => Self::Unknown {
                    kind,
                    body: d.take(d.remaining())?.to_vec(),
                },
            };
            Ok(ns)
        })
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.versioned(1, 1, |e| match self {
            Self::User => e.u32(0),
            Self::Group {
                group_pool,
                group_id,
                group_snapshot_id,
            } => {
                e.u32(1);
                e.i64(*group_pool);
                e.string(group_id);
                e.string(group_snapshot_id);
            }
            Self::Trash {
                original_name,
                original_snapshot_namespace_type,
            } => {
                e.u32(2);
                e.string(original_name);
                e.u32(*original_snapshot_namespace_type);
            }
            Self::Mirror(m) => {
                e.u32(3);
                encode_mirror(m, e);
            }
            Self::Unknown { kind, body } => {
                e.u32(*kind);
                e.raw(body);
            }
        })
    }
}

fn decode_mirror(d: &mut Decoder<'_>) -> Result<MirrorNamespace, DecodeError> {
    Ok(MirrorNamespace {
        state: d.u8()?,
        complete: d.bool()?,
        mirror_peer_uuids: d.vec(4, |d| d.string())?,
        primary_mirror_uuid: d.string()?,
        primary_snap_id: d.u64()?,
        last_copied_object_number: d.u64()?,
        snap_seqs: d.vec(16, |d| Ok((d.u64()?, d.u64()?)))?,
    })
}

fn encode_mirror(m: &MirrorNamespace, e: &mut Encoder) {
    e.u8(m.state);
    e.bool(m.complete);
    e.seq(&m.mirror_peer_uuids, |e, s| e.string(s));
    e.string(&m.primary_mirror_uuid);
    e.u64(m.primary_snap_id);
    e.u64(m.last_copied_object_number);
    e.seq(&m.snap_seqs, |e, (a, b)| {
        e.u64(*a);
        e.u64(*b);
    });
}

/// One snapshot's record in the header (`cls_rbd_snap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClsRbdSnap {
    pub id: u64,
    pub name: String,
    pub image_size: u64,
    pub protection_status: ProtectionStatus,
    /// Only versions before 8 carried the parent here (clone v1 era); version 8 keeps the
    /// parent in the head's `parent` key and only `parent_overlap` per snapshot.
    pub legacy_parent: Option<ClsRbdParent>,
    pub flags: u64,
    pub timestamp: UTime,
    pub namespace: SnapshotNamespace,
    pub child_count: u32,
    pub parent_overlap: Option<u64>,
}

impl ClsRbdSnap {
    /// Decodes versions 1 to 8; fields an old version lacks take Ceph's defaults.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned(RECORD, bytes, 8, 1, Self::decode_body)
    }

    fn decode_body(d: &mut Decoder<'_>, sv: StructVersion) -> Result<Self, DecodeError> {
        let v = sv.v;
        let id = d.u64()?;
        let name = d.string()?;
        let image_size = d.u64()?;
        // Compat below 8 is the pre-Nautilus layout: an unused features word and (from
        // version 2) the parent inline. A Nautilus client talking to old OSDs writes version
        // 8 with compat 1, so the compat decides, as in Ceph.
        let mut legacy_parent = None;
        if sv.compat < 8 {
            d.u64()?; // features, unused since Jewel
            if v >= 2 {
                legacy_parent = Some(ClsRbdParent::decode_in(d)?);
            }
        }
        let protection_status = if v >= 3 {
            ProtectionStatus::decode(d)?
        } else {
            ProtectionStatus::Unprotected
        };
        let flags = if v >= 4 { d.u64()? } else { 0 };
        let namespace = if v >= 5 {
            SnapshotNamespace::decode(d)?
        } else {
            SnapshotNamespace::User
        };
        let timestamp = if v >= 6 {
            UTime::decode(d)?
        } else {
            UTime::default()
        };
        let child_count = if v >= 7 { d.u32()? } else { 0 };
        let parent_overlap = if v >= 8 {
            d.optional(|d| d.u64())?
        } else {
            None
        };
        Ok(ClsRbdSnap {
            id,
            name,
            image_size,
            protection_status,
            legacy_parent,
            flags,
            timestamp,
            namespace,
            child_count,
            parent_overlap,
        })
    }

    /// Version 8, compat 8: what Nautilus and later OSDs write. A snapshot decoded from the
    /// pre-Nautilus layout with an inline parent keeps it: version 8 with compat 1, the unused
    /// features word and the parent, as Ceph writes for old OSDs (the parent in version 2,
    /// so its namespace survives).
    pub fn encode(&self) -> Vec<u8> {
        let compat = if self.legacy_parent.is_some() { 1 } else { 8 };
        encode_versioned(8, compat, |e| {
            e.u64(self.id);
            e.string(&self.name);
            e.u64(self.image_size);
            if let Some(parent) = &self.legacy_parent {
                e.u64(0);
                e.raw(&parent.encode());
            }
            e.u8(self.protection_status as u8);
            e.u64(self.flags);
            self.namespace.encode(e);
            self.timestamp.encode(e);
            e.u32(self.child_count);
            e.optional(self.parent_overlap.as_ref(), |e, v| e.u64(*v));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v8(ns: SnapshotNamespace) -> ClsRbdSnap {
        ClsRbdSnap {
            id: 4,
            name: "s1".into(),
            image_size: 1 << 20,
            protection_status: ProtectionStatus::Protected,
            legacy_parent: None,
            flags: 0,
            timestamp: UTime { sec: 5, nsec: 6 },
            namespace: ns,
            child_count: 2,
            parent_overlap: Some(4096),
        }
    }

    #[test]
    fn every_namespace_roundtrips() {
        let namespaces = [
            SnapshotNamespace::User,
            SnapshotNamespace::Group {
                group_pool: 3,
                group_id: "g".into(),
                group_snapshot_id: "gs".into(),
            },
            SnapshotNamespace::Trash {
                original_name: "old".into(),
                original_snapshot_namespace_type: 0,
            },
            SnapshotNamespace::Mirror(MirrorNamespace {
                state: 2,
                complete: true,
                mirror_peer_uuids: vec!["p1".into(), "p2".into()],
                primary_mirror_uuid: "u".into(),
                primary_snap_id: 9,
                last_copied_object_number: 11,
                snap_seqs: vec![(1, 2)],
            }),
            SnapshotNamespace::Unknown {
                kind: 77,
                body: vec![1, 2, 3],
            },
        ];
        for ns in namespaces {
            let snap = v8(ns);
            let bytes = snap.encode();
            assert_eq!(ClsRbdSnap::decode(&bytes).unwrap(), snap);
        }
    }

    #[test]
    fn version_1_decodes_with_defaults() {
        // v1 compat1: id, name, image_size, features (no parent, no protection)
        let mut e = Encoder::new();
        e.versioned(1, 1, |e| {
            e.u64(2);
            e.string("old");
            e.u64(4096);
            e.u64(1);
        });
        let snap = ClsRbdSnap::decode(&e.into_bytes()).unwrap();
        assert_eq!(snap.name, "old");
        assert_eq!(snap.protection_status, ProtectionStatus::Unprotected);
        assert_eq!(snap.namespace, SnapshotNamespace::User);
        assert_eq!(snap.parent_overlap, None);
    }

    #[test]
    fn version_7_carries_the_parent_inline() {
        let parent = ClsRbdParent {
            pool_id: 1,
            pool_namespace: String::new(),
            image_id: "abc".into(),
            snap_id: 3,
            head_overlap: Some(100),
        };
        let mut e = Encoder::new();
        e.versioned(7, 1, |e| {
            e.u64(2);
            e.string("s");
            e.u64(4096);
            e.u64(0);
            e.raw(&parent.encode_v1());
            e.u8(2);
            e.u64(0);
            SnapshotNamespace::User.encode(e);
            UTime { sec: 1, nsec: 2 }.encode(e);
            e.u32(1);
        });
        let snap = ClsRbdSnap::decode(&e.into_bytes()).unwrap();
        assert_eq!(snap.legacy_parent, Some(parent));
        assert_eq!(snap.protection_status, ProtectionStatus::Protected);
        assert_eq!(snap.child_count, 1);
        // re-encoded as version 8 compat 1, the parent kept
        let again = snap.encode();
        assert_eq!(&again[..2], &[8, 1]);
        assert_eq!(ClsRbdSnap::decode(&again).unwrap(), snap);
    }

    #[test]
    fn bad_protection_status_names_the_field_and_offset() {
        let mut bytes = v8(SnapshotNamespace::User).encode();
        // header 6 + id 8 + name 4+2 + size 8 = offset 28
        bytes[28] = 7;
        let err = ClsRbdSnap::decode(&bytes).unwrap_err();
        assert_eq!(err.offset, 28);
        assert!(err.to_string().contains("protection_status"), "{err}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = v8(SnapshotNamespace::User).encode();
        for len in 0..bytes.len() {
            assert!(ClsRbdSnap::decode(&bytes[..len]).is_err(), "len {len}");
        }
    }
}
