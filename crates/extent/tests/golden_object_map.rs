//! The object maps a Pacific 16.2.15 cluster wrote (rbdm-cls's golden dump) decode through
//! rbdm's `ObjectMap` with the states `rbd` left, and re-encode to the same bytes.

use std::path::Path;

use rbdm_cls::golden::{self, GoldenData};
use rbdm_extent::{ObjectMap, ObjectState};

/// (object name, data) of every `rbd_object_map.*` object of the golden dump.
fn golden_maps() -> Vec<(String, Vec<u8>)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cls/tests/golden/pacific-16.2.15/rbd.txt");
    let text = std::fs::read_to_string(path).unwrap();
    golden::parse(&text)
        .unwrap()
        .into_iter()
        .filter(|o| o.name.starts_with("rbd_object_map."))
        .map(|o| match o.data {
            GoldenData::Bytes(b) => (o.name, b),
            GoldenData::Sha256 { .. } => panic!("{}: map dumped as a digest", o.name),
        })
        .collect()
}

fn map(name: &str) -> ObjectMap {
    let (_, bytes) = golden_maps().into_iter().find(|(n, _)| n == name).unwrap();
    ObjectMap::decode(&bytes).unwrap()
}

#[test]
fn every_golden_map_decodes_and_reencodes_byte_identical() {
    let maps = golden_maps();
    assert!(maps.len() >= 15, "{} maps", maps.len());
    for (name, bytes) in maps {
        let m = ObjectMap::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.encode(), bytes, "{name}");
    }
}

#[test]
fn golden_states_are_what_rbd_wrote() {
    // plain: one object, written
    let plain = map("rbd_object_map.101b3d02296f");
    assert_eq!((plain.len(), plain.get(0)), (1, ObjectState::Exists));
    // striped: 64 KiB x 4 over 1 MiB touches all four objects
    let striped = map("rbd_object_map.1023180d41b9");
    assert_eq!(striped.len(), 4);
    assert_eq!(striped.count_existing(), 4);
    // snapimg's head after snapshots: clean; its first snapshot's map: written
    assert_eq!(
        map("rbd_object_map.102547b0a039").get(0),
        ObjectState::ExistsClean
    );
    assert_eq!(
        map("rbd_object_map.102547b0a039.0000000000000004").get(0),
        ObjectState::Exists
    );
    // the trashed image was never written
    assert_eq!(map("rbd_object_map.1035246cf194").count_existing(), 0);
}

#[test]
fn rbdm_v1_maps_are_read_only_by_the_upgrade_decoder() {
    let mut m = ObjectMap::new(5);
    m.set(4, ObjectState::Pending);
    let mut old = b"RBDMOMAP".to_vec();
    old.extend_from_slice(&5u64.to_le_bytes());
    old.extend_from_slice(&[0, 0b1000_0000]);
    let crc = crc32(&old);
    old.extend_from_slice(&crc.to_le_bytes());
    assert!(ObjectMap::is_rbdm_v1(&old));
    assert!(
        ObjectMap::decode(&old).is_err(),
        "never misread as Ceph's form"
    );
    assert_eq!(ObjectMap::decode_rbdm_v1(&old).unwrap(), m);
    let mut bad = old.clone();
    bad[16] ^= 1;
    assert!(ObjectMap::decode_rbdm_v1(&bad).is_err());
    assert!(!ObjectMap::is_rbdm_v1(&m.encode()));
}

/// crc32 (IEEE), bitwise, so the test does not share the decoder's implementation.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_newer_bitvector_version_is_refused_not_re_versioned() {
    // found by the object_map fuzz target: struct_v 0x41, compat 1, a valid header crc
    let mut bytes = ObjectMap::new(4).encode();
    bytes[4] = 0x41;
    let header_crc = !crc32c_append(!0, &bytes[4..18]);
    bytes[23..27].copy_from_slice(&header_crc.to_le_bytes());
    assert!(
        rbdm_cls::object_map::ObjectMap::decode(&bytes).is_ok(),
        "Ceph's rules accept it"
    );
    assert!(ObjectMap::decode(&bytes).is_err());
}

/// crc32c without Ceph's conventions (bitwise), for building records by hand.
fn crc32c_append(mut crc: u32, bytes: &[u8]) -> u32 {
    crc = !crc;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
