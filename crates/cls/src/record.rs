//! Which record an (object, xattr/omap key) holds, and decoding/encoding any of them by kind:
//! the one dispatch golden tests, fuzzing and dump comparisons share.

use crate::denc::{whole, Encoder};
use crate::error::DecodeError;
use crate::header::{METADATA_PREFIX, SNAPSHOT_PREFIX, SNAP_CHILDREN_PREFIX, TIME_KEYS, U64_KEYS};
use crate::lock::LockInfo;
use crate::migration::MigrationSpec;
use crate::object_map::ObjectMap;
use crate::parent::{self, ChildImageSpec, ClsRbdParent};
use crate::snap::ClsRbdSnap;
use crate::trash::TrashImageSpec;
use crate::UTime;

/// Where in an object a value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    Data,
    Xattr(&'a str),
    Omap(&'a str),
}

/// The encodings a record can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    U8,
    U64,
    I64,
    Str,
    Time,
    Snapshot,
    Parent,
    SnapChildren,
    ChildrenV1,
    Trash,
    Migration,
    ObjectMap,
    Lock,
    /// A value that must be empty (`rbd_namespace` entries).
    Empty,
    /// Bytes with no structure Ceph imposes: image-meta values, `rbd_info`, data objects.
    Raw,
}

impl RecordKind {
    /// Every kind, in a fixed order (the fuzz target selects by index).
    pub const ALL: [RecordKind; 15] = [
        RecordKind::U8,
        RecordKind::U64,
        RecordKind::I64,
        RecordKind::Str,
        RecordKind::Time,
        RecordKind::Snapshot,
        RecordKind::Parent,
        RecordKind::SnapChildren,
        RecordKind::ChildrenV1,
        RecordKind::Trash,
        RecordKind::Migration,
        RecordKind::ObjectMap,
        RecordKind::Lock,
        RecordKind::Empty,
        RecordKind::Raw,
    ];

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// Names the record at `place` of `object` (an object name without namespace).
pub fn classify(object: &str, place: Place<'_>) -> RecordKind {
    let base = object.split('.').next().unwrap_or(object);
    match place {
        Place::Xattr(name) if name.starts_with("lock.") => RecordKind::Lock,
        Place::Xattr(_) => RecordKind::Raw,
        Place::Data => match base {
            "rbd_id" => RecordKind::Str,
            "rbd_object_map" => RecordKind::ObjectMap,
            _ => RecordKind::Raw,
        },
        Place::Omap(key) => match base {
            "rbd_header" => header_key_kind(key),
            "rbd_directory" if key == "state" => RecordKind::U8,
            "rbd_directory" if key.starts_with("id_") || key.starts_with("name_") => {
                RecordKind::Str
            }
            "rbd_trash" if key.starts_with("id_") => RecordKind::Trash,
            "rbd_namespace" if key.starts_with("name_") => RecordKind::Empty,
            "rbd_children" => RecordKind::ChildrenV1,
            _ => RecordKind::Raw,
        },
    }
}

fn header_key_kind(key: &str) -> RecordKind {
    if U64_KEYS.contains(&key) {
        RecordKind::U64
    } else if TIME_KEYS.contains(&key) {
        RecordKind::Time
    } else if key.starts_with(SNAPSHOT_PREFIX) {
        RecordKind::Snapshot
    } else if key.starts_with(SNAP_CHILDREN_PREFIX) {
        RecordKind::SnapChildren
    } else if key.starts_with(METADATA_PREFIX) {
        RecordKind::Raw
    } else {
        match key {
            "order" => RecordKind::U8,
            "object_prefix" => RecordKind::Str,
            "data_pool_id" => RecordKind::I64,
            "parent" => RecordKind::Parent,
            "migration" => RecordKind::Migration,
            _ => RecordKind::Raw,
        }
    }
}

/// A decoded record of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    U8(u8),
    U64(u64),
    I64(i64),
    Str(String),
    Time(UTime),
    Snapshot(ClsRbdSnap),
    Parent(ClsRbdParent),
    SnapChildren(Vec<ChildImageSpec>),
    ChildrenV1(Vec<String>),
    Trash(TrashImageSpec),
    Migration(MigrationSpec),
    ObjectMap(ObjectMap),
    Lock(LockInfo),
    Empty,
    Raw(Vec<u8>),
}

