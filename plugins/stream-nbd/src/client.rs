//! The NBD client protocol over any `Read + Write` (doc/proto.md of NetworkBlockDevice/nbd):
//! fixed newstyle negotiation with OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT
//! `base:allocation` and OPT_GO (OPT_EXPORT_NAME for servers without it), then READ and
//! BLOCK_STATUS, one request at a time.
//!
//! Everything the server sends is checked before use: lengths are capped, every byte of a
//! READ must be covered exactly once, chunks must lie inside the request. A server that
//! breaks the protocol gets a `Protocol` error, never a panic or a huge allocation; the
//! connection is then unusable (the caller drops it).

use std::io::{self, Read, Write};

// The constants and layouts are the ones our server (`rbdm-nbd`) speaks.
use rbdm_nbd::proto::*;

/// Largest READ we send; servers commonly refuse more than 32 MiB.
pub const MAX_READ: u32 = 32 << 20;
/// Largest BLOCK_STATUS range we ask about at once.
const MAX_STATUS: u32 = 1 << 31;
/// Option replies and non-data reply chunks beyond this are a protocol violation.
const MAX_SMALL: u32 = 64 << 10;
/// Block status chunks: up to a million extents.
const MAX_STATUS_CHUNK: u32 = 8 << 20;
/// Error chunks tolerated in one reply before calling the server broken.
const MAX_ERRORS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The connection failed; a new one may work.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The server broke the protocol; the connection is unusable.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server reported an error for a request; the connection is still fine.
    #[error("server error {}: {msg}", errno_name(*.errno))]
    Server { errno: u32, msg: String },
    #[error("export {0:?} not found on the server")]
    NoExport(String),
    #[error("{0}")]
    Unsupported(String),
    /// The server refused the export during negotiation (policy, TLS required, ...).
    #[error("{0}")]
    Refused(String),
}

type R<T> = Result<T, NbdError>;

fn protocol<T>(msg: impl Into<String>) -> R<T> {
    Err(NbdError::Protocol(msg.into()))
}

fn errno_name(e: u32) -> String {
    let name = match e {
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EOVERFLOW => "EOVERFLOW",
        ENOTSUP => "ENOTSUP",
        ESHUTDOWN => "ESHUTDOWN",
        _ => "errno",
    };
    format!("{name} ({e})")
}

/// An allocation run reported by BLOCK_STATUS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub offset: u64,
    pub len: u64,
    /// Reads as zeros.
    pub zero: bool,
}

/// A negotiated connection in the transmission phase.
pub struct Client<S: Read + Write> {
    s: S,
    size: u64,
    structured: bool,
    meta_id: Option<u32>,
    max_read: u32,
    next_handle: u64,
    broken: bool,
}

impl<S: Read + Write> Client<S> {
    /// Negotiates `export` on a fresh connection.
    pub fn handshake(mut s: S, export: &str) -> R<Self> {
        if export.len() > 4096 {
            return Err(NbdError::Unsupported(
                "export name longer than 4096 bytes".into(),
            ));
        }
        match read_u64(&mut s)? {
            NBDMAGIC => {}
            _ => return protocol("not an NBD server (no NBDMAGIC)"),
        }
        match read_u64(&mut s)? {
            IHAVEOPT => {}
            OLDSTYLE_MAGIC => {
                return Err(NbdError::Unsupported(
                    "oldstyle negotiation is not supported".into(),
                ))
            }
            m => return protocol(format!("unknown negotiation magic {m:#x}")),
        }
        let server_flags = read_u16(&mut s)?;
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(NbdError::Unsupported(
                "server does not speak fixed newstyle negotiation".into(),
            ));
        }
        let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
        let client_flags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
        s.write_all(&client_flags.to_be_bytes())?;
        let mut c = Client {
            s,
            size: 0,
            structured: false,
            meta_id: None,
            max_read: MAX_READ,
            next_handle: 1,
            broken: false,
        };
        c.structured = c.opt_structured_reply()?;
        if c.structured {
            c.meta_id = c.opt_set_meta_context(export)?;
        }
        if !c.opt_go(export)? {
            c.opt_export_name(export, no_zeroes)?;
        }
        Ok(c)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &S {
        &self.s
    }

    /// Whether BLOCK_STATUS for `base:allocation` was negotiated.
    pub fn knows_allocation(&self) -> bool {
        self.meta_id.is_some()
    }

