//! Every image header a Pacific 16.2.15 cluster wrote (rbdm-cls's golden dump, made by Ceph's
//! `rbd`: plain, striped, with snapshots, a clone, a data pool, migrations, a namespace)
//! loads through `Header::from_keys` and says what `rbd info` / `rbd snap ls` said of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rbdm_cls::golden::{self, GoldenObject};
use rbdm_image::features;
use rbdm_image::header::Header;
use serde_json::Value;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cls/tests/golden/pacific-16.2.15")
}

fn objects() -> Vec<GoldenObject> {
    let text = std::fs::read_to_string(golden_dir().join("rbd.txt")).unwrap();
    golden::parse(&text).unwrap()
}

/// `rbd info` and `rbd snap ls` views by image id: the JSON line after each `## ` title.
fn views() -> BTreeMap<String, (Value, Value)> {
    let text = std::fs::read_to_string(golden_dir().join("views.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let after = |title: &str| -> Option<Value> {
        let at = lines.iter().position(|l| *l == title)?;
        Some(serde_json::from_str(lines[at + 1]).unwrap())
    };
    let mut out = BTreeMap::new();
    for l in &lines {
        if let Some(image) = l.strip_prefix("## rbd info ") {
            let info = after(l).unwrap();
            let snaps = after(&format!("## rbd snap ls --all {image}")).unwrap();
            out.insert(info["id"].as_str().unwrap().to_string(), (info, snaps));
        }
    }
    out
}

/// (namespace, image id, header) of every golden header object.
fn headers() -> Vec<(String, String, Header)> {
    objects()
        .into_iter()
        .filter_map(|o| {
            let id = o.name.strip_prefix("rbd_header.")?.to_string();
            let keys: BTreeMap<String, Vec<u8>> = o.omap.iter().cloned().collect();
            let h = Header::from_keys(&keys).unwrap_or_else(|e| panic!("{}: {e}", o.name));
            Some((o.namespace, id, h))
        })
        .collect()
}

fn feature_bits(names: &Value) -> u64 {
    names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let n = n.as_str().unwrap();
            features::NAMES
                .iter()
                .find(|(name, _)| *name == n)
                .unwrap_or_else(|| panic!("feature {n}"))
                .1
        })
        .sum()
}

fn op_feature_bits(names: &Value) -> u64 {
    use rbdm_cls::header::op_features::*;
    let bit = |n: &str| match n {
        "clone-parent" => CLONE_PARENT,
        "clone-child" => CLONE_CHILD,
        "group" => GROUP,
        "snap-trash" => SNAP_TRASH,
        other => panic!("op feature {other}"),
    };
    names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| bit(n.as_str().unwrap()))
        .sum()
}

