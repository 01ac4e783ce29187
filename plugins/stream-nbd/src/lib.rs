//! The `nbd` stream: `{"type":"nbd","uri":"nbd://host[:port]/export" |
//! "nbd+unix:///export?socket=PATH"}`, an export read over NBD, with its holes known through
//! `base:allocation` block status. With it, anything `qemu-nbd` serves (vmdk, vhdx, vdi, a
//! qcow2 with features we refuse) imports as raw, sparse.
//!
//! What it is for: reading an NBD export, defensively (see `client`), over one connection
//! that is reopened once if it fails mid-request (reads are idempotent). What it is not: no
//! TLS, no writes, no pipelining; and not the NBD server (`crates/nbd`).
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use rbdm_registry::{OpenContext, Result, SourceError, Stream, StreamExtent, StreamPlugin};
use rbdm_spec::{NbdStreamSpec, NbdTarget};

pub mod client;
use client::{Client, NbdError};

inventory::submit!(StreamPlugin {
    type_name: "nbd",
    description: "an NBD export, holes known by block status (uri: nbd://host[:port]/export or nbd+unix:///export?socket=PATH)",
    open: open_spec,
});

/// Referenced by `rbdm-plugins` so the linker keeps this crate and its registration.
#[inline(never)]
pub fn link() {}

/// Timeouts, from `rbdm_spec` (`RBDM_STREAM_TIMEOUT_SECS`): `connect` for connecting and
/// each read of the negotiation (a server that accepts but never answers, like qemu-nbd busy
/// with its one allowed client, fails there, not after a minute); `idle` for each reply.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub idle: Duration,
}

impl Timeouts {
    /// The defaults, or what `RBDM_STREAM_TIMEOUT_SECS` says.
    pub fn from_env() -> Self {
        Timeouts {
            connect: rbdm_spec::stream_connect_timeout(),
            idle: rbdm_spec::stream_idle_timeout(),
        }
    }
}

fn open_spec(spec: &serde_json::Value, path: &str, _ctx: &OpenContext) -> Result<Box<dyn Stream>> {
    let s =
        NbdStreamSpec::from_json(spec, path).map_err(|e| SourceError::BadSpec(e.to_string()))?;
    Ok(Box::new(NbdStream::open(s.target, &s.uri)?))
}

/// A TCP or Unix socket.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Conn::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
        }
    }
}

/// Names that never reach a server (RFC 2606 and 6761: documentation and invalid domains,
/// as in `nbd://foo.example.com`) are refused without a lookup, so a spec copied from
/// documentation sends nothing off the machine.
fn reserved_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    let under = |d: &str| h == d || h.ends_with(&format!(".{d}"));
    ["example", "invalid", "test"].into_iter().any(under)
        || ["example.com", "example.net", "example.org"]
            .into_iter()
            .any(under)
}

fn connect(target: &NbdTarget, timeout: Duration) -> io::Result<Conn> {
    match target {
        NbdTarget::Tcp { host, port, .. } => {
            if reserved_name(host) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "cannot resolve {host}: a reserved name (RFC 2606/6761), not looked up"
                    ),
                ));
            }
            let mut last = io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolves to no address"),
            );
            for addr in (host.as_str(), *port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(Conn::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
        NbdTarget::Unix { socket, .. } => Ok(Conn::Unix(UnixStream::connect(socket)?)),
    }
}

/// A socket read or write that gave up waiting.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub struct NbdStream {
    target: NbdTarget,
    uri: String,
    timeouts: Timeouts,
    size: u64,
    allocation: bool,
    conn: Mutex<Option<Client<Conn>>>,
}

impl NbdStream {
    pub fn open(target: NbdTarget, uri: &str) -> Result<Self> {
        Self::open_with(target, uri, Timeouts::from_env())
    }

    pub fn open_with(target: NbdTarget, uri: &str, timeouts: Timeouts) -> Result<Self> {
        let mut s = NbdStream {
            target,
            uri: uri.to_string(),
            timeouts,
            size: 0,
            allocation: false,
            conn: Mutex::new(None),
        };
        let c = s.connect()?;
        s.size = c.size();
        s.allocation = c.knows_allocation();
        s.conn = Mutex::new(Some(c));
        Ok(s)
    }

