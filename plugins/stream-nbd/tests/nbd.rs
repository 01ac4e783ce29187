//! The nbd stream against qemu-nbd (raw over a Unix socket and TCP, and a vmdk): bytes equal
//! the file, holes are reported as zero extents and are zero, data is never called a hole.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbdm_registry::{OpenContext, SourceError, Stream, StreamExtent};
use rbdm_tests::pseudo_random;

const MIB: u64 = 1 << 20;

struct QemuNbd(Child);

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// qemu-nbd serving `file` read-only as export `disk`, persistent (reconnects allowed).
fn serve(format: &str, file: &Path, listen: &[&str], ready: impl Fn() -> bool) -> QemuNbd {
    let mut child = Command::new("qemu-nbd")
        .args(["-f", format, "-r", "-t", "-x", "disk"])
        .args(listen)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-nbd must be installed (qemu-utils)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("qemu-nbd exited with {st}");
        }
        assert!(Instant::now() < deadline, "qemu-nbd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    QemuNbd(child)
}

fn open(uri: &str) -> Result<Box<dyn Stream>, SourceError> {
    rbdm_stream_nbd::link();
    rbdm_registry::open_stream(
        &serde_json::json!({"type": "nbd", "uri": uri}),
        "stream",
        &OpenContext::without_store(),
    )
}

