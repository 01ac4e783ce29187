//! `rbdm nbd export` as a real process, with QEMU's tools as clients: writes and reads,
//! block status, a snapshot exported read-only, the exporter seen as a watcher, and what is
//! durable after SIGTERM and after SIGKILL.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use rbdm_tests::*;

const MIB: u64 = 1 << 20;

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(env: &Env, args: &[&str]) -> (Server, String) {
    let mut all = vec!["nbd", "export"];
    all.extend(args);
    let mut child = env
        .command(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("nbd"), "no URI printed: {line:?}");
    (Server(child), line.trim().to_string())
}

fn qemu_io(uri: &str, cmds: &[&str]) -> (bool, String) {
    qemu_io_opts(uri, &[], cmds)
}

fn qemu_io_opts(uri: &str, opts: &[&str], cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]).args(opts);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    let out = c.arg(uri).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && !text.contains("failed") && !text.contains("error"),
        text,
    )
}

fn signal(s: &Server, sig: i32) {
    // SAFETY: signals the server child this test spawned and still owns.
    unsafe { libc::kill(s.0.id() as i32, sig) };
}

#[test]
fn qemu_clients_read_write_and_map_an_export() {
    let env = Env::new();
    let raw = env.path("d.raw");
    make_raw(&raw, 32 * MIB, &[(0, MIB, 0x10), (16 * MIB, 2 * MIB, 0x20)]);
    env.ok(&["import", raw.to_str().unwrap(), "d"]);
    let (srv, uri) = serve(&env, &["d", "--bind", "127.0.0.1:0"]);
    let st = env.ok(&["status", "d"]);
    assert!(
        st.contains(&format!("/{} ", srv.0.id())),
        "the exporter is a watcher: {st}"
    );
    let (ok, out) = qemu_io(
        &uri,
        &[
            "write -P 0x33 8M 1M",
            "read -P 0x33 8M 1M",
            "read -P 0x20 16M 2M",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = qemu_io(&uri, &["read -P 0x44 8M 4k"]);
    assert!(!ok, "a wrong pattern must fail verification: {out}");
    // Block status: holes stay holes for qemu-img map.
    let map = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "raw", &uri])
        .output()
        .unwrap();
    let map: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
    let data: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(data, 4 * MIB, "map: {map}");
    // qemu-img convert of the export equals rbdm export.
    let conv = env.path("conv.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&conv)
        .output()
        .unwrap();
    assert!(out.status.success());
    signal(&srv, libc::SIGTERM);
    let mut srv = srv;
    assert!(srv.0.wait().unwrap().success(), "clean exit on SIGTERM");
    let exp = env.path("exp.raw");
    env.ok(&["export", "d", exp.to_str().unwrap()]);
    files_equal(&conv, &exp).unwrap();
    let mut want = raw_contents(32 * MIB, &[(0, MIB, 0x10), (16 * MIB, 2 * MIB, 0x20)]);
    want[8 * MIB as usize..9 * MIB as usize].fill(0x33);
    file_is(&exp, &want).unwrap();
    assert!(env.ok(&["status", "d"]).contains("Watchers: none"));
}

#[test]
fn flushed_writes_survive_sigkill_and_read_only_exports_refuse_writes() {
    let env = Env::new();
    env.ok(&["create", "--size", "16M", "k"]);
    let sock = env.path("k.sock");
    let (srv, uri) = serve(&env, &["k", "--socket", sock.to_str().unwrap()]);
    // qemu-io flushes before it exits; FUA on the second write.
    let (ok, out) = qemu_io(
        &uri,
        &["write -P 0x5a 0 1M", "write -f -P 0x5b 4M 64k", "flush"],
    );
    assert!(ok, "{out}");
    signal(&srv, libc::SIGKILL);
    drop(srv);
    let exp = env.path("k.raw");
    env.ok(&["export", "k", exp.to_str().unwrap()]);
    let mut want = vec![0u8; 16 * MIB as usize];
    want[..MIB as usize].fill(0x5a);
    want[4 * MIB as usize..4 * MIB as usize + 65536].fill(0x5b);
    file_is(&exp, &want).unwrap();

    env.ok(&["snap", "create", "k@s"]);
    let (_ro, ro_uri) = serve(&env, &["k@s", "--bind", "127.0.0.1:0"]);
    let (ok, out) = qemu_io_opts(&ro_uri, &["-r"], &["read -P 0x5a 0 1M"]);
    assert!(ok, "{out}");
    let (ok, out) = qemu_io(&ro_uri, &["write -P 1 0 4k"]);
    assert!(
        !ok && (out.contains("Permission denied")
            || out.contains("read-only")
            || out.contains("Operation not permitted")),
        "{out}"
    );
    let (_ro2, ro2) = serve(&env, &["k", "--read-only", "--bind", "127.0.0.1:0"]);
    let (ok, _) = qemu_io(&ro2, &["write -P 1 0 4k"]);
    assert!(!ok, "--read-only refuses writes");
    let bad = env.fails(&["nbd", "export", "k"]);
    assert_eq!(bad.status.code(), Some(22), "{}", stderr(&bad));
    let bad = env.fails(&["nbd", "export", "nope", "--bind", "127.0.0.1:0"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}
