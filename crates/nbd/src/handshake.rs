//! The fixed-newstyle handshake: greeting, client flags, then option haggling until the
//! client picks an export (EXPORT_NAME or GO), gives up, or asks for TLS (STARTTLS), after
//! which haggling goes on over TLS.

use std::io::{self, Read, Write};

use crate::proto::*;
use crate::{BlockDevice, Export, NbdError};

/// What the client negotiated, for the transmission phase.
pub(crate) struct Session {
    pub export: usize,
    pub structured: bool,
    /// `base:allocation` is selected, so BLOCK_STATUS is allowed.
    pub allocation: bool,
}

/// Where a connection stands with TLS ("FORCEDTLS" in the protocol's terms when configured).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// Not configured: STARTTLS is refused, everything else works in the clear.
    Off,
    /// Configured but not started: only STARTTLS and ABORT are answered.
    Required,
    /// Started: the rest of the session runs over TLS.
    Active,
}

/// The negotiation so far, kept across the switch to TLS.
pub(crate) struct State<'a> {
    exports: &'a [Export],
    no_zeroes: bool,
    tls: Tls,
    structured: bool,
    /// The export for which `base:allocation` was selected, if it was.
    meta_export: Option<usize>,
}

/// How option haggling ended.
pub(crate) enum Outcome {
    /// The client aborted cleanly.
    Abort,
    Transmit(Session),
    /// STARTTLS was acknowledged: the caller starts TLS on the socket, calls
    /// [`State::tls_started`] and haggles on over TLS.
    StartTls,
}

enum Next {
    Continue,
    Abort,
    StartTls,
    Transmit(usize),
}

impl State<'_> {
    /// Options negotiated in the clear could have been changed by anyone on the path, so
    /// nothing of them carries over (there are none when TLS is required, but be sure).
    pub(crate) fn tls_started(&mut self) {
        self.tls = Tls::Active;
        self.structured = false;
        self.meta_export = None;
    }
}

/// Sends the greeting and reads the client's flags. `tls_required`: the server has TLS
/// credentials and serves nothing before STARTTLS.
pub(crate) fn greet<'a, R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    exports: &'a [Export],
    tls_required: bool,
) -> Result<State<'a>, NbdError> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greeting)?;

    let client_flags = read_u32(r)?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol("unknown client flags"));
    }
    if client_flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Protocol("client does not speak fixed newstyle"));
    }
    Ok(State {
        exports,
        no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
        tls: if tls_required {
            Tls::Required
        } else {
            Tls::Off
        },
        structured: false,
        meta_export: None,
    })
}

/// Answers options until the client picks an export, aborts, or asks for TLS.
pub(crate) fn haggle<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    st: &mut State,
) -> Result<Outcome, NbdError> {
    loop {
        match one_option(r, w, st)? {
            Next::Continue => {}
            Next::Abort => return Ok(Outcome::Abort),
            Next::StartTls => return Ok(Outcome::StartTls),
            Next::Transmit(export) => {
                let allocation = st.structured && st.meta_export == Some(export);
                return Ok(Outcome::Transmit(Session {
                    export,
                    structured: st.structured,
                    allocation,
                }));
            }
        }
    }
}

fn one_option<R: Read, W: Write>(r: &mut R, w: &mut W, st: &mut State) -> Result<Next, NbdError> {
    if read_u64(r)? != IHAVEOPT {
        return Err(NbdError::Protocol("bad option magic"));
    }
    let opt = read_u32(r)?;
    let len = read_u32(r)?;
    if st.tls == Tls::Required && !matches!(opt, OPT_STARTTLS | OPT_ABORT) {
        return tls_required(r, w, opt, len);
    }
    if len > MAX_OPTION_LEN {
        if opt == OPT_EXPORT_NAME {
            return Err(NbdError::Protocol("export name too long"));
        }
        // Skip the payload through a small buffer: a 4 GiB length must not allocate 4 GiB.
        io::copy(&mut r.by_ref().take(u64::from(len)), &mut io::sink())?;
        reply_err(w, opt, REP_ERR_TOO_BIG, "option payload too large")?;
        return Ok(Next::Continue);
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data)?;

    match opt {
        OPT_EXPORT_NAME => export_name(w, st, &data),
        OPT_ABORT => {
            // The client may already have closed; a failed ACK changes nothing.
            let _ = reply(w, opt, REP_ACK, &[]);
            Ok(Next::Abort)
        }
        OPT_STARTTLS => start_tls(w, st, &data),
        OPT_LIST => {
            list(w, st, &data)?;
            Ok(Next::Continue)
        }
        OPT_INFO | OPT_GO => info_or_go(w, st, opt, &data),
        OPT_STRUCTURED_REPLY => {
            if data.is_empty() {
                st.structured = true;
                reply(w, opt, REP_ACK, &[])?;
            } else {
                reply_err(w, opt, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")?;
            }
            Ok(Next::Continue)
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            meta_context(w, st, opt, &data)?;
            Ok(Next::Continue)
        }
        _ => {
            reply_err(w, opt, REP_ERR_UNSUP, "option not supported")?;
            Ok(Next::Continue)
        }
    }
}

/// Any option but STARTTLS and ABORT before TLS is up: its payload is skipped unread (and
/// unbuffered: nothing from an unauthenticated client is kept).
fn tls_required<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    opt: u32,
    len: u32,
) -> Result<Next, NbdError> {
    if opt == OPT_EXPORT_NAME {
        // This option has no error reply: the only refusal is hanging up.
        return Err(NbdError::Protocol(
            "EXPORT_NAME before STARTTLS on a TLS server",
        ));
    }
    io::copy(&mut r.by_ref().take(u64::from(len)), &mut io::sink())?;
    reply_err(
        w,
        opt,
        REP_ERR_TLS_REQD,
        "this server requires TLS: send STARTTLS first",
    )?;
    Ok(Next::Continue)
}

