//! The golden records of a real Pacific 16.2.15 pool (`crates/cls/tests/golden/`), for the
//! tests that compare rbdm's records with Ceph's.

use std::collections::BTreeMap;
use std::path::Path;

use rbdm_cls::golden;

/// Every omap key of the golden object `name` of pool `rbd`.
pub fn omap_of(name: &str) -> BTreeMap<String, Vec<u8>> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cls/tests/golden/pacific-16.2.15/rbd.txt");
    let objs = golden::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let o = objs.iter().find(|o| o.name == name).unwrap();
    o.omap.iter().cloned().collect()
}