impl Record {
    pub fn decode(kind: RecordKind, bytes: &[u8]) -> Result<Record, DecodeError> {
        Ok(match kind {
            RecordKind::U8 => Record::U8(whole("u8", bytes, |d| d.u8())?),
            RecordKind::U64 => Record::U64(whole("u64", bytes, |d| d.u64())?),
            RecordKind::I64 => Record::I64(whole("i64", bytes, |d| d.i64())?),
            RecordKind::Str => Record::Str(whole("string", bytes, |d| d.string())?),
            RecordKind::Time => Record::Time(whole("utime_t", bytes, UTime::decode)?),
            RecordKind::Snapshot => Record::Snapshot(ClsRbdSnap::decode(bytes)?),
            RecordKind::Parent => Record::Parent(ClsRbdParent::decode(bytes)?),
            RecordKind::SnapChildren => Record::SnapChildren(parent::decode_snap_children(bytes)?),
            RecordKind::ChildrenV1 => Record::ChildrenV1(parent::decode_children_v1(bytes)?),
            RecordKind::Trash => Record::Trash(TrashImageSpec::decode(bytes)?),
            RecordKind::Migration => Record::Migration(MigrationSpec::decode(bytes)?),
            RecordKind::ObjectMap => Record::ObjectMap(ObjectMap::decode(bytes)?),
            RecordKind::Lock => Record::Lock(LockInfo::decode(bytes)?),
            RecordKind::Empty => {
                whole("empty value", bytes, |_| Ok(()))?;
                Record::Empty
            }
            RecordKind::Raw => Record::Raw(bytes.to_vec()),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        match self {
            Record::U8(v) => e.u8(*v),
            Record::U64(v) => e.u64(*v),
            Record::I64(v) => e.i64(*v),
            Record::Str(s) => e.string(s),
            Record::Time(t) => t.encode(&mut e),
            Record::Snapshot(s) => return s.encode(),
            Record::Parent(p) => return p.encode(),
            Record::SnapChildren(c) => return parent::encode_snap_children(c),
            Record::ChildrenV1(c) => return parent::encode_children_v1(c),
            Record::Trash(t) => return t.encode(),
            Record::Migration(m) => return m.encode(),
            Record::ObjectMap(m) => return m.encode(),
            Record::Lock(l) => return l.encode(),
            Record::Empty => {}
            Record::Raw(b) => e.raw(b),
        }
        e.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_records_of_an_image() {
        let h = "rbd_header.abc";
        assert_eq!(classify(h, Place::Omap("order")), RecordKind::U8);
        assert_eq!(classify(h, Place::Omap("size")), RecordKind::U64);
        assert_eq!(
            classify(h, Place::Omap("snapshot_0000000000000004")),
            RecordKind::Snapshot
        );
        assert_eq!(
            classify(h, Place::Omap("metadata_snapshot_x")),
            RecordKind::Raw
        );
        assert_eq!(classify(h, Place::Xattr("lock.rbd_lock")), RecordKind::Lock);
        assert_eq!(classify("rbd_id.x", Place::Data), RecordKind::Str);
        assert_eq!(
            classify("rbd_object_map.a.0000000000000004", Place::Data),
            RecordKind::ObjectMap
        );
        assert_eq!(
            classify("rbd_trash", Place::Omap("id_a")),
            RecordKind::Trash
        );
        assert_eq!(classify("rbd_data.a.0", Place::Data), RecordKind::Raw);
    }

    #[test]
    fn scalars_must_fill_their_value() {
        assert_eq!(
            Record::decode(RecordKind::U8, &[0x16]).unwrap(),
            Record::U8(22)
        );
        // rbdm's 8-byte order is refused, naming the trailing bytes
        let err = Record::decode(RecordKind::U8, &22u64.to_le_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "u8: 7 trailing bytes at byte 1");
        // a raw object prefix without Ceph's length prefix is refused
        assert!(Record::decode(RecordKind::Str, b"rbd_data.abc").is_err());
        assert!(Record::decode(RecordKind::Empty, &[0]).is_err());
    }
}