fn start_tls<W: Write>(w: &mut W, st: &State, data: &[u8]) -> Result<Next, NbdError> {
    match st.tls {
        _ if !data.is_empty() => {
            reply_err(w, OPT_STARTTLS, REP_ERR_INVALID, "STARTTLS takes no data")?
        }
        Tls::Off => reply_err(w, OPT_STARTTLS, REP_ERR_POLICY, "TLS is not configured")?,
        Tls::Active => reply_err(w, OPT_STARTTLS, REP_ERR_INVALID, "TLS is already started")?,
        Tls::Required => {
            reply(w, OPT_STARTTLS, REP_ACK, &[])?;
            return Ok(Next::StartTls);
        }
    }
    Ok(Next::Continue)
}

fn export_name<W: Write>(w: &mut W, st: &State, name: &[u8]) -> Result<Next, NbdError> {
    // This option cannot carry an error: an unknown name ends the session.
    let idx = find_export(st.exports, name).ok_or(NbdError::Protocol("unknown export"))?;
    let dev = &st.exports[idx].device;
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&dev.size().to_be_bytes());
    out.extend_from_slice(&transmission_flags(dev.as_ref(), st.structured).to_be_bytes());
    if !st.no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    w.write_all(&out)?;
    Ok(Next::Transmit(idx))
}

fn list<W: Write>(w: &mut W, st: &State, data: &[u8]) -> io::Result<()> {
    if !data.is_empty() {
        return reply_err(w, OPT_LIST, REP_ERR_INVALID, "LIST takes no data");
    }
    for e in st.exports {
        let mut body = Vec::new();
        put_string32(&mut body, e.name.as_bytes());
        body.extend_from_slice(clip_string(&e.description).as_bytes());
        reply(w, OPT_LIST, REP_SERVER, &body)?;
    }
    reply(w, OPT_LIST, REP_ACK, &[])
}

fn info_or_go<W: Write>(w: &mut W, st: &State, opt: u32, data: &[u8]) -> Result<Next, NbdError> {
    let Some((name, requests)) = parse_info_request(data) else {
        reply_err(w, opt, REP_ERR_INVALID, "malformed INFO/GO request")?;
        return Ok(Next::Continue);
    };
    let Some(idx) = find_export(st.exports, name) else {
        let msg = format!("no export named {:?}", String::from_utf8_lossy(name));
        reply_err(w, opt, REP_ERR_UNKNOWN, clip_string(&msg))?;
        return Ok(Next::Continue);
    };
    let export = &st.exports[idx];
    for req in requests {
        let mut body = Vec::new();
        match req {
            INFO_NAME => {
                body.extend_from_slice(&INFO_NAME.to_be_bytes());
                body.extend_from_slice(export.name.as_bytes());
            }
            INFO_DESCRIPTION => {
                body.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
                body.extend_from_slice(clip_string(&export.description).as_bytes());
            }
            // EXPORT and BLOCK_SIZE are always sent below; others we do not know.
            _ => continue,
        }
        reply(w, opt, REP_INFO, &body)?;
    }
    let mut block = Vec::with_capacity(14);
    block.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    block.extend_from_slice(&1u32.to_be_bytes());
    block.extend_from_slice(&4096u32.to_be_bytes());
    block.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    reply(w, opt, REP_INFO, &block)?;

    let dev = export.device.as_ref();
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&dev.size().to_be_bytes());
    info.extend_from_slice(&transmission_flags(dev, st.structured).to_be_bytes());
    reply(w, opt, REP_INFO, &info)?;
    reply(w, opt, REP_ACK, &[])?;
    Ok(if opt == OPT_GO {
        Next::Transmit(idx)
    } else {
        Next::Continue
    })
}

/// `u32 name length, name, u16 count, count × u16 info type`, nothing more.
fn parse_info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let mut c = Cursor(data);
    let name = c.string32()?;
    let count = c.u16()?;
    let requests = (0..count).map(|_| c.u16()).collect::<Option<Vec<u16>>>()?;
    c.0.is_empty().then_some((name, requests))
}

