//! The transmission phase of one connection: a reader parses requests and hands them to a
//! few workers through a bounded queue; each reply goes out whole under the writer's lock,
//! so replies of concurrent requests never interleave on the socket.

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crate::allocation::{AllocMap, Limit, Seg};
use crate::handshake::{self, Outcome, Session};
use crate::proto::*;
use crate::tls::TlsConfig;
use crate::tls_stream;
use crate::transport::{Reader, Writer};
use crate::{lock, BlockDevice, Export, NbdError, Stream};

const WORKERS: usize = 4;
const QUEUE: usize = 16;
/// Payload bytes (write data received, read data to send) in flight per connection; bounds
/// memory to about this plus one maximal request.
const BUDGET: u64 = 64 << 20;
/// A client that stops reading replies for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Holes shorter than this are sent as zero data: a chunk header costs more than they save.
const MIN_HOLE_CHUNK: u64 = 4096;
/// Cap on block-status descriptors in one reply; the protocol lets us cover a prefix only.
const MAX_DESCRIPTORS: usize = 1 << 16;
/// Allocation granules (or map windows) one block status reply may look at; past that it
/// covers a prefix of the request, which NBD allows.
const MAX_STATUS_PIECES: usize = 1024;
/// Read buffer per connection: one 256 KiB read takes in many small requests at once.
const READ_BUFFER: usize = 256 << 10;
/// Reads up to this size are read whole, without asking the device where its holes are.
const SMALL_READ: u64 = 64 << 10;

struct Request {
    flags: u16,
    cmd: u16,
    handle: u64,
    offset: u64,
    len: u32,
}

struct Job {
    req: Request,
    data: Vec<u8>,
    cost: u64,
}

struct Conn<'a> {
    device: &'a dyn BlockDevice,
    /// The export's allocation map cache (shared with its other connections).
    maps: &'a AllocMap,
    structured: bool,
    allocation: bool,
    writer: Mutex<Writer>,
    /// The socket under `writer`, to hang up on a client that cannot take its replies.
    closer: &'a Stream,
    budget: Budget,
    /// Set once a reply could not be written: the client is gone or stuck, so queued work
    /// is dropped instead of each reply waiting out the write timeout in turn.
    dead: AtomicBool,
}

/// What one connection's thread serves, and where it reports the end of its handshake.
pub(crate) struct Connection<'a> {
    pub exports: &'a [Export],
    pub maps: &'a [AllocMap],
    pub tls: Option<&'a TlsConfig>,
    /// Set once the client picked an export: the handshake limit no longer applies.
    pub negotiated: &'a AtomicBool,
}

impl Connection<'_> {
    pub(crate) fn run(&self, stream: Stream) -> Result<(), NbdError> {
        // Socket options belong to the socket, so every clone and the TLS halves share them.
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let closer = stream.try_clone()?;
        let result = self.negotiate_and_transmit(&stream, &closer);
        let _ = closer.shutdown(Shutdown::Both);
        result
    }

    fn negotiate_and_transmit(&self, stream: &Stream, closer: &Stream) -> Result<(), NbdError> {
        let plain = Reader::Plain(stream.try_clone()?);
        let mut reader = BufReader::with_capacity(READ_BUFFER, plain);
        let mut writer = Writer::Plain(stream.try_clone()?);
        let mut st = handshake::greet(&mut reader, &mut writer, self.exports, self.tls.is_some())?;
        loop {
            match handshake::haggle(&mut reader, &mut writer, &mut st)? {
                Outcome::Abort => {
                    writer.finish();
                    return Ok(());
                }
                Outcome::Transmit(session) => {
                    self.negotiated.store(true, Ordering::Relaxed);
                    return transmit(reader, writer, closer, self.exports, self.maps, session);
                }
                Outcome::StartTls => {
                    let Some(config) = self.tls else {
                        return Err(NbdError::Protocol("STARTTLS accepted without TLS"));
                    };
                    // The client must wait for our ACK before its TLS hello; bytes already
                    // here were sent in the clear and cannot belong to the TLS session.
                    if !reader.buffer().is_empty() {
                        return Err(NbdError::Protocol("data after STARTTLS before its reply"));
                    }
                    let (r, w) = tls_stream::accept(stream, config)?;
                    reader = BufReader::with_capacity(READ_BUFFER, Reader::Tls(r));
                    writer = Writer::Tls(w);
                    st.tls_started();
                }
            }
        }
    }
}

