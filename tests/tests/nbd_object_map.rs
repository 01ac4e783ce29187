//! A long-running `rbdm nbd export` and another process's `snap create`: the exporter keeps
//! the head object map in memory; after the snapshot rewrote the stored map (ExistsClean
//! marks), the exporter's next write must start from the stored map, not its cached one,
//! or fast-diff `du` over-reports the head.
use std::process::Command;

use rbdm_tests::*;

const MIB: u64 = 1 << 20;

fn qemu_write(uri: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", uri]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    let out = c.output().expect("qemu-io runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The head's USED in `rbdm du`: with fast-diff, what changed since the last snapshot.
fn head_used(env: &Env, image: &str) -> u64 {
    let du = env.json(&["du", image]);
    du["images"]
        .as_array()
        .expect("images")
        .iter()
        .find(|i| i["snapshot"].is_null())
        .and_then(|i| i["used_size"].as_u64())
        .unwrap_or_else(|| panic!("no head row: {du}"))
}

#[test]
fn snap_create_beside_a_running_export_keeps_fast_diff_exact() {
    let env = Env::new();
    env.ok(&["create", "--size", "16M", "--object-size", "1M", "d"]);
    let (srv, uri) = env.nbd_export("d");
    qemu_write(&uri, &["write -P 1 0 1M", "write -P 1 1M 1M"]);
    env.ok(&["snap", "create", "d@s1"]);
    qemu_write(&uri, &["write -P 2 2M 1M"]);
    srv.stop();
    assert_eq!(
        head_used(&env, "d"),
        MIB,
        "only object 2 changed since d@s1"
    );
}
