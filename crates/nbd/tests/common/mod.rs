//! Shared test scaffolding: a server running in a thread over sparse temp files, and a small
//! raw NBD client for the cases real clients never produce.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rbdm_nbd::file_device::FileDevice;
use rbdm_nbd::{serve_with, BlockDevice, Export, Listener, NbdError, TlsConfig};

pub const MIB: u64 = 1 << 20;

pub struct Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<(), NbdError>>>,
}

/// What one export is made of: name, size, read-only.
pub struct Spec {
    pub name: &'static str,
    pub size: u64,
    pub read_only: bool,
}

pub fn disk(name: &'static str, size: u64) -> Spec {
    Spec {
        name,
        size,
        read_only: false,
    }
}

impl Server {
    /// One server over TCP (127.0.0.1:0), one over a Unix socket, same exports.
    pub fn start(specs: &[Spec]) -> (Server, Server) {
        Server::start_with(specs, None)
    }

    /// As [`Server::start`], both requiring TLS when `tls` is given.
    pub fn start_with(specs: &[Spec], tls: Option<TlsConfig>) -> (Server, Server) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut devices: Vec<(String, Arc<dyn BlockDevice>)> = Vec::new();
        for s in specs {
            let path = dir.path().join(format!("{}.raw", s.name));
            FileDevice::create(&path, s.size).expect("create");
            let dev = FileDevice::open(&path, s.read_only).expect("open");
            devices.push((s.name.to_string(), Arc::new(dev)));
        }
        let exports = || {
            devices
                .iter()
                .map(|(name, dev)| Export {
                    name: name.clone(),
                    description: format!("test disk {name}"),
                    device: Arc::clone(dev),
                })
                .collect::<Vec<_>>()
        };
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        let socket = dir.path().join("nbd.sock");
        let unix = UnixListener::bind(&socket).expect("bind unix");
        let dir2 = tempfile::tempdir().expect("tempdir");
        let a = Server::spawn(
            Listener::Tcp(tcp),
            exports(),
            tls.clone(),
            dir,
            port,
            socket.clone(),
        );
        let b = Server::spawn(Listener::Unix(unix), exports(), tls, dir2, port, socket);
        (a, b)
    }

    fn spawn(
        listener: Listener,
        exports: Vec<Export>,
        tls: Option<TlsConfig>,
        dir: tempfile::TempDir,
        port: u16,
        socket: PathBuf,
    ) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::spawn(move || serve_with(listener, exports, stop2, tls));
        Server {
            dir,
            port,
            socket,
            stop,
            handle: Some(handle),
        }
    }

    /// The backing file of an export (only the TCP server's `dir` holds them).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.raw"))
    }

    pub fn url(&self, name: &str) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, name)
    }

    pub fn unix_url(&self, name: &str) -> String {
        format!("nbd+unix:///{}?socket={}", name, self.socket.display())
    }

    /// Stops the server and returns what `serve` returned.
    pub fn stop(mut self) -> Result<(), NbdError> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("serve panicked")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs a command under `timeout` so a hung server fails the test instead of hanging it.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg("60")
        .arg(program)
        .args(args)
        .output()
        .expect("spawn");
    out
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// qemu-io with `-c` commands; panics with the whole output unless every command succeeded.
pub fn qemu_io(url: &str, cmds: &[String]) -> String {
    let mut args = vec!["-f", "raw", url];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let out = run("qemu-io", &args);
    let t = text(&out);
    let bad = ["failed", "error", "Error", "not permitted", "Could not"];
    assert!(
        out.status.success() && !bad.iter().any(|b| t.contains(b)),
        "qemu-io {url} {cmds:?}:\n{t}"
    );
    t
}

pub fn read_file_range(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).expect("read");
    buf
}

pub fn write_file_range(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.write_all_at(data, offset).expect("write");
}

// ---- raw client ----

/// The server hung up: end of stream, or a reset.
pub fn assert_closed(raw: &mut Raw) {
    let mut b = [0u8; 1];
    match raw.s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection should be closed, got {other:?}"),
    }
}

// The server's own wire constants and layouts; the qemu tests are the independent check
// that they match the protocol.
pub use rbdm_nbd::proto::*;

pub trait Sock: Read + Write {}
impl<T: Read + Write> Sock for T {}

pub struct Raw {
    pub s: Box<dyn Sock>,
}

/// One reply chunk; a simple reply has `magic == SIMPLE_REPLY_MAGIC` and `kind == errno`.
#[derive(Debug)]
pub struct Chunk {
    pub magic: u32,
    pub flags: u16,
    pub kind: u32,
    pub handle: u64,
    pub payload: Vec<u8>,
}