fn transmit(
    mut reader: BufReader<Reader>,
    writer: Writer,
    closer: &Stream,
    exports: &[Export],
    maps: &[AllocMap],
    session: Session,
) -> Result<(), NbdError> {
    let device = exports[session.export].device.as_ref();
    let conn = Conn {
        device,
        maps: &maps[session.export],
        structured: session.structured,
        allocation: session.allocation,
        writer: Mutex::new(writer),
        closer,
        budget: Budget::new(BUDGET),
        dead: AtomicBool::new(false),
    };
    let (tx, rx) = sync_channel::<Job>(QUEUE);
    let rx = Mutex::new(rx);
    let result = thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| worker(&conn, &rx));
        }
        // Dropping the sender when the loop ends lets the workers drain the queue and exit.
        request_loop(&mut reader, &conn, tx)
    });
    // Whatever the client did not flush is made durable when it leaves.
    let _ = device.flush();
    lock(&conn.writer).finish();
    result
}

fn request_loop(
    r: &mut BufReader<Reader>,
    conn: &Conn,
    tx: SyncSender<Job>,
) -> Result<(), NbdError> {
    loop {
        let mut h = [0u8; 28];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if u32::from_be_bytes([h[0], h[1], h[2], h[3]]) != REQUEST_MAGIC {
            return Err(NbdError::Protocol("bad request magic"));
        }
        let req = Request {
            flags: u16::from_be_bytes([h[4], h[5]]),
            cmd: u16::from_be_bytes([h[6], h[7]]),
            handle: u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
            offset: u64::from_be_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]),
            len: u32::from_be_bytes([h[24], h[25], h[26], h[27]]),
        };
        if req.cmd == CMD_DISC {
            return Ok(());
        }
        let mut data = Vec::new();
        let mut cost = 0;
        if req.cmd == CMD_WRITE {
            if req.len > MAX_PAYLOAD {
                // Skipping up to 4 GiB of payload is not worth it: refuse and hang up.
                conn.reply_error(&req, EINVAL, "write larger than 32 MiB");
                return Err(NbdError::Protocol("oversized write"));
            }
            cost = conn.budget.acquire(u64::from(req.len));
            data = vec![0u8; req.len as usize];
            r.read_exact(&mut data)?;
        }
        if let Err((errno, msg)) = conn.check(&req) {
            conn.budget.release(cost);
            conn.reply_error(&req, errno, msg);
            continue;
        }
        if req.cmd == CMD_BLOCK_STATUS && conn.block_status_inline(&req) {
            continue;
        }
        if req.cmd == CMD_READ {
            cost = conn.budget.acquire(u64::from(req.len));
        }
        if tx.send(Job { req, data, cost }).is_err() {
            return Err(NbdError::Protocol("workers gone"));
        }
    }
}

fn worker(conn: &Conn, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match lock(rx).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        if !conn.dead.load(Ordering::Relaxed) {
            conn.execute(&job);
        }
        conn.budget.release(job.cost);
    }
}

