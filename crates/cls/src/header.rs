//! Names and scalar values of the small records: `rbd_header.<id>` keys, feature bits,
//! `rbd_id.<name>`, `rbd_directory`, `rbd_trash` and `rbd_namespace` keys.
//!
//! Scalars are plain encodings: `size`, `features`, `snap_seq`, `stripe_unit`,
//! `stripe_count`, `op_features`, `flags` are u64; `data_pool_id` i64; `order` one byte;
//! `object_prefix`, `rbd_id.*` data and directory values u32-length strings; the three
//! `*_timestamp` keys `utime_t`; `metadata_<key>` values raw bytes; `rbd_namespace` values
//! empty.

/// `RBD_FEATURE_*` bits of the `features` key.
pub mod features {
    pub const LAYERING: u64 = 1 << 0;
    pub const STRIPINGV2: u64 = 1 << 1;
    pub const EXCLUSIVE_LOCK: u64 = 1 << 2;
    pub const OBJECT_MAP: u64 = 1 << 3;
    pub const FAST_DIFF: u64 = 1 << 4;
    pub const DEEP_FLATTEN: u64 = 1 << 5;
    pub const JOURNALING: u64 = 1 << 6;
    pub const DATA_POOL: u64 = 1 << 7;
    pub const OPERATIONS: u64 = 1 << 8;
    pub const MIGRATING: u64 = 1 << 9;
    pub const NON_PRIMARY: u64 = 1 << 10;
}

/// `RBD_OPERATION_FEATURE_*` bits of the `op_features` key (set with OPERATIONS).
pub mod op_features {
    pub const CLONE_PARENT: u64 = 1 << 0;
    pub const CLONE_CHILD: u64 = 1 << 1;
    pub const GROUP: u64 = 1 << 2;
    pub const SNAP_TRASH: u64 = 1 << 3;
}

/// `RBD_FLAG_*` bits of the `flags` key (and of a snapshot's flags).
pub mod flags {
    pub const OBJECT_MAP_INVALID: u64 = 1 << 0;
    pub const FAST_DIFF_INVALID: u64 = 1 << 1;
}

/// Header keys holding a u64.
pub const U64_KEYS: &[&str] = &[
    "size",
    "features",
    "snap_seq",
    "stripe_unit",
    "stripe_count",
    "op_features",
    "flags",
    "snap_limit",
];
/// Header keys holding a `utime_t`.
pub const TIME_KEYS: &[&str] = &["create_timestamp", "access_timestamp", "modify_timestamp"];

pub const SNAPSHOT_PREFIX: &str = "snapshot_";
pub const SNAP_CHILDREN_PREFIX: &str = "snap_children_";
pub const METADATA_PREFIX: &str = "metadata_";

/// `snapshot_<id as 16 hex digits>`.
pub fn snapshot_key(snap_id: u64) -> String {
    format!("{SNAPSHOT_PREFIX}{snap_id:016x}")
}

/// `snap_children_<id as 16 hex digits>`.
pub fn snap_children_key(snap_id: u64) -> String {
    format!("{SNAP_CHILDREN_PREFIX}{snap_id:016x}")
}

/// The snapshot id of a `snapshot_` or `snap_children_` key.
pub fn snap_id_of_key(key: &str) -> Option<u64> {
    let hex = key
        .strip_prefix(SNAPSHOT_PREFIX)
        .or_else(|| key.strip_prefix(SNAP_CHILDREN_PREFIX))?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// `metadata_<key>` (image-meta).
pub fn metadata_key(key: &str) -> String {
    format!("{METADATA_PREFIX}{key}")
}

/// `rbd_directory` / `rbd_trash` keys: `id_<image id>` and `name_<image name>`.
pub fn dir_id_key(image_id: &str) -> String {
    format!("id_{image_id}")
}

pub fn dir_name_key(name: &str) -> String {
    format!("name_{name}")
}

/// `rbd_namespace` key: `name_<namespace>`.
pub fn namespace_key(ns: &str) -> String {
    format!("name_{ns}")
}

/// Object names of one image.
pub fn header_object(image_id: &str) -> String {
    format!("rbd_header.{image_id}")
}

pub fn id_object(name: &str) -> String {
    format!("rbd_id.{name}")
}

pub fn object_map_object(image_id: &str, snap_id: Option<u64>) -> String {
    match snap_id {
        None => format!("rbd_object_map.{image_id}"),
        Some(s) => format!("rbd_object_map.{image_id}.{s:016x}"),
    }
}

/// `rbd_info`'s data once `rbd pool init` validated overwrites (no length prefix).
pub const RBD_INFO_OVERWRITE_VALIDATED: &[u8] = b"overwrite validated";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_keys_roundtrip() {
        assert_eq!(snapshot_key(10), "snapshot_000000000000000a");
        assert_eq!(snap_id_of_key(&snap_children_key(5)), Some(5));
        assert_eq!(snap_id_of_key("snapshot_12"), None);
        assert_eq!(snap_id_of_key("snapshot_zzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn object_names() {
        assert_eq!(
            object_map_object("ab", Some(4)),
            "rbd_object_map.ab.0000000000000004"
        );
        assert_eq!(header_object("ab"), "rbd_header.ab");
    }
}