/// A sparse raw file: 16 MiB + an odd tail, data in three places.
fn sparse_raw(dir: &Path) -> (std::path::PathBuf, Vec<u8>, Vec<(u64, u64)>) {
    let size = 16 * MIB + 1536;
    let written = vec![
        (MIB, 64 * 1024),
        (5 * MIB + 4096, 300 * 1024),
        (16 * MIB, 1536),
    ];
    let mut image = vec![0u8; size as usize];
    let f = std::fs::File::create(dir.join("disk.raw")).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in written.iter().enumerate() {
        let data = pseudo_random(len as usize, 100 + i as u64);
        f.write_all_at(&data, off).unwrap();
        image[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    (dir.join("disk.raw"), image, written)
}

/// The registry's `Stream` contract, then what an NBD server of a sparse file must add:
/// unaligned reads, written ranges reported as data and holes kept, extents merged.
fn check_stream(s: &dyn Stream, image: &[u8], written: &[(u64, u64)]) {
    rbdm_registry::conformance::check_stream(s, Some(image)).unwrap_or_else(|e| panic!("{e}"));
    for (off, len) in [
        (MIB - 10, 20u64),
        (5 * MIB, 8192),
        (image.len() as u64 - 1, 1),
        (3, 40 * MIB / 8),
    ] {
        let mut buf = vec![0xAAu8; len as usize];
        s.read_at(off, &mut buf).unwrap();
        assert!(
            buf[..] == image[off as usize..(off + len) as usize],
            "{off}+{len}"
        );
    }

    let ext = s
        .extents(0, image.len() as u64)
        .expect("qemu-nbd offers base:allocation")
        .unwrap();
    check_cover(&ext, 0, image.len() as u64);
    for e in ext.iter().filter(|e| e.zero) {
        assert!(
            image[e.offset as usize..(e.offset + e.len) as usize]
                .iter()
                .all(|&b| b == 0),
            "hole {e:?} holds data"
        );
    }
    for &(off, len) in written {
        assert!(
            ext.iter()
                .any(|e| !e.zero && e.offset <= off && e.offset + e.len >= off + len),
            "{off}+{len} not data: {ext:?}"
        );
    }
    let data: u64 = ext.iter().filter(|e| !e.zero).map(|e| e.len).sum();
    assert!(
        data < 4 * MIB,
        "holes kept: {data} bytes of data reported: {ext:?}"
    );
    // A window in the middle is clipped to exactly that window.
    let part = s.extents(MIB + 100, 3 * MIB).unwrap().unwrap();
    check_cover(&part, MIB + 100, 3 * MIB);
}

fn check_cover(ext: &[StreamExtent], offset: u64, len: u64) {
    let mut pos = offset;
    for (i, e) in ext.iter().enumerate() {
        assert_eq!(e.offset, pos, "{ext:?}");
        assert!(e.len > 0);
        if i > 0 {
            assert_ne!(
                ext[i - 1].zero,
                e.zero,
                "adjacent extents of one state are merged: {ext:?}"
            );
        }
        pos += e.len;
    }
    assert_eq!(pos, offset + len, "{ext:?}");
}

#[test]
fn raw_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (file, image, written) = sparse_raw(dir.path());
    let sock = dir.path().join("nbd.sock");
    let _srv = serve("raw", &file, &["-k", sock.to_str().unwrap()], || {
        UnixStream::connect(&sock).is_ok()
    });
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    let s = open(&uri).unwrap();
    assert_eq!(s.describe(), format!("nbd {uri}"));
    check_stream(&*s, &image, &written);
    // Many small reads over the one connection, from several threads.
    std::thread::scope(|t| {
        for k in 0..4u64 {
            let s = &s;
            let image = &image;
            t.spawn(move || {
                for i in 0..100u64 {
                    let off = (k * 1_000_003 + i * 65_537) % (image.len() as u64 - 512);
                    let mut b = [0u8; 512];
                    s.read_at(off, &mut b).unwrap();
                    assert!(b[..] == image[off as usize..off as usize + 512]);
                }
            });
        }
    });
    // qemu-nbd serves one client at a time by default: close ours first.
    drop(s);
    let e = open(&format!("nbd+unix:///nope?socket={}", sock.display()))
        .err()
        .unwrap();
    assert!(matches!(e, SourceError::NotFound(_)), "{e}");
}

#[test]
fn raw_over_tcp_and_vmdk() {
    let dir = tempfile::tempdir().unwrap();
    let (file, image, written) = sparse_raw(dir.path());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let srv = serve(
        "raw",
        &file,
        &["-b", "127.0.0.1", "-p", &port.to_string()],
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    check_stream(
        &*open(&format!("nbd://127.0.0.1:{port}/disk")).unwrap(),
        &image,
        &written,
    );
    drop(srv);

    let vmdk = dir.path().join("disk.vmdk");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vmdk"])
        .arg(&file)
        .arg(&vmdk)
        .status()
        .unwrap();
    assert!(st.success());
    let sock = dir.path().join("vmdk.sock");
    let _srv = serve("vmdk", &vmdk, &["-k", sock.to_str().unwrap()], || {
        UnixStream::connect(&sock).is_ok()
    });
    let s = open(&format!("nbd+unix:///disk?socket={}", sock.display())).unwrap();
    check_stream(&*s, &image, &written);
}

#[test]
fn connection_errors_and_bad_specs() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(&format!(
        "nbd+unix:///disk?socket={}",
        dir.path().join("none.sock").display()
    ))
    .err()
    .unwrap();
    assert_eq!(e.errno(), 2, "{e}");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = open(&format!("nbd://127.0.0.1:{port}/disk")).err().unwrap();
    assert_eq!(e.errno(), 111, "{e}"); // ECONNREFUSED
    let e = open("http://x/y").err().unwrap();
    assert!(
        matches!(&e, SourceError::BadSpec(m) if m.starts_with("stream.uri:")),
        "{e}"
    );
    // A server that is not NBD.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            use std::io::Write;
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\0\0\0\0\0\0\0\0\0\0");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let e = open(&format!("nbd://127.0.0.1:{port}/disk")).err().unwrap();
    assert!(
        matches!(e, SourceError::Remote(_)) && e.to_string().contains("not an NBD server"),
        "{e}"
    );
}

fn quick() -> rbdm_stream_nbd::Timeouts {
    rbdm_stream_nbd::Timeouts {
        connect: Duration::from_millis(300),
        idle: Duration::from_millis(500),
    }
}

fn open_quick(uri: &str) -> Result<rbdm_stream_nbd::NbdStream, SourceError> {
    let target = rbdm_spec::NbdTarget::parse(uri).unwrap();
    rbdm_stream_nbd::NbdStream::open_with(target, uri, quick())
}

/// Issue 13 point 9: a server that accepts and says nothing, and one that stops answering
/// after the handshake (qemu-nbd under SIGSTOP), fail with ETIMEDOUT in bounded time,
/// naming the stream and what it waited for.
#[test]
fn silent_servers_time_out() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = l.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    let t = Instant::now();
    let e = open_quick(&format!("nbd://127.0.0.1:{port}/"))
        .err()
        .unwrap();
    assert_eq!(e.errno(), libc_etimedout(), "{e}");
    assert!(e.to_string().contains("handshake"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.raw");
    std::fs::write(&file, pseudo_random(4 * MIB as usize, 3)).unwrap();
    let sock = dir.path().join("s.sock");
    let server = serve("raw", &file, &["--socket", sock.to_str().unwrap()], || {
        UnixStream::connect(&sock).is_ok()
    });
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    let s = open_quick(&uri).unwrap();
    let pid = server.0.id() as i32;
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status();
        assert!(ok.unwrap().success());
    };
    signal("-STOP");
    let t = Instant::now();
    let e = s.read_at(MIB, &mut vec![0u8; 65536]).unwrap_err();
    signal("-CONT");
    assert_eq!(e.errno(), libc_etimedout(), "{e}");
    assert!(e.to_string().contains("at 1048576"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

fn libc_etimedout() -> i32 {
    110
}

/// `nbd://foo.example.com` (Ceph's script) fails at once, without a DNS query.
#[test]
fn reserved_names_are_not_looked_up() {
    for uri in [
        "nbd://foo.example.com",
        "nbd://x.invalid/e",
        "nbd://a.test:10809/",
    ] {
        let t = Instant::now();
        let e = rbdm_registry::report(&open_quick(uri).err().unwrap());
        assert!(e.contains("not looked up"), "{e}");
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }
}

/// A stream whose server was killed fails its reads (after its reconnect tries), never
/// answering zeros.
#[test]
fn a_stream_whose_server_died_fails_its_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _, _) = sparse_raw(dir.path());
    let sock = dir.path().join("nbd.sock");
    let mut srv = serve("raw", &file, &["-k", sock.to_str().unwrap()], || {
        UnixStream::connect(&sock).is_ok()
    });
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    let s = open_quick(&uri).unwrap();
    s.read_at(MIB, &mut [0u8; 16]).unwrap();
    let _ = srv.0.kill();
    let _ = srv.0.wait();
    rbdm_registry::conformance::check_fails(&s).unwrap_or_else(|e| panic!("{e}"));
}