    /// Whether the connection can still be used.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn send_option(&mut self, opt: u32, data: &[u8]) -> R<()> {
        let mut msg = Vec::with_capacity(16 + data.len());
        put_option(&mut msg, opt, data);
        self.s.write_all(&msg)?;
        self.s.flush()?;
        Ok(())
    }

    /// One option reply: (type, data).
    fn option_reply(&mut self, opt: u32) -> R<(u32, Vec<u8>)> {
        if read_u64(&mut self.s)? != OPTION_REPLY_MAGIC {
            return protocol("bad option reply magic");
        }
        let got = read_u32(&mut self.s)?;
        if got != opt {
            return protocol(format!("reply for option {got} to option {opt}"));
        }
        let kind = read_u32(&mut self.s)?;
        let len = read_u32(&mut self.s)?;
        if len > MAX_SMALL {
            return protocol(format!("option reply of {len} bytes"));
        }
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data)?;
        Ok((kind, data))
    }

    fn opt_structured_reply(&mut self) -> R<bool> {
        self.send_option(OPT_STRUCTURED_REPLY, &[])?;
        match self.option_reply(OPT_STRUCTURED_REPLY)? {
            (REP_ACK, _) => Ok(true),
            (k, _) if k & REP_FLAG_ERROR != 0 => Ok(false),
            (k, _) => protocol(format!("unexpected reply {k} to STRUCTURED_REPLY")),
        }
    }

    /// Asks for `base:allocation`; `None` when the server does not offer it.
    fn opt_set_meta_context(&mut self, export: &str) -> R<Option<u32>> {
        let mut data = Vec::new();
        put_string32(&mut data, export.as_bytes());
        data.extend_from_slice(&1u32.to_be_bytes());
        put_string32(&mut data, META_BASE_ALLOCATION.as_bytes());
        self.send_option(OPT_SET_META_CONTEXT, &data)?;
        let mut id = None;
        loop {
            match self.option_reply(OPT_SET_META_CONTEXT)? {
                (REP_ACK, _) => return Ok(id),
                (REP_META_CONTEXT, d) if d.len() >= 4 => {
                    if &d[4..] == META_BASE_ALLOCATION.as_bytes() {
                        id = Some(u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
                    }
                }
                (k, _) if k & REP_FLAG_ERROR != 0 => return Ok(None),
                (k, _) => return protocol(format!("unexpected reply {k} to SET_META_CONTEXT")),
            }
        }
    }

    /// OPT_GO; `Ok(false)` when the server does not know it (then OPT_EXPORT_NAME).
    fn opt_go(&mut self, export: &str) -> R<bool> {
        let mut data = Vec::new();
        put_string32(&mut data, export.as_bytes());
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.send_option(OPT_GO, &data)?;
        let mut have_size = false;
        loop {
            let (kind, d) = self.option_reply(OPT_GO)?;
            match kind {
                REP_ACK if have_size => return Ok(true),
                REP_ACK => return protocol("OPT_GO acknowledged without export information"),
                REP_INFO => have_size |= self.info(&d)?,
                REP_ERR_UNSUP => return Ok(false),
                REP_ERR_UNKNOWN => return Err(NbdError::NoExport(export.to_string())),
                k if k & REP_FLAG_ERROR != 0 => {
                    let msg = String::from_utf8_lossy(&d).into_owned();
                    return Err(NbdError::Refused(format!(
                        "export {export:?} refused (reply {k:#x}): {msg}"
                    )));
                }
                k => return protocol(format!("unexpected reply {k} to OPT_GO")),
            }
        }
    }

    /// Takes what an NBD_REP_INFO says; `true` if it gave the export size.
    fn info(&mut self, d: &[u8]) -> R<bool> {
        if d.len() < 2 {
            return protocol("short NBD_REP_INFO");
        }
        match u16::from_be_bytes([d[0], d[1]]) {
            INFO_EXPORT if d.len() == 12 => {
                self.size = be64(&d[2..10]);
                Ok(true)
            }
            INFO_EXPORT => protocol("NBD_INFO_EXPORT of the wrong length"),
            INFO_BLOCK_SIZE if d.len() == 14 => {
                let max = be32(&d[10..14]);
                // A maximum below 4 KiB is not useful and probably bogus; ignore it.
                if max >= 4096 {
                    self.max_read = max.min(MAX_READ);
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    fn opt_export_name(&mut self, export: &str, no_zeroes: bool) -> R<()> {
        self.send_option(OPT_EXPORT_NAME, export.as_bytes())?;
        let mut head = [0u8; 10];
        match self.s.read_exact(&mut head) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(NbdError::NoExport(export.to_string()))
            }
            r => r?,
        }
        self.size = be64(&head[..8]);
        if !no_zeroes {
            let mut zeroes = [0u8; 124];
            self.s.read_exact(&mut zeroes)?;
        }
        Ok(())
    }

    fn send_request(&mut self, kind: u16, offset: u64, len: u32) -> R<u64> {
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        self.s
            .write_all(&request_header(0, kind, handle, offset, len))?;
        self.s.flush()?;
        Ok(handle)
    }

    /// Runs `f`, marking the connection broken unless the failure left it in step.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> R<T>) -> R<T> {
        if self.broken {
            return Err(NbdError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection already failed",
            )));
        }
        let r = f(self);
        if matches!(r, Err(NbdError::Io(_)) | Err(NbdError::Protocol(_))) {
            self.broken = true;
        }
        r
    }

    /// Fills `buf` from `offset`, in requests of at most the server's maximum.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> R<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(NbdError::Unsupported(format!(
                "read of {} bytes at {offset} is past the end",
                buf.len()
            )));
        }
        let step = self.max_read as usize;
        let mut done = 0;
        while done < buf.len() {
            let n = step.min(buf.len() - done);
            let part = &mut buf[done..done + n];
            self.guarded(|c| c.read_one(offset + done as u64, part))?;
            done += n;
        }
        Ok(())
    }

    fn read_one(&mut self, offset: u64, buf: &mut [u8]) -> R<()> {
        let handle = self.send_request(CMD_READ, offset, buf.len() as u32)?;
        let magic = read_u32(&mut self.s)?;
        if magic == SIMPLE_REPLY_MAGIC {
            let errno = self.simple_reply(handle)?;
            if errno != 0 {
                return Err(NbdError::Server {
                    errno,
                    msg: format!("read of {} bytes at {offset}", buf.len()),
                });
            }
            self.s.read_exact(buf)?;
            return Ok(());
        }
        if magic != STRUCTURED_REPLY_MAGIC || !self.structured {
            return protocol(format!("bad reply magic {magic:#x}"));
        }
        let len = buf.len() as u64;
        let mut covered: Vec<(u64, u64)> = Vec::new();
        let mut total = 0u64;
        self.structured_reply(handle, magic, "READ", |c, h| {
            match h.kind {
                REPLY_TYPE_OFFSET_DATA => {
                    if h.len < 9 || u64::from(h.len) > len + 8 {
                        return protocol(format!("OFFSET_DATA chunk of {} bytes", h.len));
                    }
                    let (at, n) = (c.chunk_offset(offset, len)?, u64::from(h.len) - 8);
                    claim(&mut covered, &mut total, at, n, len)?;
                    c.s.read_exact(&mut buf[at as usize..(at + n) as usize])?;
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    if h.len != 12 {
                        return protocol(format!("OFFSET_HOLE chunk of {} bytes", h.len));
                    }
                    let at = c.chunk_offset(offset, len)?;
                    let n = u64::from(read_u32(&mut c.s)?);
                    claim(&mut covered, &mut total, at, n, len)?;
                    buf[at as usize..(at + n) as usize].fill(0);
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        // Chunks never overlap (`claim` checks), so full coverage is a byte count.
        if total != len {
            return protocol(format!("READ reply covered {total} of {len} bytes"));
        }
        Ok(())
    }

    /// The rest of a simple reply after its magic: checks the handle, returns the errno.
    fn simple_reply(&mut self, handle: u64) -> R<u32> {
        let errno = read_u32(&mut self.s)?;
        check_handle(read_u64(&mut self.s)?, handle)?;
        Ok(errno)
    }

    /// Reads the chunks of one structured reply, up to the one flagged DONE; `magic` is the
    /// already-read magic of the first. `take` reads the payload of each chunk type the
    /// command expects and answers `false` for any other type. Error chunks are collected
    /// here; the first one fails the request once the whole reply is read, so the connection
    /// stays in step.
    fn structured_reply(
        &mut self,
        handle: u64,
        magic: u32,
        command: &str,
        mut take: impl FnMut(&mut Self, &ChunkHeader) -> R<bool>,
    ) -> R<()> {
        let mut errors = Vec::new();
        let mut first = Some(magic);
        loop {
            let h = self.chunk_header(handle, &mut first)?;
            match h.kind {
                k if k & REPLY_TYPE_ERROR_BIT != 0 => {
                    errors.push(self.error_chunk(k, h.len)?);
                    if errors.len() > MAX_ERRORS {
                        return protocol("too many error chunks");
                    }
                }
                REPLY_TYPE_NONE if h.len == 0 && h.done => {}
                k => {
                    if !take(self, &h)? {
                        return protocol(format!(
                            "unexpected chunk type {k} ({} bytes) in a {command} reply",
                            h.len
                        ));
                    }
                }
            }
            if h.done {
                break;
            }
        }
        match errors.into_iter().next() {
            Some((errno, msg)) => Err(NbdError::Server { errno, msg }),
            None => Ok(()),
        }
    }

    /// The offset field of a data or hole chunk, as a position inside the request.
    fn chunk_offset(&mut self, req_offset: u64, len: u64) -> R<u64> {
        let at = read_u64(&mut self.s)?;
        match at.checked_sub(req_offset) {
            Some(rel) if rel < len => Ok(rel),
            _ => protocol(format!(
                "chunk offset {at} outside the request at {req_offset}"
            )),
        }
    }

    /// A structured chunk's header; `magic` is the already-read magic of the first chunk.
    fn chunk_header(&mut self, handle: u64, magic: &mut Option<u32>) -> R<ChunkHeader> {
        let m = match magic.take() {
            Some(m) => m,
            None => read_u32(&mut self.s)?,
        };
        if m != STRUCTURED_REPLY_MAGIC {
            return protocol(format!("bad chunk magic {m:#x}"));
        }
        let flags = read_u16(&mut self.s)?;
        let kind = read_u16(&mut self.s)?;
        check_handle(read_u64(&mut self.s)?, handle)?;
        let len = read_u32(&mut self.s)?;
        Ok(ChunkHeader {
            done: flags & REPLY_FLAG_DONE != 0,
            kind,
            len,
        })
    }

    /// An error chunk's errno and message (the rest of its payload is skipped).
    fn error_chunk(&mut self, kind: u16, len: u32) -> R<(u32, String)> {
        if !(6..=MAX_SMALL).contains(&len) {
            return protocol(format!("error chunk of {len} bytes"));
        }
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d)?;
        let errno = be32(&d[0..4]);
        let msg_len = usize::from(u16::from_be_bytes([d[4], d[5]]));
        let Some(msg) = d.get(6..6 + msg_len) else {
            return protocol("error message longer than its chunk");
        };
        let mut msg = String::from_utf8_lossy(msg).into_owned();
        if kind == REPLY_TYPE_ERROR_OFFSET {
            if let Some(at) = d.get(6 + msg_len..14 + msg_len) {
                msg = format!("{msg} (at offset {})", be64(at));
            }
        }
        if errno == 0 {
            return protocol("error chunk with errno 0");
        }
        Ok((errno, msg))
    }

    /// Allocation from `offset` on: sorted runs starting at `offset`, covering at least one
    /// byte and at most `len` (the server may answer less than asked).
    pub fn block_status(&mut self, offset: u64, len: u64) -> R<Vec<Run>> {
        let Some(id) = self.meta_id else {
            return Err(NbdError::Unsupported(
                "server does not report base:allocation".into(),
            ));
        };
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let ask = (end - offset).min(u64::from(MAX_STATUS)) as u32;
        self.guarded(|c| c.block_status_one(id, offset, ask))
    }

    fn block_status_one(&mut self, id: u32, offset: u64, ask: u32) -> R<Vec<Run>> {
        let handle = self.send_request(CMD_BLOCK_STATUS, offset, ask)?;
        let magic = read_u32(&mut self.s)?;
        if magic != STRUCTURED_REPLY_MAGIC {
            if magic == SIMPLE_REPLY_MAGIC {
                let errno = self.simple_reply(handle)?;
                if errno != 0 {
                    return Err(NbdError::Server {
                        errno,
                        msg: "block status".into(),
                    });
                }
            }
            return protocol(format!("bad reply magic {magic:#x} to BLOCK_STATUS"));
        }
        let end = offset + u64::from(ask);
        let mut runs: Vec<Run> = Vec::new();
        self.structured_reply(handle, magic, "BLOCK_STATUS", |c, h| {
            if h.kind != REPLY_TYPE_BLOCK_STATUS {
                return Ok(false);
            }
            if !runs.is_empty() {
                return protocol("more than one BLOCK_STATUS chunk for one context");
            }
            runs = c.status_chunk(id, h.len, offset, end)?;
            Ok(true)
        })?;
        if runs.is_empty() {
            return protocol("BLOCK_STATUS reply without extents");
        }
        Ok(runs)
    }

    fn status_chunk(&mut self, id: u32, len: u32, offset: u64, end: u64) -> R<Vec<Run>> {
        if !(12..=MAX_STATUS_CHUNK).contains(&len) || !(len - 4).is_multiple_of(8) {
            return protocol(format!("BLOCK_STATUS chunk of {len} bytes"));
        }
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d)?;
        if be32(&d[0..4]) != id {
            return protocol(format!(
                "BLOCK_STATUS for unknown context {}",
                be32(&d[0..4])
            ));
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut pos = offset;
        for desc in d[4..].chunks_exact(8) {
            let n = u64::from(be32(&desc[0..4]));
            if n == 0 {
                return protocol("zero-length extent");
            }
            if pos >= end {
                // Only the last extent may reach past the request.
                return protocol("extents beyond the requested range");
            }
            let zero = be32(&desc[4..8]) & STATE_ZERO != 0;
            let n = n.min(end - pos);
            match runs.last_mut() {
                Some(last) if last.zero == zero => last.len += n,
                _ => runs.push(Run {
                    offset: pos,
                    len: n,
                    zero,
                }),
            }
            pos += n;
        }
        Ok(runs)
    }
}

impl<S: Read + Write> Drop for Client<S> {
    /// Says goodbye so the server can close cleanly (qemu-nbd logs an error otherwise).
    fn drop(&mut self) {
        if !self.broken {
            let _ = self.send_request(CMD_DISC, 0, 0);
        }
    }
}

struct ChunkHeader {
    done: bool,
    kind: u16,
    len: u32,
}

/// Records that `[at, at+n)` of a `len`-byte request arrived, refusing overlaps.
fn claim(covered: &mut Vec<(u64, u64)>, total: &mut u64, at: u64, n: u64, len: u64) -> R<()> {
    if n == 0 || at.checked_add(n).is_none_or(|end| end > len) {
        return protocol(format!(
            "chunk of {n} bytes at {at} outside a {len}-byte request"
        ));
    }
    let i = covered.partition_point(|&(s, _)| s < at);
    let overlaps_prev = i > 0 && covered[i - 1].1 > at;
    let overlaps_next = i < covered.len() && covered[i].0 < at + n;
    if overlaps_prev || overlaps_next {
        return protocol(format!("chunk at {at} overlaps another"));
    }
    covered.insert(i, (at, at + n));
    *total += n;
    Ok(())
}

fn check_handle(got: u64, want: u64) -> R<()> {
    if got == want {
        Ok(())
    } else {
        protocol(format!("reply for handle {got} while waiting for {want}"))
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// A connection whose server side is a fixed byte string: what the fuzzer and the unit tests
/// drive the client with. What the client writes is discarded.
pub struct Replay<'a> {
    pub input: &'a [u8],
}

impl Read for Replay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Replay<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The fuzz entry point: negotiate, read 64 KiB at 0 and ask for allocation, all against
/// `input` as the server's side. Must never panic, whatever `input` is.
pub fn fuzz_client(input: &[u8]) {
    let Ok(mut c) = Client::handshake(Replay { input }, "disk") else {
        return;
    };
    let n = c.size().min(64 << 10) as usize;
    let mut buf = vec![0u8; n];
    let _ = c.read(0, &mut buf);
    let _ = c.block_status(0, 1 << 40);
}

/// Server-side byte strings for tests and fuzz seeds.
pub mod transcript {
    use super::*;

    /// A server's half of a fixed newstyle negotiation with structured replies, a
    /// `base:allocation` context (id 7) and OPT_GO for an export of `size` bytes.
    pub fn handshake(size: u64) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&NBDMAGIC.to_be_bytes());
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        put_option_reply(&mut out, OPT_STRUCTURED_REPLY, REP_ACK, &[]);
        let mut ctx = 7u32.to_be_bytes().to_vec();
        ctx.extend_from_slice(META_BASE_ALLOCATION.as_bytes());
        put_option_reply(&mut out, OPT_SET_META_CONTEXT, REP_META_CONTEXT, &ctx);
        put_option_reply(&mut out, OPT_SET_META_CONTEXT, REP_ACK, &[]);
        let mut info = INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&size.to_be_bytes());
        info.extend_from_slice(&1u16.to_be_bytes());
        put_option_reply(&mut out, OPT_GO, REP_INFO, &info);
        put_option_reply(&mut out, OPT_GO, REP_ACK, &[]);
        out
    }

    /// A structured reply chunk for request `handle`.
    pub fn chunk(out: &mut Vec<u8>, handle: u64, kind: u16, done: bool, payload: &[u8]) {
        let flags = if done { REPLY_FLAG_DONE } else { 0 };
        out.extend_from_slice(&chunk_header(handle, flags, kind, payload.len() as u32));
        out.extend_from_slice(payload);
    }

    pub fn data(offset: u64, bytes: &[u8]) -> Vec<u8> {
        let mut p = offset.to_be_bytes().to_vec();
        p.extend_from_slice(bytes);
        p
    }

    pub fn hole(offset: u64, len: u32) -> Vec<u8> {
        let mut p = offset.to_be_bytes().to_vec();
        p.extend_from_slice(&len.to_be_bytes());
        p
    }

    pub fn error(errno: u32, msg: &str) -> Vec<u8> {
        let mut p = errno.to_be_bytes().to_vec();
        p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        p.extend_from_slice(msg.as_bytes());
        p
    }

    /// `(length, flags)` descriptors for context 7.
    pub fn status(extents: &[(u32, u32)]) -> Vec<u8> {
        let mut p = 7u32.to_be_bytes().to_vec();
        for (len, flags) in extents {
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&flags.to_be_bytes());
        }
        p
    }

    pub const DATA: u16 = REPLY_TYPE_OFFSET_DATA;
    pub const HOLE: u16 = REPLY_TYPE_OFFSET_HOLE;
    pub const ERROR: u16 = REPLY_TYPE_ERROR;
    pub const STATUS: u16 = REPLY_TYPE_BLOCK_STATUS;
    pub const NONE: u16 = REPLY_TYPE_NONE;
}

