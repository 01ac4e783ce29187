//! The server against real clients: qemu-io and qemu-img over TCP and a Unix socket.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn pattern_cmds(pairs: &[(u8, u64, u64)], verb: &str) -> Vec<String> {
    pairs
        .iter()
        .map(|(p, off, len)| format!("{verb} -P {p:#x} {off} {len}"))
        .collect()
}

/// Writes through qemu-io, reads back through a second qemu-io, checks the bytes in the file.
fn write_and_verify(url: &str, server: &Server, name: &str) {
    let pieces = [
        (0xab, 0, MIB),
        (0xcd, 5 * MIB + 512, 64 * 1024),
        (0x11, 63 * MIB, MIB),
    ];
    qemu_io(url, &pattern_cmds(&pieces, "write"));
    let mut reads = pattern_cmds(&pieces, "read");
    reads.push(format!("read -P 0 {} {}", 2 * MIB, MIB));
    qemu_io(url, &reads);
    let file = server.file(name);
    for (p, off, len) in pieces {
        let got = read_file_range(&file, off, len as usize);
        assert!(
            got.iter().all(|&b| b == p),
            "device bytes at {off} are not {p:#x}"
        );
    }
    assert!(read_file_range(&file, 2 * MIB, MIB as usize)
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn qemu_io_over_tcp_and_unix() {
    let (tcp, unix) = Server::start(&[disk("disk", 64 * MIB), disk("other", 8 * MIB)]);
    write_and_verify(&tcp.url("disk"), &tcp, "disk");
    // Empty export name: the first export.
    let t = qemu_io(
        &format!("nbd://127.0.0.1:{}", tcp.port),
        &["read -P 0xab 0 1M".to_string()],
    );
    assert!(t.contains("read 1048576/1048576"), "{t}");
    // The other export, through the Unix socket this time.
    qemu_io(
        &unix.unix_url("other"),
        &["write -P 0x5a 4096 12288".to_string()],
    );
    let other = read_file_range(&tcp.file("other"), 0, 20480);
    assert!(other[..4096].iter().all(|&b| b == 0) && other[4096..16384].iter().all(|&b| b == 0x5a));
    // And a pattern check that must fail, so the checks above are known to bite.
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            &unix.unix_url("disk"),
            "-c",
            "read -P 0x12 0 4096",
        ],
    );
    assert!(
        text(&out).contains("Pattern verification failed"),
        "{}",
        text(&out)
    );
}

#[test]
fn qemu_io_unix_write_and_verify() {
    let (tcp, unix) = Server::start(&[disk("disk", 64 * MIB)]);
    write_and_verify(&unix.unix_url("disk"), &tcp, "disk");
}

#[test]
fn qemu_img_convert_and_map_keep_holes() {
    let (tcp, _unix) = Server::start(&[disk("disk", 32 * MIB)]);
    let file = tcp.file("disk");
    let a: Vec<u8> = (0..MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    write_file_range(&file, MIB, &a);
    write_file_range(&file, 20 * MIB, &vec![0x77; 256 * 1024]);

    let out_path = tcp.dir.path().join("out.raw");
    let out_str = out_path.to_str().expect("utf-8 path");
    let started = Instant::now();
    let conv = run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &tcp.url("disk"),
            out_str,
        ],
    );
    assert!(conv.status.success(), "{}", text(&conv));
    eprintln!("qemu-img convert 32 MiB: {:?}", started.elapsed());
    let want = std::fs::read(&file).expect("device");
    let got = std::fs::read(&out_path).expect("converted");
    assert!(got == want, "converted image differs from the device");

    let map = run(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &tcp.url("disk")],
    );
    assert!(map.status.success(), "{}", text(&map));
    let entries: serde_json::Value = serde_json::from_slice(&map.stdout).expect("map json");
    let data_at = |off: u64| -> bool {
        let e = entries
            .as_array()
            .expect("array")
            .iter()
            .find(|e| {
                let start = e["start"].as_u64().expect("start");
                start <= off && off < start + e["length"].as_u64().expect("length")
            })
            .unwrap_or_else(|| panic!("no map entry for {off}"));
        e["data"].as_bool().expect("data")
    };
    assert!(!data_at(0) && !data_at(MIB - 1), "{entries}");
    assert!(data_at(MIB) && data_at(2 * MIB - 1), "{entries}");
    assert!(!data_at(2 * MIB) && !data_at(19 * MIB), "{entries}");
    assert!(
        data_at(20 * MIB) && !data_at(21 * MIB) && !data_at(32 * MIB - 1),
        "{entries}"
    );
}

