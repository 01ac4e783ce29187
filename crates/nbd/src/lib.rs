//! An NBD server: exports block devices to real NBD clients (tested with qemu-io and
//! qemu-img) over TCP or a Unix socket, so images can be used while they are being migrated.
//!
//! What it is for: the fixed-newstyle handshake (OPT_GO/INFO/LIST, structured replies,
//! `base:allocation` block status, STARTTLS), the transmission phase (read, write, flush,
//! trim, write-zeroes) with several requests in flight per connection and several
//! connections, and TLS when given credentials ([`TlsConfig`]): then every client must start
//! TLS before anything else, as `qemu-nbd --tls-creds` requires.
//! What it is not: no old-style handshake, no extended headers, no client, no data caching:
//! every read and write goes straight to the [`BlockDevice`], which must be thread-safe. Only
//! the allocation map is cached, per export (see `allocation.rs`).
//!
//! Why not the `nbd` crate (NOTES.md): no OPT_GO/INFO, structured replies or block status,
//! one hard-coded export name, wrong errnos for TRIM/WRITE_ZEROES and one request at a time.

mod allocation;
mod handshake;
pub mod proto;
mod tls;
mod tls_stream;
mod transmission;
mod transport;

pub mod file_device;

pub use proto::errno_for;
pub use tls::{TlsConfig, TlsError};