    fn connect(&self) -> Result<Client<Conn>> {
        let t = self.timeouts;
        let io_err = |e| SourceError::io(format!("{}: connect", self.describe()), e);
        let sock = connect(&self.target, t.connect).map_err(io_err)?;
        sock.set_timeouts(t.connect).map_err(io_err)?;
        let c = Client::handshake(sock, self.target.export())
            .map_err(|e| self.error(e, "handshake", t.connect))?;
        c.get_ref().set_timeouts(t.idle).map_err(io_err)?;
        Ok(c)
    }

    /// The source error for `e`, which happened doing `what`; a socket timeout (after
    /// `waited`) is ETIMEDOUT.
    fn error(&self, e: NbdError, what: &str, waited: Duration) -> SourceError {
        let d = format!("{}: {what}", self.describe());
        match e {
            NbdError::Io(io) if is_timeout(&io) => {
                let context = format!(
                    "{d}: no reply for {waited:?} (set {} to wait longer)",
                    rbdm_spec::STREAM_TIMEOUT_ENV
                );
                SourceError::io(context, rbdm_spec::timed_out_error())
            }
            NbdError::Io(io) => SourceError::io(d, io),
            NbdError::NoExport(_) => SourceError::NotFound(format!("{d}: {e}")),
            NbdError::Unsupported(_) => SourceError::Unsupported(format!("{d}: {e}")),
            NbdError::Protocol(_) | NbdError::Server { .. } | NbdError::Refused(_) => {
                SourceError::Remote(format!("{d}: {e}"))
            }
        }
    }

    /// Runs `f` (doing `what`, for messages) on the connection; if the connection fails (not
    /// the server refusing the request), once more on a new one.
    fn with_conn<T>(
        &self,
        what: &dyn Fn() -> String,
        mut f: impl FnMut(&mut Client<Conn>) -> Result<T, NbdError>,
    ) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut retried = false;
        loop {
            let c = match guard.take() {
                Some(c) => c,
                None => self.reconnect()?,
            };
            let c = guard.insert(c);
            match f(c) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if c.is_broken() {
                        *guard = None;
                    }
                    // A dropped connection is worth one more try; a silent server is not
                    // (that would double the wait before the error).
                    if matches!(&e, NbdError::Io(io) if !is_timeout(io)) && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(self.error(e, &what(), self.timeouts.idle));
                }
            }
        }
    }

    fn reconnect(&self) -> Result<Client<Conn>> {
        let c = self.connect()?;
        if c.size() != self.size {
            return Err(SourceError::Changed(format!(
                "{}: export size changed from {} to {} bytes",
                self.describe(),
                self.size,
                c.size()
            )));
        }
        Ok(c)
    }
}

impl Stream for NbdStream {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(SourceError::Invalid(format!(
                "{}: read of {} bytes at {offset} is past the end ({} bytes)",
                self.describe(),
                buf.len(),
                self.size
            )));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len();
        self.with_conn(&|| format!("read of {len} bytes at {offset}"), |c| {
            c.read(offset, buf)
        })
    }

    /// Allocation from block status; `None` when the server does not offer `base:allocation`.
    fn extents(&self, offset: u64, len: u64) -> Option<Result<Vec<StreamExtent>>> {
        if !self.allocation {
            return None;
        }
        let end = offset.saturating_add(len).min(self.size);
        let mut out: Vec<StreamExtent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let what = || format!("block status of {} bytes at {pos}", end - pos);
            let runs = match self.with_conn(&what, |c| c.block_status(pos, end - pos)) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            for r in runs {
                match out.last_mut() {
                    Some(last) if last.zero == r.zero => last.len += r.len,
                    _ => out.push(StreamExtent {
                        offset: r.offset,
                        len: r.len,
                        zero: r.zero,
                    }),
                }
                pos = r.offset + r.len;
            }
        }
        Some(Ok(out))
    }

    fn describe(&self) -> String {
        format!("nbd {}", self.uri)
    }
}