fn meta_context<W: Write>(w: &mut W, st: &mut State, opt: u32, data: &[u8]) -> io::Result<()> {
    if !st.structured {
        return reply_err(
            w,
            opt,
            REP_ERR_INVALID,
            "negotiate structured replies first",
        );
    }
    let Some((name, queries)) = parse_meta_request(data) else {
        return reply_err(w, opt, REP_ERR_INVALID, "malformed meta context request");
    };
    let Some(idx) = find_export(st.exports, name) else {
        return reply_err(w, opt, REP_ERR_UNKNOWN, "unknown export");
    };
    let listing = opt == OPT_LIST_META_CONTEXT;
    let wanted = if listing {
        queries.is_empty()
            || queries
                .iter()
                .any(|q| *q == b"base:" || *q == META_BASE_ALLOCATION.as_bytes())
    } else {
        queries
            .iter()
            .any(|q| *q == META_BASE_ALLOCATION.as_bytes())
    };
    if wanted {
        // Listing replies carry a reserved id of 0.
        let id = if listing { 0 } else { META_ID_ALLOCATION };
        let mut body = Vec::new();
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(META_BASE_ALLOCATION.as_bytes());
        reply(w, opt, REP_META_CONTEXT, &body)?;
    }
    if !listing {
        st.meta_export = wanted.then_some(idx);
    }
    reply(w, opt, REP_ACK, &[])
}

/// `u32 name length, name, u32 count, count × (u32 length, query)`, nothing more.
fn parse_meta_request(data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let mut c = Cursor(data);
    let name = c.string32()?;
    let count = c.u32()?;
    let mut queries = Vec::new();
    for _ in 0..count {
        queries.push(c.string32()?);
    }
    c.0.is_empty().then_some((name, queries))
}

/// The empty name selects the first export, as qemu's `nbd://host:port` expects.
fn find_export(exports: &[Export], name: &[u8]) -> Option<usize> {
    if name.is_empty() {
        return (!exports.is_empty()).then_some(0);
    }
    exports.iter().position(|e| e.name.as_bytes() == name)
}

pub(crate) fn transmission_flags(dev: &dyn BlockDevice, structured: bool) -> u16 {
    let mut flags = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_TRIM
        | FLAG_SEND_WRITE_ZEROES
        | FLAG_CAN_MULTI_CONN;
    if structured {
        flags |= FLAG_SEND_DF;
    }
    if dev.read_only() {
        flags |= FLAG_READ_ONLY;
    }
    flags
}

fn reply<W: Write>(w: &mut W, opt: u32, kind: u32, body: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(20 + body.len());
    put_option_reply(&mut out, opt, kind, body);
    w.write_all(&out)
}

fn reply_err<W: Write>(w: &mut W, opt: u32, kind: u32, msg: &str) -> io::Result<()> {
    reply(w, opt, kind, msg.as_bytes())
}

/// Strings on the wire must not exceed 4096 bytes; cut on a character boundary.
fn clip_string(s: &str) -> &str {
    if s.len() <= MAX_STRING {
        return s;
    }
    let mut end = MAX_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Bounds-checked big-endian parsing of an option payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string32(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > MAX_STRING {
            return None;
        }
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_request_parsing() {
        let mut d = Vec::new();
        put_string32(&mut d, b"disk");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let (name, reqs) = parse_info_request(&d).expect("valid");
        assert_eq!(name, b"disk");
        assert_eq!(reqs, vec![INFO_NAME, INFO_BLOCK_SIZE]);
        assert!(parse_info_request(&d[..d.len() - 1]).is_none(), "truncated");
        d.push(0);
        assert!(parse_info_request(&d).is_none(), "trailing byte");
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            parse_info_request(&huge).is_none(),
            "name length beyond data"
        );
    }

    #[test]
    fn meta_request_parsing() {
        let mut d = Vec::new();
        put_string32(&mut d, b"");
        d.extend_from_slice(&2u32.to_be_bytes());
        put_string32(&mut d, b"base:allocation");
        put_string32(&mut d, b"qemu:dirty-bitmap:x");
        let (name, q) = parse_meta_request(&d).expect("valid");
        assert!(name.is_empty());
        assert_eq!(
            q,
            vec![&b"base:allocation"[..], &b"qemu:dirty-bitmap:x"[..]]
        );
        let mut lying = Vec::new();
        put_string32(&mut lying, b"");
        lying.extend_from_slice(&1000u32.to_be_bytes());
        assert!(parse_meta_request(&lying).is_none(), "count beyond data");
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        let s = "é".repeat(3000);
        let c = clip_string(&s);
        assert!(c.len() <= MAX_STRING && c.len() >= MAX_STRING - 1);
        assert_eq!(clip_string("abc"), "abc");
    }
}