use allocation::AllocMap;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A byte-addressed device that an export serves. Calls come from several threads at once.
pub trait BlockDevice: Send + Sync {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn flush(&self) -> io::Result<()>;
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Allocated (data) extents inside [offset, offset+len), sorted; everything else is a hole
    /// that reads as zeros. Default: all data.
    fn allocated(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
        Ok(vec![(offset, len)])
    }
    /// Aligned pieces of this many bytes whose allocation [`BlockDevice::allocation_token`]
    /// vouches for, so the export may cache their maps. 0 (the default): no caching, the map
    /// is asked for each request.
    fn allocation_granule(&self) -> u64 {
        0
    }
    /// A value that changes whenever any writer, not only this export, may have changed the
    /// allocation of the granule holding `offset`. An error means "unknown": nothing cached
    /// for that granule is trusted.
    fn allocation_token(&self, _offset: u64) -> io::Result<u64> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// One named export. The first export is also the default one (empty name).
pub struct Export {
    pub name: String,
    pub description: String,
    pub device: Arc<dyn BlockDevice>,
}

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("no export to serve")]
    NoExports,
    #[error("export name {0:?} is used twice")]
    DuplicateExport(String),
    #[error("export name {0:?} is longer than 4096 bytes")]
    NameTooLong(String),
    #[error("listener")]
    Listener(#[source] io::Error),
    #[error("flushing export {export:?}")]
    Flush {
        export: String,
        #[source]
        source: io::Error,
    },
    #[error("connection")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

/// How often the accept loop looks at `stop`.
const POLL: Duration = Duration::from_millis(50);
/// How long a stop waits for in-flight replies before cutting connections.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// More connections than this are refused (closed at once) rather than given a thread.
const MAX_CONNECTIONS: usize = 256;
/// A client that has not picked an export this long after connecting is cut off, so that
/// clients that stall in the handshake (plain or TLS) cannot use up the connection slots.
/// `qemu-nbd --handshake-limit` defaults to the same.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// One connection's thread, as the accept loop watches it.
struct Running {
    handle: JoinHandle<()>,
    /// A clone of the socket, to cut the connection from outside its thread.
    watch: Stream,
    /// Set by the connection once its handshake is over; until then `deadline` applies.
    negotiated: Arc<AtomicBool>,
    deadline: Instant,
}

/// Serves in the clear until `stop` becomes true; see [`serve_with`].
pub fn serve(
    listener: Listener,
    exports: Vec<Export>,
    stop: Arc<AtomicBool>,
) -> Result<(), NbdError> {
    serve_with(listener, exports, stop, None)
}

/// Serves until `stop` becomes true (checked at least every 200 ms: use accept with a timeout
/// or non-blocking accept + sleep). On stop: stop accepting, let in-flight requests finish,
/// close connections, flush every export, return. With `tls`, clients must send STARTTLS
/// before any other option and the rest of the session is encrypted.
pub fn serve_with(
    listener: Listener,
    exports: Vec<Export>,
    stop: Arc<AtomicBool>,
    tls: Option<TlsConfig>,
) -> Result<(), NbdError> {
    check_exports(&exports)?;
    // One allocation map cache per export, shared by its connections so that a write through
    // one connection is seen by block status on another.
    let maps: Arc<[AllocMap]> = exports
        .iter()
        .map(|e| AllocMap::new(e.device.as_ref()))
        .collect();
    let exports: Arc<[Export]> = exports.into();
    match &listener {
        Listener::Tcp(l) => l.set_nonblocking(true),
        Listener::Unix(l) => l.set_nonblocking(true),
    }
    .map_err(NbdError::Listener)?;

    let mut conns: Vec<Running> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        conns.retain(|c| !c.handle.is_finished());
        cut_stalled_handshakes(&conns);
        match accept(&listener) {
            Ok(stream) if conns.len() >= MAX_CONNECTIONS => drop(stream),
            Ok(stream) => {
                if let Some(conn) = start_connection(stream, &exports, &maps, &tls) {
                    conns.push(conn);
                }
            }
            // Transient failures (EMFILE, ECONNABORTED...) must not end the server.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }

    // Closing the read side ends each connection's request loop; queued requests still run
    // and their replies still go out before the connection closes.
    for c in &conns {
        let _ = c.watch.shutdown(Shutdown::Read);
    }
    // Only a client that stopped reading its replies can hold a worker past the grace period.
    let deadline = Instant::now() + DRAIN_GRACE;
    while Instant::now() < deadline && conns.iter().any(|c| !c.handle.is_finished()) {
        thread::sleep(POLL);
    }
    for c in conns {
        if !c.handle.is_finished() {
            let _ = c.watch.shutdown(Shutdown::Both);
        }
        let _ = c.handle.join();
    }
    flush_all(&exports)
}

/// Hangs up on clients past the handshake limit; their threads then end on a failed read.
fn cut_stalled_handshakes(conns: &[Running]) {
    let now = Instant::now();
    for c in conns {
        if now > c.deadline && !c.negotiated.load(Ordering::Relaxed) {
            let _ = c.watch.shutdown(Shutdown::Both);
        }
    }
}

fn check_exports(exports: &[Export]) -> Result<(), NbdError> {
    if exports.is_empty() {
        return Err(NbdError::NoExports);
    }
    for (i, e) in exports.iter().enumerate() {
        if e.name.len() > proto::MAX_STRING {
            return Err(NbdError::NameTooLong(e.name.clone()));
        }
        if exports[..i].iter().any(|o| o.name == e.name) {
            return Err(NbdError::DuplicateExport(e.name.clone()));
        }
    }
    Ok(())
}

fn flush_all(exports: &[Export]) -> Result<(), NbdError> {
    let mut first = Ok(());
    for e in exports {
        if let Err(source) = e.device.flush() {
            if first.is_ok() {
                first = Err(NbdError::Flush {
                    export: e.name.clone(),
                    source,
                });
            }
        }
    }
    first
}

fn accept(listener: &Listener) -> io::Result<Stream> {
    let stream = match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept()?;
            // Replies are written whole; Nagle would only delay the small ones.
            s.set_nodelay(true)?;
            Stream::Tcp(s)
        }
        Listener::Unix(l) => Stream::Unix(l.accept()?.0),
    };
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn start_connection(
    stream: Stream,
    exports: &Arc<[Export]>,
    maps: &Arc<[AllocMap]>,
    tls: &Option<TlsConfig>,
) -> Option<Running> {
    let watch = stream.try_clone().ok()?;
    let exports = Arc::clone(exports);
    let maps = Arc::clone(maps);
    let tls = tls.clone();
    let negotiated = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&negotiated);
    let handle = thread::Builder::new()
        .name("nbd-conn".into())
        .spawn(move || {
            let conn = transmission::Connection {
                exports: &exports,
                maps: &maps,
                tls: tls.as_ref(),
                negotiated: &done,
            };
            // A failing connection only ends itself; there is no one to report to.
            let _ = conn.run(stream);
        })
        .ok()?;
    Some(Running {
        handle,
        watch,
        negotiated,
        deadline: Instant::now() + HANDSHAKE_LIMIT,
    })
}

/// A connected socket of either family.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Locks `m` even if a thread panicked while holding it: a panicking worker must not leave
/// every later request of the connection failing on a poisoned lock.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