#[cfg(test)]
mod tests {
    use super::transcript::*;
    use super::*;

    fn client(input: &[u8]) -> Client<Replay<'_>> {
        Client::handshake(Replay { input }, "disk").unwrap()
    }

    #[test]
    fn negotiates_and_reads_data_and_holes() {
        let mut t = handshake(1 << 20);
        chunk(&mut t, 1, DATA, false, &data(4096, b"abcd"));
        chunk(&mut t, 1, HOLE, false, &hole(4100, 6));
        chunk(&mut t, 1, DATA, true, &data(4106, b"xy"));
        chunk(
            &mut t,
            2,
            STATUS,
            true,
            &status(&[(4096, 0), (8192, 3), (1 << 20, 2)]),
        );
        let mut c = client(&t);
        assert_eq!(c.size(), 1 << 20);
        assert!(c.knows_allocation());
        let mut buf = [9u8; 12];
        c.read(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"abcd\0\0\0\0\0\0xy");
        let runs = c.block_status(0, 1 << 20).unwrap();
        assert_eq!(
            runs,
            vec![
                Run {
                    offset: 0,
                    len: 4096,
                    zero: false
                },
                Run {
                    offset: 4096,
                    len: (1 << 20) - 4096,
                    zero: true
                }
            ]
        );
    }

    #[test]
    fn server_errors_and_broken_replies() {
        // An error chunk: the request fails, the connection stays usable.
        let mut t = handshake(1 << 20);
        chunk(&mut t, 1, ERROR, true, &error(5, "disk on fire"));
        chunk(&mut t, 2, DATA, true, &data(0, b"ok"));
        let mut c = client(&t);
        let e = c.read(0, &mut [0u8; 4]).unwrap_err();
        assert!(
            matches!(e, NbdError::Server { errno: 5, .. })
                && e.to_string().contains("disk on fire"),
            "{e}"
        );
        assert!(!c.is_broken());
        let mut two = [0u8; 2];
        c.read(0, &mut two).unwrap();
        assert_eq!(&two, b"ok");

        let bad = |chunks: &[(u64, u16, bool, Vec<u8>)]| {
            let mut t = handshake(1 << 20);
            for (h, k, d, p) in chunks {
                chunk(&mut t, *h, *k, *d, p);
            }
            let mut c = Client::handshake(Replay { input: &t }, "disk").unwrap();
            let e = c.read(100, &mut [0u8; 8]).unwrap_err();
            assert!(c.is_broken(), "{e}");
            e
        };
        // Short coverage, overlap, outside the request, wrong handle, data past the chunk.
        assert!(matches!(
            bad(&[(1, DATA, true, data(100, b"1234"))]),
            NbdError::Protocol(_)
        ));
        assert!(matches!(
            bad(&[
                (1, DATA, false, data(100, b"1234")),
                (1, HOLE, true, hole(102, 6))
            ]),
            NbdError::Protocol(_)
        ));
        assert!(matches!(
            bad(&[(1, DATA, true, data(104, b"12345678"))]),
            NbdError::Protocol(_)
        ));
        assert!(matches!(
            bad(&[(1, DATA, true, data(99, b"12345678"))]),
            NbdError::Protocol(_)
        ));
        assert!(matches!(
            bad(&[(9, DATA, true, data(100, b"12345678"))]),
            NbdError::Protocol(_)
        ));
        assert!(matches!(
            bad(&[(1, HOLE, true, hole(100, 0))]),
            NbdError::Protocol(_)
        ));
        assert!(matches!(
            bad(&[(1, 77, true, vec![])]),
            NbdError::Protocol(_)
        ));
        // Truncated stream: an I/O error, not a panic.
        assert!(matches!(bad(&[]), NbdError::Io(_)));
    }

    #[test]
    fn refuses_unknown_exports_and_odd_servers() {
        let mut t = handshake(10);
        let go_at = t.len() - 2 * 20 - 12;
        t.truncate(go_at);
        put_option_reply(&mut t, OPT_GO, REP_ERR_UNKNOWN, &[]);
        assert!(matches!(
            Client::handshake(Replay { input: &t }, "disk"),
            Err(NbdError::NoExport(_))
        ));
        assert!(matches!(
            Client::handshake(
                Replay {
                    input: b"NBDMAGIC\0\0B\x02\x81\x86\x12\x53"
                },
                "x"
            ),
            Err(NbdError::Unsupported(_))
        ));
        assert!(matches!(
            Client::handshake(
                Replay {
                    input: b"HTTP/1.1 200 OK\r\n"
                },
                "x"
            ),
            Err(NbdError::Protocol(_))
        ));
        for cut in 0..handshake(10).len() {
            let t = handshake(10);
            assert!(Client::handshake(Replay { input: &t[..cut] }, "x").is_err());
        }
    }

    /// The fuzz seeds are whole, valid conversations, so the fuzzer starts deep in the parser.
    #[test]
    fn fuzz_seeds_are_valid_conversations() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/nbd_reply");
        let seed = |n: &str| std::fs::read(dir.join(n)).unwrap();
        let t = seed("structured");
        let mut c = client(&t);
        let mut buf = vec![0u8; 65536];
        c.read(0, &mut buf).unwrap();
        assert_eq!(buf[300], 44);
        assert!(buf[4096..].iter().all(|&b| b == 0));
        assert_eq!(c.block_status(0, 1 << 40).unwrap().len(), 2);
        let t = seed("errors");
        let mut c = client(&t);
        assert!(matches!(
            c.read(0, &mut buf),
            Err(NbdError::Server { errno: 5, .. })
        ));
        assert!(matches!(
            c.block_status(0, 1 << 40),
            Err(NbdError::Server { errno: 22, .. })
        ));
        let t = seed("simple_export_name");
        let mut c = client(&t);
        assert!(!c.knows_allocation());
        c.read(0, &mut [1u8; 300]).unwrap();
    }

    #[test]
    fn fuzz_entry_survives_junk() {
        fuzz_client(&[]);
        fuzz_client(&handshake(u64::MAX));
        let mut t = handshake(1 << 30);
        chunk(&mut t, 1, STATUS, true, &status(&[(1, 1)]));
        fuzz_client(&t);
    }
}