#[test]
fn two_qemu_io_clients_at_once() {
    let (tcp, unix) = Server::start(&[disk("disk", 64 * MIB)]);
    let spawn = |url: String, p: u8, base: u64| {
        std::thread::spawn(move || {
            let mut cmds = Vec::new();
            for i in 0..8 {
                cmds.push(format!("aio_write -P {p:#x} {} 1M", base + i * 2 * MIB));
            }
            cmds.push("aio_flush".to_string());
            for i in 0..8 {
                cmds.push(format!("read -P {p:#x} {} 1M", base + i * 2 * MIB));
            }
            qemu_io(&url, &cmds)
        })
    };
    let a = spawn(tcp.url("disk"), 0x61, 0);
    let b = spawn(unix.unix_url("disk"), 0x62, MIB);
    a.join().expect("client a");
    b.join().expect("client b");
    let file = tcp.file("disk");
    for i in 0..16u64 {
        let want = if i % 2 == 0 { 0x61 } else { 0x62 };
        let got = read_file_range(&file, i * MIB, MIB as usize);
        assert!(got.iter().all(|&b| b == want), "MiB {i}");
    }
}

#[test]
fn bad_clients_do_not_hurt_the_server() {
    let (tcp, _unix) = Server::start(&[disk("disk", 8 * MIB)]);
    // Garbage instead of client flags.
    {
        let mut s = TcpStream::connect(("127.0.0.1", tcp.port)).expect("connect");
        let _ = s.write_all(&[0xde; 300]);
    }
    // Garbage option magic after a valid greeting.
    {
        let mut raw = Raw::connect(tcp.port);
        let _ = raw.s.write_all(b"NOTOPTIONSxxxxxxxxxxxxxxxxxxxxxx");
    }
    // A write header promising 1 MiB, 100 bytes of it, then gone.
    {
        let mut raw = Raw::connect(tcp.port);
        raw.go("disk").expect("go");
        raw.request(CMD_WRITE, 0, 1, 0, MIB as u32, &[0x33; 100]);
    }
    // A read request, then gone before the reply.
    {
        let mut raw = Raw::connect(tcp.port);
        raw.go("disk").expect("go");
        raw.request(CMD_READ, 0, 1, 0, 4 * MIB as u32, &[]);
    }
    // A client that connects and never speaks stays open while others work.
    let idle = TcpStream::connect(("127.0.0.1", tcp.port)).expect("connect");
    qemu_io(
        &tcp.url("disk"),
        &pattern_cmds(&[(0x42, 0, 65536)], "write"),
    );
    qemu_io(&tcp.url("disk"), &pattern_cmds(&[(0x42, 0, 65536)], "read"));
    assert!(
        read_file_range(&tcp.file("disk"), 0, 100)
            .iter()
            .all(|&b| b == 0x42),
        "partial write landed"
    );
    drop(idle);
}

#[test]
fn read_only_export_refuses_writes() {
    let (tcp, _unix) = Server::start(&[Spec {
        name: "ro",
        size: 4 * MIB,
        read_only: true,
    }]);
    let out = run(
        "qemu-io",
        &["-f", "raw", "-r", &tcp.url("ro"), "-c", "read -P 0 0 64k"],
    );
    assert!(
        out.status.success() && text(&out).contains("read 65536/65536"),
        "{}",
        text(&out)
    );
    // Opened read-write, qemu sees NBD_FLAG_READ_ONLY and refuses to open ("Permission
    // denied") before any write is sent; the server's own EPERM is checked in raw.rs.
    let out = run(
        "qemu-io",
        &["-f", "raw", &tcp.url("ro"), "-c", "write -P 1 0 4k"],
    );
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("Permission denied"),
        "{t}"
    );
    assert!(read_file_range(&tcp.file("ro"), 0, 4096)
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn stop_returns_with_clients_connected() {
    let (tcp, unix) = Server::start(&[disk("disk", 4 * MIB)]);
    let mut busy = Raw::connect(tcp.port);
    busy.go("disk").expect("go");
    busy.request(CMD_WRITE, 0, 9, 0, 4096, &[0x66; 4096]);
    assert_eq!(busy.reply(0).kind, 0);
    let _handshaking = Raw::connect_unix(&unix.socket);
    let started = Instant::now();
    tcp.stop().expect("serve result");
    unix.stop().expect("serve result");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        started.elapsed()
    );
}

#[test]
fn stop_cuts_a_client_that_never_reads_its_replies() {
    let (tcp, _unix) = Server::start(&[disk("disk", 64 * MIB)]);
    let mut stalled = Raw::connect(tcp.port);
    stalled.go("disk").expect("go");
    // 1 GiB of replies asked for, none read: workers end up blocked writing to the socket.
    for i in 0..32 {
        stalled.request(CMD_READ, 0, i, 0, 32 * MIB as u32, &[]);
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    tcp.stop().expect("serve result");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "stop took {took:?}"
    );
}