impl Conn<'_> {
    /// Validation that needs no device I/O: flags, range, read-only, negotiated features.
    fn check(&self, req: &Request) -> Result<(), (u32, &'static str)> {
        if req.flags & !CMD_FLAGS_KNOWN != 0 {
            return Err((EINVAL, "unknown command flags"));
        }
        let writes = matches!(req.cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        match req.cmd {
            CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS => {}
            CMD_FLUSH => return Ok(()),
            _ => return Err((EINVAL, "unknown command")),
        }
        if writes && self.device.read_only() {
            return Err((EPERM, "export is read-only"));
        }
        if req.cmd == CMD_READ && req.len > MAX_PAYLOAD {
            return Err((EINVAL, "read larger than 32 MiB"));
        }
        if req.cmd == CMD_BLOCK_STATUS {
            if !self.allocation {
                return Err((EINVAL, "no metadata context negotiated"));
            }
            if req.len == 0 {
                return Err((EINVAL, "empty block status request"));
            }
        }
        match req.offset.checked_add(u64::from(req.len)) {
            Some(end) if end <= self.device.size() => Ok(()),
            _ => Err((EINVAL, "request beyond the end of the export")),
        }
    }

    fn execute(&self, job: &Job) {
        let req = &job.req;
        let dev = self.device;
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let result = match req.cmd {
            CMD_READ => return self.read(req),
            CMD_BLOCK_STATUS => return self.block_status(req),
            CMD_WRITE => dev.write(req.offset, &job.data),
            CMD_FLUSH => dev.flush(),
            CMD_TRIM => dev.trim(req.offset, u64::from(req.len)),
            CMD_WRITE_ZEROES => dev.write_zeroes(req.offset, u64::from(req.len)),
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        };
        if matches!(req.cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) {
            // Even a failed write may have changed part of the range.
            self.maps.forget(req.offset, u64::from(req.len));
        }
        // FUA: the reply promises durability, so it waits for the flush.
        let result = result.and_then(|()| if fua { dev.flush() } else { Ok(()) });
        match result {
            Ok(()) => self.send(&[&simple_header(req.handle, 0)]),
            Err(e) => self.reply_io_error(req, &e),
        }
    }

    fn read(&self, req: &Request) {
        let len = u64::from(req.len);
        if len == 0 {
            return self.reply_empty(req);
        }
        let whole = || {
            vec![Seg {
                offset: req.offset,
                len,
                data: true,
            }]
        };
        // Allocation info only saves work, so it is not asked for where it cannot: small reads
        // (asking costs about what reading a hole does, and for a migration destination it
        // would mean a second trip to the source) and replies that cannot show holes.
        let ask = self.structured && req.flags & CMD_FLAG_DF == 0 && len > SMALL_READ;
        let segs = match ask {
            true => self
                .maps
                .segments(self.device, req.offset, len, Limit::ALL)
                .unwrap_or_else(|_| whole()),
            false => whole(),
        };
        let mut buf = vec![0u8; req.len as usize];
        for s in segs.iter().filter(|s| s.data) {
            let at = (s.offset - req.offset) as usize;
            if let Err(e) = self
                .device
                .read(s.offset, &mut buf[at..at + s.len as usize])
            {
                return self.reply_io_error(req, &e);
            }
        }
        if !self.structured {
            return self.send(&[&simple_header(req.handle, 0), &buf]);
        }
        let chunks = if req.flags & CMD_FLAG_DF != 0 {
            whole()
        } else {
            absorb_small_holes(segs)
        };
        self.send_read_chunks(req, &chunks, &buf);
    }

    fn send_read_chunks(&self, req: &Request, chunks: &[Seg], buf: &[u8]) {
        let mut headers = Vec::with_capacity(chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            let flags = if i + 1 == chunks.len() {
                REPLY_FLAG_DONE
            } else {
                0
            };
            let h = if c.data {
                let mut h =
                    chunk_header(req.handle, flags, REPLY_TYPE_OFFSET_DATA, 8 + c.len as u32);
                h.extend_from_slice(&c.offset.to_be_bytes());
                h
            } else {
                let mut h = chunk_header(req.handle, flags, REPLY_TYPE_OFFSET_HOLE, 12);
                h.extend_from_slice(&c.offset.to_be_bytes());
                h.extend_from_slice(&(c.len as u32).to_be_bytes());
                h
            };
            headers.push(h);
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(chunks.len() * 2);
        for (c, h) in chunks.iter().zip(&headers) {
            parts.push(h);
            if c.data {
                let at = (c.offset - req.offset) as usize;
                parts.push(&buf[at..at + c.len as usize]);
            }
        }
        self.send(&parts);
    }

    /// Answers block status on the reader's thread when the cached map can: QEMU asks one
    /// extent at a time and waits for each answer, so handing the request to a worker and
    /// back would cost more than the answer. Returns false when it needs the device's map.
    fn block_status_inline(&self, req: &Request) -> bool {
        let cached = self.maps.cached_segments(
            self.device,
            req.offset,
            u64::from(req.len),
            status_limit(req),
        );
        match cached {
            Some(segs) => self.send_block_status(req, &segs),
            None => return false,
        }
        true
    }

    fn block_status(&self, req: &Request) {
        let segs = match self.maps.segments(
            self.device,
            req.offset,
            u64::from(req.len),
            status_limit(req),
        ) {
            Ok(segs) => segs,
            Err(e) => return self.reply_io_error(req, &e),
        };
        self.send_block_status(req, &segs);
    }

    fn send_block_status(&self, req: &Request, segs: &[Seg]) {
        let mut body = Vec::with_capacity(4 + 8 * segs.len());
        body.extend_from_slice(&META_ID_ALLOCATION.to_be_bytes());
        for s in segs {
            // Every segment lies inside a request of u32 length, so it fits.
            body.extend_from_slice(&(s.len as u32).to_be_bytes());
            let state = if s.data { 0 } else { STATE_HOLE | STATE_ZERO };
            body.extend_from_slice(&state.to_be_bytes());
        }
        let h = chunk_header(
            req.handle,
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            body.len() as u32,
        );
        self.send(&[&h, &body]);
    }

    fn reply_empty(&self, req: &Request) {
        if self.structured {
            self.send(&[&chunk_header(
                req.handle,
                REPLY_FLAG_DONE,
                REPLY_TYPE_NONE,
                0,
            )]);
        } else {
            self.send(&[&simple_header(req.handle, 0)]);
        }
    }

    fn reply_io_error(&self, req: &Request, err: &io::Error) {
        let msg = err.to_string();
        self.reply_error(req, errno_for(err), &msg);
    }

    /// Structured sessions get an error chunk with a message, others the bare errno.
    fn reply_error(&self, req: &Request, errno: u32, msg: &str) {
        if !self.structured {
            return self.send(&[&simple_header(req.handle, errno)]);
        }
        let msg = &msg.as_bytes()[..msg.len().min(1024)];
        let mut body = Vec::with_capacity(6 + msg.len());
        body.extend_from_slice(&errno.to_be_bytes());
        body.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        body.extend_from_slice(msg);
        let h = chunk_header(
            req.handle,
            REPLY_FLAG_DONE,
            REPLY_TYPE_ERROR,
            body.len() as u32,
        );
        self.send(&[&h, &body]);
    }

    /// Writes one whole reply. A failed write means the client is gone or stuck: close the
    /// socket so the reader stops too.
    fn send(&self, parts: &[&[u8]]) {
        if self.dead.load(Ordering::Relaxed) {
            return;
        }
        let mut w = lock(&self.writer);
        if write_all_vectored(&mut *w, parts).is_err() {
            self.dead.store(true, Ordering::Relaxed);
            let _ = self.closer.shutdown(Shutdown::Both);
        }
    }
}

/// With REQ_ONE one extent, else as many as fit the cap; either way the walk stops there, so
/// a request reaching to the end of the export costs what the reply covers.
fn status_limit(req: &Request) -> Limit {
    Limit {
        segments: if req.flags & CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_DESCRIPTORS
        },
        pieces: MAX_STATUS_PIECES,
    }
}