/// `rbd`'s timestamp form (`ctime` in UTC, as the capture ran): "Wed Dec  2 05:12:03 2026".
fn ctime(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // days since 1970-01-01 to a civil date (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let wday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][month as usize - 1];
    format!(
        "{wday} {mon} {day:>2} {:02}:{:02}:{:02} {year}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[test]
fn ctime_matches_rbds_form() {
    assert_eq!(ctime(0x6b0f_a8a3), "Wed Dec  2 05:12:03 2026");
}

#[test]
fn every_golden_header_decodes() {
    let all = headers();
    assert_eq!(
        all.len(),
        11,
        "{:?}",
        all.iter().map(|h| &h.1).collect::<Vec<_>>()
    );
    // images in the trash have no `rbd info` view; every other one is checked below
    assert_eq!(views().len(), 9);
}

#[test]
fn golden_headers_say_what_rbd_info_said() {
    let views = views();
    let all = headers();
    for (_, id, h) in &all {
        let Some((info, _)) = views.get(id) else {
            continue;
        };
        let n = |k: &str| info[k].as_u64().unwrap_or_else(|| panic!("{id} {k}"));
        assert_eq!(h.size, n("size"), "{id} size");
        assert_eq!(u64::from(h.layout.order()), n("order"), "{id} order");
        assert_eq!(h.layout.object_size, n("object_size"), "{id}");
        assert_eq!(h.features, feature_bits(&info["features"]), "{id} features");
        assert_eq!(h.op_features, op_feature_bits(&info["op_features"]), "{id}");
        assert_eq!(h.flags, 0, "{id} flags {}", info["flags"]);
        assert_eq!(h.object_prefix, info["block_name_prefix"].as_str().unwrap());
        let su = info["stripe_unit"].as_u64().unwrap_or(h.layout.object_size);
        let sc = info["stripe_count"].as_u64().unwrap_or(1);
        assert_eq!(
            (h.layout.stripe_unit, h.layout.stripe_count),
            (su, sc),
            "{id}"
        );
        assert_eq!(
            h.data_pool_id.is_some(),
            info.get("data_pool").is_some(),
            "{id}"
        );
        assert_eq!(h.snaps.len() as u64, n("snapshot_count"), "{id}");
        for (field, t) in [
            ("create_timestamp", h.create_timestamp),
            ("access_timestamp", h.access_timestamp),
            ("modify_timestamp", h.modify_timestamp),
        ] {
            assert_eq!(ctime(t), info[field].as_str().unwrap(), "{id} {field}");
        }
        assert_eq!(
            h.migration.is_some(),
            h.features & features::MIGRATING != 0,
            "{id}"
        );
    }
}

#[test]
fn golden_snapshots_say_what_rbd_snap_ls_said() {
    let views = views();
    let mut seen = 0;
    for (_, id, h) in headers() {
        let Some((_, snaps)) = views.get(&id) else {
            continue;
        };
        let snaps = snaps.as_array().unwrap();
        assert_eq!(snaps.len(), h.snaps.len(), "{id}");
        for v in snaps {
            let s = &h.snaps[&v["id"].as_u64().unwrap()];
            assert_eq!(s.name, v["name"].as_str().unwrap(), "{id}");
            assert_eq!(s.size, v["size"].as_u64().unwrap(), "{id}");
            assert_eq!(s.protected.to_string(), v["protected"].as_str().unwrap());
            assert_eq!(ctime(s.timestamp), v["timestamp"].as_str().unwrap());
            assert_eq!(v["namespace"]["type"], "user");
            seen += 1;
        }
    }
    assert_eq!(seen, 7, "snapimg 3, child 1, migimp 3");
}

#[test]
fn the_golden_clone_reads_through_to_its_parent() {
    let views = views();
    let all = headers();
    let (info, snaps) = &views["102fbebd7f83"];
    let child = &all.iter().find(|h| h.1 == "102fbebd7f83").unwrap().2;
    let want = &info["parent"];
    let link = child.parent.as_ref().expect("clone has a parent");
    assert_eq!(link.image_id, want["id"].as_str().unwrap());
    assert_eq!(link.namespace, want["pool_namespace"].as_str().unwrap());
    assert_eq!(link.overlap, want["overlap"].as_u64().unwrap());
    let parent = &all.iter().find(|h| h.1 == link.image_id).unwrap().2;
    assert_eq!(
        parent.snaps[&link.snap_id].name,
        want["snapshot"].as_str().unwrap()
    );
    assert!(parent.snaps[&link.snap_id].protected);
    // the clone's own snapshot was taken while it read through to the parent
    let c1 = &child.snaps[&snaps[0]["id"].as_u64().unwrap()];
    assert_eq!(c1.parent.as_ref(), Some(link));
    // and no other golden image has a parent
    for (_, id, h) in &all {
        if id != "102fbebd7f83" {
            assert!(
                h.parent.is_none() && h.snaps.values().all(|s| s.parent.is_none()),
                "{id}"
            );
        }
    }
}

#[test]
fn golden_headers_reencode_as_ceph_wrote_them() {
    // What rbdm models re-encodes byte for byte; what it does not (the lock xattr, the
    // clone-v2 `snap_children_` key, image-meta) is not its to write.
    for obj in objects()
        .into_iter()
        .filter(|o| o.name.starts_with("rbd_header."))
    {
        let keys: BTreeMap<String, Vec<u8>> = obj.omap.iter().cloned().collect();
        let h = Header::from_keys(&keys).unwrap();
        for (k, v) in h.to_keys() {
            if k == "generation" {
                assert!(!keys.contains_key(&k));
                continue;
            }
            if k.ends_with("_timestamp") {
                // seconds kept, nanoseconds written as 0
                assert_eq!(v[..4], keys[&k][..4], "{} {k}", obj.name);
                continue;
            }
            if k.starts_with("snapshot_") {
                // rbdm writes child count 0 and nanoseconds 0 for a snapshot it makes
                continue;
            }
            assert_eq!(Some(&v), keys.get(&k), "{} {k}", obj.name);
        }
    }
}

#[test]
fn golden_headers_round_trip_through_rbdms_encoding() {
    for (_, id, h) in headers() {
        assert_eq!(Header::from_keys(&h.to_keys()).unwrap(), h, "{id}");
    }
}
