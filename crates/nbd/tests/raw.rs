//! Protocol details and faults, through a raw client: what real clients never send.

mod common;

use std::io::{self, Read};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use rbdm_nbd::{serve, BlockDevice, Export, Listener};

const REPLY_TYPE_OFFSET_DATA: u32 = 1;
const REPLY_TYPE_OFFSET_HOLE: u32 = 2;
const REPLY_TYPE_BLOCK_STATUS: u32 = 5;
const REPLY_TYPE_ERROR: u32 = (1 << 15) + 1;
const FLAG_DF: u16 = 1 << 2;
const FLAG_REQ_ONE: u16 = 1 << 3;

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// The errno of a structured error chunk.
fn chunk_errno(c: &Chunk) -> u32 {
    assert_eq!(c.kind, REPLY_TYPE_ERROR, "{c:?}");
    assert_eq!(c.flags & 1, 1, "error chunk ends the reply");
    be32(&c.payload)
}

#[test]
fn out_of_range_requests_fail_and_the_connection_stays() {
    let (tcp, _unix) = Server::start(&[disk("disk", 4 * MIB)]);
    let mut raw = Raw::connect(tcp.port);
    let (size, _) = raw.go("disk").expect("go");
    assert_eq!(size, 4 * MIB);
    raw.request(CMD_READ, 0, 1, size - 4096, 8192, &[]);
    assert_eq!(raw.reply(8192).kind, EINVAL);
    raw.request(CMD_WRITE, 0, 2, size, 512, &[7; 512]);
    assert_eq!(raw.reply(0).kind, EINVAL);
    raw.request(CMD_READ, 0, 3, u64::MAX - 10, 4096, &[]);
    assert_eq!(raw.reply(4096).kind, EINVAL, "offset + length overflows");
    raw.request(CMD_READ, 0, 4, 0, 64 << 20, &[]);
    assert_eq!(
        raw.reply(0).kind,
        EINVAL,
        "64 MiB read refused, not allocated"
    );
    raw.request(CMD_TRIM, 0, 5, size - 1, 2, &[]);
    assert_eq!(raw.reply(0).kind, EINVAL);
    raw.request(CMD_BLOCK_STATUS, 0, 6, 0, 4096, &[]);
    assert_eq!(raw.reply(0).kind, EINVAL, "no meta context negotiated");
    raw.request(99, 0, 7, 0, 0, &[]);
    assert_eq!(raw.reply(0).kind, EINVAL, "unknown command");
    // Still usable.
    raw.request(CMD_WRITE, 0, 8, size - 512, 512, &[9; 512]);
    assert_eq!(raw.reply(0).kind, 0);
    raw.request(CMD_READ, 0, 9, size - 512, 512, &[]);
    let r = raw.reply(512);
    assert_eq!((r.kind, r.handle), (0, 9));
    assert_eq!(r.payload, vec![9; 512]);
}

#[test]
fn structured_errors_carry_errno_and_message() {
    let (tcp, _unix) = Server::start(&[disk("disk", 4 * MIB)]);
    let mut raw = Raw::connect(tcp.port);
    raw.structured("disk");
    raw.go("disk").expect("go");
    raw.request(CMD_READ, 0, 1, 4 * MIB, 1, &[]);
    let c = raw.reply(0);
    assert_eq!(c.handle, 1);
    assert_eq!(chunk_errno(&c), EINVAL);
    let msg_len = u16::from_be_bytes([c.payload[4], c.payload[5]]) as usize;
    assert!(msg_len > 0 && c.payload.len() == 6 + msg_len);
    raw.request(CMD_BLOCK_STATUS, 0, 2, 4 * MIB - 10, 20, &[]);
    assert_eq!(chunk_errno(&raw.reply(0)), EINVAL);
    raw.request(CMD_READ, 0, 3, 0, 16, &[]);
    let c = raw.reply(0);
    // A hole this short is sent as zero data.
    assert_eq!(
        (c.kind, c.handle, c.payload.len()),
        (REPLY_TYPE_OFFSET_DATA, 3, 24),
        "still serving"
    );
    assert!(c.payload[8..].iter().all(|&b| b == 0));
}