impl Raw {
    /// Connects and answers the greeting with FIXED_NEWSTYLE | NO_ZEROES.
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut raw = Raw { s: Box::new(s) };
        raw.greet();
        raw
    }

    pub fn connect_unix(path: &Path) -> Raw {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut raw = Raw { s: Box::new(s) };
        raw.greet();
        raw
    }

    /// Reads the greeting and answers FIXED_NEWSTYLE | NO_ZEROES.
    pub fn greet(&mut self) {
        let mut g = [0u8; 18];
        self.s.read_exact(&mut g).expect("greeting");
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(
            u16::from_be_bytes([g[16], g[17]]),
            3,
            "FIXED_NEWSTYLE | NO_ZEROES"
        );
        self.s.write_all(&3u32.to_be_bytes()).expect("flags");
    }

    pub fn send_option(&mut self, opt: u32, data: &[u8]) {
        let mut m = Vec::new();
        put_option(&mut m, opt, data);
        self.s.write_all(&m).expect("option");
    }

    /// Reads one option reply: (type, data).
    pub fn option_reply(&mut self, opt: u32) -> (u32, Vec<u8>) {
        let s = &mut self.s;
        assert_eq!(read_u64(s).expect("option reply"), OPTION_REPLY_MAGIC);
        assert_eq!(read_u32(s).expect("option reply"), opt);
        let kind = read_u32(s).expect("option reply");
        let len = read_u32(s).expect("option reply");
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).expect("option data");
        (kind, data)
    }

    /// Sends an option and collects replies up to the final ACK or error.
    pub fn option(&mut self, opt: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        self.send_option(opt, data);
        let mut all = Vec::new();
        loop {
            let r = self.option_reply(opt);
            let last = r.0 == REP_ACK || r.0 & REP_FLAG_ERROR != 0;
            all.push(r);
            if last {
                return all;
            }
        }
    }

    /// NBD_OPT_GO; returns (size, transmission flags) or the error reply type.
    pub fn go(&mut self, name: &str) -> Result<(u64, u16), u32> {
        let mut d = Vec::new();
        put_string32(&mut d, name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        let replies = self.option(OPT_GO, &d);
        let (last, _) = replies.last().expect("reply");
        if *last != REP_ACK {
            return Err(*last);
        }
        for (kind, data) in &replies {
            if *kind == REP_INFO && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT {
                let size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                return Ok((size, u16::from_be_bytes([data[10], data[11]])));
            }
        }
        panic!("GO without NBD_INFO_EXPORT: {replies:?}");
    }

    /// STRUCTURED_REPLY and SET_META_CONTEXT base:allocation for `name`.
    pub fn structured(&mut self, name: &str) {
        assert_eq!(self.option(OPT_STRUCTURED_REPLY, &[])[0].0, REP_ACK);
        let mut d = Vec::new();
        put_string32(&mut d, name.as_bytes());
        d.extend_from_slice(&1u32.to_be_bytes());
        put_string32(&mut d, META_BASE_ALLOCATION.as_bytes());
        let r = self.option(OPT_SET_META_CONTEXT, &d);
        assert_eq!(r.len(), 2, "one context then ACK: {r:?}");
        assert_eq!(r[0].0, REP_META_CONTEXT);
        assert_eq!(&r[0].1[4..], META_BASE_ALLOCATION.as_bytes());
    }

    pub fn request(
        &mut self,
        cmd: u16,
        flags: u16,
        handle: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut m = request_header(flags, cmd, handle, offset, len).to_vec();
        m.extend_from_slice(payload);
        self.s.write_all(&m).expect("request");
    }

    /// Reads one reply or chunk. A simple reply to a read carries `read_len` data bytes when
    /// it succeeded; pass 0 for every other command.
    pub fn reply(&mut self, read_len: usize) -> Chunk {
        let mut m = [0u8; 4];
        self.s.read_exact(&mut m).expect("reply magic");
        let magic = u32::from_be_bytes(m);
        if magic == SIMPLE_REPLY_MAGIC {
            let mut h = [0u8; 12];
            self.s.read_exact(&mut h).expect("simple reply");
            let errno = u32::from_be_bytes(h[..4].try_into().unwrap());
            let handle = u64::from_be_bytes(h[4..].try_into().unwrap());
            let mut payload = vec![0u8; if errno == 0 { read_len } else { 0 }];
            self.s.read_exact(&mut payload).expect("simple data");
            return Chunk {
                magic,
                flags: 1,
                kind: errno,
                handle,
                payload,
            };
        }
        assert_eq!(magic, STRUCTURED_REPLY_MAGIC, "reply magic");
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).expect("chunk header");
        let flags = u16::from_be_bytes([h[0], h[1]]);
        let kind = u32::from(u16::from_be_bytes([h[2], h[3]]));
        let handle = u64::from_be_bytes(h[4..12].try_into().unwrap());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut payload = vec![0u8; len as usize];
        self.s.read_exact(&mut payload).expect("chunk payload");
        Chunk {
            magic,
            flags,
            kind,
            handle,
            payload,
        }
    }
}