fn simple_header(handle: u64, errno: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h.extend_from_slice(&errno.to_be_bytes());
    h.extend_from_slice(&handle.to_be_bytes());
    h
}

fn write_all_vectored(w: &mut impl Write, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Turns holes shorter than `MIN_HOLE_CHUNK` into data (the buffer already holds zeros there).
fn absorb_small_holes(segs: Vec<Seg>) -> Vec<Seg> {
    let mut out: Vec<Seg> = Vec::with_capacity(segs.len());
    for mut s in segs {
        if !s.data && s.len < MIN_HOLE_CHUNK {
            s.data = true;
        }
        match out.last_mut() {
            Some(last) if last.data == s.data => last.len += s.len,
            _ => out.push(s),
        }
    }
    out
}

/// Counts payload bytes in flight. A request larger than the whole budget waits for an
/// empty pipeline and then takes all of it, so it can never wait forever.
struct Budget {
    avail: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    fn new(total: u64) -> Budget {
        Budget {
            avail: Mutex::new(total),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self, want: u64) -> u64 {
        let want = want.min(BUDGET);
        let mut avail = lock(&self.avail);
        while *avail < want {
            avail = self.freed.wait(avail).unwrap_or_else(|e| e.into_inner());
        }
        *avail -= want;
        want
    }

    fn release(&self, n: u64) {
        if n > 0 {
            *lock(&self.avail) += n;
            self.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(offset: u64, len: u64, data: bool) -> Seg {
        Seg { offset, len, data }
    }

    #[test]
    fn small_holes_become_data() {
        let s = vec![
            seg(0, 4096, true),
            seg(4096, 512, false),
            seg(4608, 8192, true),
            seg(12800, 8192, false),
        ];
        assert_eq!(
            absorb_small_holes(s),
            vec![seg(0, 12800, true), seg(12800, 8192, false)]
        );
    }

    #[test]
    fn budget_blocks_until_released() {
        let b = std::sync::Arc::new(Budget::new(BUDGET));
        assert_eq!(
            b.acquire(BUDGET * 2),
            BUDGET,
            "oversized requests take the whole budget"
        );
        let b2 = std::sync::Arc::clone(&b);
        let t = thread::spawn(move || b2.acquire(10));
        thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "must wait while the budget is used up");
        b.release(BUDGET);
        assert_eq!(t.join().expect("thread"), 10);
    }
}