#[test]
fn oversized_write_is_refused_and_closes() {
    let (tcp, _unix) = Server::start(&[disk("disk", 4 * MIB)]);
    let mut raw = Raw::connect(tcp.port);
    raw.go("disk").expect("go");
    raw.request(CMD_WRITE, 0, 1, 0, u32::MAX, &[1; 64]);
    assert_eq!(raw.reply(0).kind, EINVAL);
    assert_closed(&mut raw);
}

#[test]
fn read_only_export_answers_eperm() {
    let (tcp, _unix) = Server::start(&[Spec {
        name: "ro",
        size: 4 * MIB,
        read_only: true,
    }]);
    let mut raw = Raw::connect(tcp.port);
    let (_, flags) = raw.go("ro").expect("go");
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    raw.request(CMD_WRITE, 0, 1, 0, 4096, &[1; 4096]);
    assert_eq!(raw.reply(0).kind, EPERM);
    raw.request(CMD_TRIM, 0, 2, 0, 4096, &[]);
    assert_eq!(raw.reply(0).kind, EPERM);
    raw.request(CMD_WRITE_ZEROES, 0, 3, 0, 4096, &[]);
    assert_eq!(raw.reply(0).kind, EPERM);
    raw.request(CMD_READ, 0, 4, 0, 4096, &[]);
    assert_eq!(raw.reply(4096).kind, 0);
    assert!(read_file_range(&tcp.file("ro"), 0, 4096)
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn list_and_export_selection() {
    let (tcp, unix) = Server::start(&[disk("disk", MIB), disk("other", 2 * MIB)]);
    let mut raw = Raw::connect_unix(&unix.socket);
    let replies = raw.option(OPT_LIST, &[]);
    let names: Vec<String> = replies
        .iter()
        .filter(|(k, _)| *k == REP_SERVER)
        .map(|(_, d)| String::from_utf8_lossy(&d[4..4 + be32(d) as usize]).into_owned())
        .collect();
    assert_eq!(names, vec!["disk", "other"]);
    assert_eq!(replies.last().expect("ack").0, REP_ACK);
    assert_eq!(
        raw.option(OPT_LIST, b"x")[0].0,
        REP_ERR_INVALID,
        "LIST with data"
    );
    assert_eq!(raw.go("nope"), Err(REP_ERR_UNKNOWN));
    // After an error the client may keep haggling.
    assert_eq!(raw.go("other").expect("go").0, 2 * MIB);

    let mut raw = Raw::connect(tcp.port);
    assert_eq!(raw.go("").expect("default export").0, MIB);

    // EXPORT_NAME cannot carry an error: an unknown name ends the session.
    let mut raw = Raw::connect(tcp.port);
    raw.send_option(OPT_EXPORT_NAME, b"nope");
    assert_closed(&mut raw);
    // A known one gets size and flags, without the 124 zeros (we asked NO_ZEROES).
    let mut raw = Raw::connect(tcp.port);
    raw.send_option(OPT_EXPORT_NAME, b"other");
    let mut b = [0u8; 10];
    raw.s.read_exact(&mut b).expect("export reply");
    assert_eq!(be64(&b), 2 * MIB);
    raw.request(CMD_READ, 0, 1, 0, 8, &[]);
    assert_eq!(
        raw.reply(8).kind,
        0,
        "first bytes after the reply are a reply to our read"
    );
}

#[test]
fn option_errors_keep_the_session() {
    let (tcp, _unix) = Server::start(&[disk("disk", MIB)]);
    let mut raw = Raw::connect(tcp.port);
    assert_eq!(raw.option(42, b"whatever")[0].0, REP_ERR_UNSUP);
    assert_eq!(raw.option(OPT_STRUCTURED_REPLY, b"x")[0].0, REP_ERR_INVALID);
    assert_eq!(
        raw.option(OPT_SET_META_CONTEXT, &[0; 8])[0].0,
        REP_ERR_INVALID,
        "before structured"
    );
    assert_eq!(
        raw.option(OPT_GO, &[0, 0, 0, 9, b'd'])[0].0,
        REP_ERR_INVALID,
        "truncated"
    );
    assert_eq!(
        raw.option(OPT_GO, &[0xff; 40])[0].0,
        REP_ERR_INVALID,
        "name length lies"
    );
    // 1 MiB of option payload: drained and refused, not buffered.
    assert_eq!(
        raw.option(OPT_LIST, &vec![0u8; 1 << 20])[0].0,
        REP_ERR_TOO_BIG
    );
    assert!(raw.go("disk").is_ok());

    let mut raw = Raw::connect(tcp.port);
    assert_eq!(raw.option(OPT_ABORT, &[])[0].0, REP_ACK);
    assert_closed(&mut raw);
}

#[test]
fn handshake_garbage_closes_only_that_connection() {
    let (tcp, _unix) = Server::start(&[disk("disk", MIB)]);
    // Unknown client flag bits.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", tcp.port)).expect("connect");
    let mut g = [0u8; 18];
    s.read_exact(&mut g).expect("greeting");
    io::Write::write_all(&mut s, &0xffff_fff0u32.to_be_bytes()).expect("flags");
    let mut raw = Raw { s: Box::new(s) };
    assert_closed(&mut raw);
    // Bad request magic in transmission.
    let mut raw = Raw::connect(tcp.port);
    raw.go("disk").expect("go");
    io::Write::write_all(&mut raw.s, &[0x55; 28]).expect("junk");
    assert_closed(&mut raw);
    let mut raw = Raw::connect(tcp.port);
    raw.go("disk").expect("another client is served");
    raw.request(CMD_DISC, 0, 1, 0, 0, &[]);
    assert_closed(&mut raw);
}

#[test]
fn block_status_and_sparse_reads_follow_the_holes() {
    let (tcp, _unix) = Server::start(&[disk("disk", 4 * MIB)]);
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
    write_file_range(&tcp.file("disk"), MIB, &data);
    let mut raw = Raw::connect(tcp.port);
    raw.structured("disk");
    let (_, flags) = raw.go("disk").expect("go");
    assert_ne!(flags & (1 << 7), 0, "SEND_DF with structured replies");

    raw.request(CMD_BLOCK_STATUS, 0, 1, 0, 4 * MIB as u32, &[]);
    let c = raw.reply(0);
    assert_eq!((c.kind, c.flags & 1), (REPLY_TYPE_BLOCK_STATUS, 1));
    let descs: Vec<(u32, u32)> = c.payload[4..]
        .chunks(8)
        .map(|d| (be32(d), be32(&d[4..])))
        .collect();
    assert_eq!(
        descs,
        vec![(MIB as u32, 3), (65536, 0), (3 * MIB as u32 - 65536, 3)]
    );
    raw.request(CMD_BLOCK_STATUS, FLAG_REQ_ONE, 2, MIB, MIB as u32, &[]);
    let c = raw.reply(0);
    assert_eq!(
        &c.payload[4..],
        &[0, 1, 0, 0, 0, 0, 0, 0],
        "one descriptor, 64 KiB of data"
    );

    // A read over hole + data + hole comes back as three chunks that rebuild the bytes.
    let (start, len) = (MIB - 8192, 65536 + 16384);
    raw.request(CMD_READ, 0, 3, start, len as u32, &[]);
    let mut rebuilt = vec![0xeeu8; len];
    let mut kinds = Vec::new();
    loop {
        let c = raw.reply(0);
        assert_eq!(c.handle, 3);
        let off = (be64(&c.payload) - start) as usize;
        match c.kind {
            REPLY_TYPE_OFFSET_DATA => {
                rebuilt[off..off + c.payload.len() - 8].copy_from_slice(&c.payload[8..])
            }
            REPLY_TYPE_OFFSET_HOLE => rebuilt[off..off + be32(&c.payload[8..]) as usize].fill(0),
            other => panic!("unexpected chunk type {other}"),
        }
        kinds.push(c.kind);
        if c.flags & 1 != 0 {
            break;
        }
    }
    assert_eq!(
        kinds,
        vec![
            REPLY_TYPE_OFFSET_HOLE,
            REPLY_TYPE_OFFSET_DATA,
            REPLY_TYPE_OFFSET_HOLE
        ]
    );
    assert_eq!(rebuilt, read_file_range(&tcp.file("disk"), start, len));
    // DF: one data chunk for the whole range.
    raw.request(CMD_READ, FLAG_DF, 4, start, len as u32, &[]);
    let c = raw.reply(0);
    assert_eq!(
        (c.kind, c.flags & 1, c.payload.len()),
        (REPLY_TYPE_OFFSET_DATA, 1, 8 + len)
    );
    assert_eq!(&c.payload[8..], &rebuilt[..]);
}

#[test]
fn many_requests_in_flight() {
    let (tcp, _unix) = Server::start(&[disk("disk", 8 * MIB)]);
    let mut raw = Raw::connect(tcp.port);
    raw.go("disk").expect("go");
    // 64 writes sent before reading any reply, then a flush; every handle answered once.
    for i in 0..64u64 {
        let flags = if i % 8 == 0 { CMD_FLAG_FUA } else { 0 };
        raw.request(
            CMD_WRITE,
            flags,
            100 + i,
            i * 65536,
            65536,
            &vec![i as u8; 65536],
        );
    }
    let mut seen = [false; 64];
    for _ in 0..64 {
        let r = raw.reply(0);
        assert_eq!(r.kind, 0);
        let i = (r.handle - 100) as usize;
        assert!(!seen[i], "handle {} answered twice", r.handle);
        seen[i] = true;
    }
    raw.request(CMD_FLUSH, 0, 1, 0, 0, &[]);
    assert_eq!(raw.reply(0).kind, 0);
    for i in 0..64u64 {
        raw.request(CMD_READ, 0, 200 + i, i * 65536, 65536, &[]);
    }
    for _ in 0..64 {
        let r = raw.reply(65536);
        let i = r.handle - 200;
        assert!(r.payload.iter().all(|&b| b == i as u8), "read {i}");
    }
    raw.request(CMD_WRITE_ZEROES, 0, 2, 0, 65536, &[]);
    assert_eq!(raw.reply(0).kind, 0);
    raw.request(CMD_TRIM, 0, 3, 65536, 65536, &[]);
    assert_eq!(raw.reply(0).kind, 0);
    assert!(read_file_range(&tcp.file("disk"), 0, 65536)
        .iter()
        .all(|&b| b == 0));
}

/// A device whose I/O fails the way a full or broken disk does.
struct Failing;

impl BlockDevice for Failing {
    fn size(&self) -> u64 {
        MIB
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
    fn write(&self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::ErrorKind::StorageFull.into())
    }
    fn flush(&self) -> io::Result<()> {
        Err(io::Error::other("flush failed"))
    }
    fn trim(&self, _: u64, _: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn write_zeroes(&self, _: u64, _: u64) -> io::Result<()> {
        Err(io::ErrorKind::OutOfMemory.into())
    }
}

#[test]
fn device_errors_become_nbd_errnos() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let exports = vec![Export {
        name: "bad".into(),
        description: String::new(),
        device: Arc::new(Failing),
    }];
    let stop2 = Arc::clone(&stop);
    let server = std::thread::spawn(move || serve(Listener::Tcp(listener), exports, stop2));
    let mut raw = Raw::connect(port);
    raw.go("bad").expect("go");
    let cases: [(u16, u16, u32); 5] = [
        (CMD_READ, 0, 5),
        (CMD_WRITE, 0, 28),
        (CMD_FLUSH, 0, 5),
        (CMD_TRIM, 0, 95),
        (CMD_WRITE_ZEROES, 0, 12),
    ];
    for (i, (cmd, flags, want)) in cases.into_iter().enumerate() {
        let payload = if cmd == CMD_WRITE {
            vec![0u8; 512]
        } else {
            vec![]
        };
        let len = if cmd == CMD_FLUSH { 0 } else { 512 };
        raw.request(cmd, flags, i as u64, 0, len, &payload);
        let r = raw.reply(512);
        assert_eq!((r.handle, r.kind), (i as u64, want), "command {cmd}");
    }
    drop(raw);
    stop.store(true, Ordering::Relaxed);
    let err = server
        .join()
        .expect("serve")
        .expect_err("the final flush fails");
    assert!(err.to_string().contains("bad"), "{err}");
}
