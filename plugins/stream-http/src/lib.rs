//! The `http` stream: `{"type":"http","url":"http[s]://..."}`, an object on a web server read
//! with Range GETs. The `s3` stream is this same client with a request signer.
//!
//! What it is for: reading a source image remotely without ever returning wrong bytes. Ranges
//! go over a small pool of kept-alive connections; adjacent ranges of a vectored read become
//! one request; dropped connections, timeouts and 5xx are retried with backoff (resuming
//! after the bytes already received); a server that ignores Range, or an object whose ETag,
//! Last-Modified or size changes while we read it, is an error.
//! What it is not: no caching, no writing, no parallelism of its own (the copy engine calls
//! from several threads; the pool serves them), no cookies or auth beyond URL userinfo.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbdm_registry::{OpenContext, Result, SourceError, Stream, StreamPlugin};
use rbdm_spec::HttpStreamSpec;
use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};

pub mod url;
pub use url::Url;

type Response = ureq::http::Response<ureq::Body>;

inventory::submit!(StreamPlugin {
    type_name: "http",
    description: "an object on a web server, read with Range requests (url)",
    open: open_spec,
});

/// Referenced by `rbdm-plugins` so the linker keeps this crate and its registration.
#[inline(never)]
pub fn link() {}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// HTTP requests made by every http and s3 stream in this process (for benchmarks).
pub fn request_count() -> u64 {
    REQUESTS.load(Ordering::Relaxed)
}

fn open_spec(spec: &serde_json::Value, path: &str, _ctx: &OpenContext) -> Result<Box<dyn Stream>> {
    let s =
        HttpStreamSpec::from_json(spec, path).map_err(|e| SourceError::BadSpec(e.to_string()))?;
    let url = Url::parse(&s.url)
        .map_err(|m| SourceError::BadSpec(format!("{}: {m}", join(path, "url"))))?;
    Ok(Box::new(HttpStream::open(url, Settings::http())?))
}

/// `path.key`, or `key` at the root: how spec errors name a field.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Adds authentication to a request (S3's SigV4). Called for every attempt, so a retry is
/// signed afresh.
pub trait Signer: Send + Sync {
    /// The URL as it should be sent (a signer may need its path in a canonical form).
    fn canonical_url(&self, url: Url) -> Url {
        url
    }
    /// The headers to add to a `method` request for `url`. `headers` are the request's own
    /// (lower-case names, e.g. `range`), which the signature may cover.
    fn sign(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, String)],
    ) -> Result<Vec<(String, String)>>;
}

/// How a stream talks to its server. `Settings::http()` is what the `http` type uses.
#[derive(Clone)]
pub struct Settings {
    /// The stream type, for messages (`http`, `s3`).
    pub kind: &'static str,
    pub signer: Option<Arc<dyn Signer>>,
    /// A path prefix that related objects (backing files) must stay under.
    pub scope: String,
    pub follow_redirects: bool,
    pub connect_timeout: Duration,
    /// Longest wait for the response headers, and for each read of the body.
    pub recv_timeout: Duration,
    /// Tries per request, the first included.
    pub attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Idle connections kept per host.
    pub pool: usize,
    /// PEM certificates to trust for HTTPS instead of the built-in web roots (from
    /// `SSL_CERT_FILE` by default, as curl and OpenSSL do).
    pub ca_file: Option<PathBuf>,
}

impl Settings {
    pub fn http() -> Self {
        Settings {
            kind: "http",
            signer: None,
            scope: "/".into(),
            follow_redirects: true,
            connect_timeout: rbdm_spec::stream_connect_timeout(),
            recv_timeout: rbdm_spec::stream_idle_timeout(),
            attempts: 5,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            pool: 8,
            ca_file: std::env::var_os("SSL_CERT_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }

    fn agent(&self) -> Result<ureq::Agent> {
        let mut tls = TlsConfig::builder();
        if let Some(path) = &self.ca_file {
            tls = tls.root_certs(roots_from(path)?);
        }
        Ok(ureq::Agent::config_builder()
            .tls_config(tls.build())
            // Statuses are ours to interpret: a 206 is the only success for a range.
            .http_status_as_error(false)
            .max_redirects(if self.follow_redirects { 5 } else { 0 })
            .max_redirects_will_error(false)
            .timeout_connect(Some(self.connect_timeout))
            .timeout_recv_response(Some(self.recv_timeout))
            .timeout_per_read(Some(self.recv_timeout))
            .max_idle_connections(self.pool * 4)
            .max_idle_connections_per_host(self.pool)
            // Byte ranges are of the stored object, never of a compressed encoding of it.
            .accept_encoding("identity")
            .user_agent(concat!("rbdm/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent())
    }
}

fn roots_from(path: &Path) -> Result<RootCerts> {
    let bad = |what: String| SourceError::Invalid(format!("CA file {}: {what}", path.display()));
    let pem = std::fs::read(path)
        .map_err(|e| SourceError::io(format!("CA file {}", path.display()), e))?;
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        if let PemItem::Certificate(c) = item.map_err(|e| bad(e.to_string()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(bad("no certificates in it".into()));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

/// The object's identity as first seen; a later reply that disagrees means it changed.
#[derive(Default)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
}

/// How one try of a request failed: worth another try or not.
enum Fail {
    Retry(SourceError),
    Fatal(SourceError),
}

impl Fail {
    fn into_error(self) -> SourceError {
        match self {
            Fail::Retry(e) | Fail::Fatal(e) => e,
        }
    }
}

/// An open remote object of a known size.
pub struct HttpStream {
    url: Url,
    settings: Settings,
    agent: ureq::Agent,
    size: u64,
    seen: Mutex<Validators>,
    requests: AtomicU64,
}

impl HttpStream {
    /// Opens `url`: one `Range: bytes=0-0` GET learns the size and that ranges work (a HEAD
    /// only for an empty object, which has no byte 0).
    pub fn open(url: Url, settings: Settings) -> Result<Self> {
        let agent = settings.agent()?;
        Self::open_with_agent(url, settings, agent)
    }

    fn open_with_agent(url: Url, settings: Settings, agent: ureq::Agent) -> Result<Self> {
        let url = match &settings.signer {
            Some(s) => s.canonical_url(url),
            None => url,
        };
        let mut s = HttpStream {
            url,
            settings,
            agent,
            size: 0,
            seen: Mutex::default(),
            requests: AtomicU64::new(0),
        };
        s.size = s.with_retries(|| s.probe())?;
        Ok(s)
    }

    /// Requests this stream made, the opening one included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    fn with_retries<T>(&self, mut op: impl FnMut() -> Result<T, Fail>) -> Result<T> {
        let mut delay = self.settings.backoff_min;
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(Fail::Retry(_)) if attempt < self.settings.attempts => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.settings.backoff_max);
                    attempt += 1;
                }
                Err(f) => return Err(f.into_error()),
            }
        }
    }

    fn send(&self, method: &str, range: Option<(u64, u64)>) -> Result<Response, Fail> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        let mut own: Vec<(&str, String)> = Vec::new();
        if let Some((first, last)) = range {
            own.push(("range", format!("bytes={first}-{last}")));
        }
        let extra = match &self.settings.signer {
            Some(s) => s.sign(method, &self.url, &own).map_err(Fail::Fatal)?,
            None => Vec::new(),
        };
        let target = self.url.to_string();
        let mut req = if method == "HEAD" {
            self.agent.head(&target)
        } else {
            self.agent.get(&target)
        };
        for (k, v) in own.iter() {
            req = req.header(*k, v.as_str());
        }
        for (k, v) in extra.iter() {
            req = req.header(k.as_str(), v.as_str());
        }
        req.call()
            .map_err(|e| self.transport_error(e, method, range))
    }

    /// A request that got no usable response; the message names the request (method and
    /// byte range) so a stall or reset can be placed.
    fn transport_error(&self, e: ureq::Error, method: &str, range: Option<(u64, u64)>) -> Fail {
        let what = match range {
            Some((first, last)) => format!("{method} of bytes {first}-{last}"),
            None => method.to_string(),
        };
        let msg = format!("{}: {what}: {e}", self.describe());
        match e {
            ureq::Error::Timeout(_) => Fail::Retry(self.timed_out(&what)),
            // TLS failures (an untrusted certificate) arrive as InvalidData: trying again
            // cannot help.
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                Fail::Fatal(SourceError::io(format!("{}: TLS", self.describe()), io))
            }
            ureq::Error::Io(io) if is_timeout(&io) => Fail::Retry(self.timed_out(&what)),
            ureq::Error::Io(io) => {
                Fail::Retry(SourceError::io(format!("{}: {what}", self.describe()), io))
            }
            ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled => Fail::Retry(SourceError::Remote(msg)),
            ureq::Error::BadUri(_) | ureq::Error::Http(_) => Fail::Fatal(SourceError::Invalid(msg)),
            _ => Fail::Fatal(SourceError::Remote(msg)),
        }
    }

    /// What a status other than the expected one means. `ranged`: the request asked for a range.
    fn status_error(&self, resp: &mut Response, ranged: bool) -> Fail {
        let status = resp.status().as_u16();
        let d = self.describe();
        let (code, detail) = error_detail(resp);
        // S3 reports some credential problems (a bad session token) as 400.
        let auth_code = code.as_deref().is_some_and(|c| AUTH_CODES.contains(&c));
        match status {
            200 if ranged => Fail::Fatal(SourceError::Remote(format!(
                "{d}: server ignores Range (answered 200 with the whole object to a range request)"
            ))),
            404 | 410 => Fail::Fatal(SourceError::NotFound(format!("{d}: not found (HTTP {status}{detail})"))),
            400 | 401 | 403 if self.settings.signer.is_some() && (status != 400 || auth_code) => Fail::Fatal(SourceError::PermissionDenied(format!(
                "{d}: authentication failed (HTTP {status}{detail}): check the access key and secret key"
            ))),
            401 | 403 => Fail::Fatal(SourceError::PermissionDenied(format!("{d}: access denied (HTTP {status}{detail})"))),
            412 | 416 => Fail::Fatal(SourceError::Changed(format!(
                "{d}: the object changed while being read (HTTP {status}: it no longer has the {} bytes it had at open)",
                self.size
            ))),
            408 | 429 | 500..=599 => Fail::Retry(SourceError::Remote(format!("{d}: HTTP {status}{detail}"))),
            300..=399 => Fail::Fatal(SourceError::Remote(format!(
                "{d}: redirected (HTTP {status}) to {}, not followed",
                header(resp, "location").unwrap_or("nowhere")
            ))),
            _ => Fail::Fatal(SourceError::Remote(format!("{d}: unexpected HTTP {status}{detail}"))),
        }
    }

    /// Learns the size with a one-byte range GET; an empty object answers 416, then HEAD.
    fn probe(&self) -> Result<u64, Fail> {
        let mut resp = self.send("GET", Some((0, 0)))?;
        match resp.status().as_u16() {
            206 => {
                self.check_validators(&resp).map_err(Fail::Fatal)?;
                let total = match parse_content_range(header(&resp, "content-range")) {
                    Some(ContentRange {
                        first: 0,
                        last: 0,
                        total: Some(t),
                    }) => t,
                    _ => {
                        return Err(Fail::Fatal(
                            self.remote("206 without a usable Content-Range for bytes 0-0"),
                        ))
                    }
                };
                finish_body(&mut resp, 1);
                Ok(total)
            }
            416 => self.probe_head(),
            // An empty object has no byte 0: some servers (nginx) then answer the whole
            // (empty) object instead of 416.
            200 if header(&resp, "content-length").is_some_and(|v| v.trim() == "0") => {
                self.check_validators(&resp).map_err(Fail::Fatal)?;
                finish_body(&mut resp, 0);
                Ok(0)
            }
            _ => Err(self.status_error(&mut resp, true)),
        }
    }

    fn probe_head(&self) -> Result<u64, Fail> {
        let mut resp = self.send("HEAD", None)?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error(&mut resp, false));
        }
        self.check_validators(&resp).map_err(Fail::Fatal)?;
        let len = header(&resp, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        finish_body(&mut resp, 0);
        match len {
            Some(0) => Ok(0),
            // A non-empty object that refused bytes=0-0 is not readable by range.
            Some(n) => Err(Fail::Fatal(self.remote(&format!(
                "answered 416 to bytes=0-0 but HEAD says {n} bytes"
            )))),
            None => Err(Fail::Fatal(self.remote(
                "answered 416 to bytes=0-0 and HEAD gives no Content-Length",
            ))),
        }
    }

    fn remote(&self, what: &str) -> SourceError {
        SourceError::Remote(format!("{}: {what}", self.describe()))
    }

    /// Keeps the first ETag/Last-Modified seen; any later different one is a change.
    fn check_validators(&self, resp: &Response) -> Result<()> {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let seen = &mut *guard;
        for (name, slot) in [
            ("ETag", &mut seen.etag),
            ("Last-Modified", &mut seen.last_modified),
        ] {
            let Some(now) = header(resp, name) else {
                continue;
            };
            match slot {
                Some(before) if before != now => {
                    return Err(SourceError::Changed(format!(
                        "{}: the object changed while being read ({name} was {before}, now {now})",
                        self.describe()
                    )))
                }
                Some(_) => {}
                None => *slot = Some(now.to_string()),
            }
        }
        Ok(())
    }

    /// Fills `bufs`, which are consecutive in the object from `start`, retrying from where a
    /// failed try stopped.
    fn fetch(&self, start: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let mut done = 0u64;
        self.with_retries(|| {
            while done < total {
                self.fetch_once(start, total, bufs, &mut done)?;
            }
            Ok(())
        })
    }

    /// One GET for what is still missing; a server may answer a shorter range, in which case
    /// the caller asks again for the rest.
    fn fetch_once(
        &self,
        start: u64,
        total: u64,
        bufs: &mut [&mut [u8]],
        done: &mut u64,
    ) -> Result<(), Fail> {
        let first = start + *done;
        let last = start + total - 1;
        let mut resp = self.send("GET", Some((first, last)))?;
        if resp.status().as_u16() != 206 {
            return Err(self.status_error(&mut resp, true));
        }
        self.check_validators(&resp).map_err(Fail::Fatal)?;
        let cr = parse_content_range(header(&resp, "content-range"))
            .ok_or_else(|| Fail::Fatal(self.remote("206 without a valid Content-Range")))?;
        if cr.total.is_some_and(|t| t != self.size) {
            return Err(Fail::Fatal(SourceError::Changed(format!(
                "{}: the object changed while being read (size was {}, now {})",
                self.describe(),
                self.size,
                cr.total.unwrap_or_default()
            ))));
        }
        if cr.first != first || cr.last > last {
            return Err(Fail::Fatal(self.remote(&format!(
                "answered bytes {}-{} to a request for {first}-{last}",
                cr.first, cr.last
            ))));
        }
        let want = cr.last - cr.first + 1;
        if header(&resp, "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n != want)
        {
            return Err(Fail::Fatal(
                self.remote("Content-Length disagrees with Content-Range"),
            ));
        }
        let mut reader = resp.body_mut().as_reader();
        let goal = *done + want;
        if let Err(e) = read_into(&mut reader, bufs, done, goal) {
            let what = format!(
                "reading bytes {first}-{} ({} of {want} received)",
                cr.last,
                *done + want - goal
            );
            if is_timeout(&e) {
                return Err(Fail::Retry(self.timed_out(&what)));
            }
            let context = format!("{}: {what}", self.describe());
            return Err(Fail::Retry(SourceError::io(context, e)));
        }
        // The connection goes back to the pool only once the body reached its end.
        let mut extra = [0u8; 1];
        match reader.read(&mut extra) {
            Ok(0) | Err(_) => Ok(()),
            Ok(_) => Err(Fail::Fatal(
                self.remote("sent more bytes than the range it announced"),
            )),
        }
    }

    /// ETIMEDOUT, naming the stream, what it waited for, and for how long.
    fn timed_out(&self, what: &str) -> SourceError {
        let context = format!(
            "{}: {what}: no data for {:?} (set {} to wait longer)",
            self.describe(),
            self.settings.recv_timeout,
            rbdm_spec::STREAM_TIMEOUT_ENV
        );
        SourceError::io(context, rbdm_spec::timed_out_error())
    }

    fn check_bounds(&self, offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(SourceError::Invalid(format!(
                "{}: read of {len} bytes at {offset} is past the end ({} bytes)",
                self.describe(),
                self.size
            ))),
        }
    }
}

impl Stream for HttpStream {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_bounds(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        self.fetch(offset, &mut [buf])
    }

    /// Sorts the reads and makes one request per run of adjacent ones.
    fn read_vectored_at(&self, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
        for (off, buf) in reads.iter() {
            self.check_bounds(*off, buf.len())?;
        }
        let mut order: Vec<(u64, &mut [u8])> = reads
            .iter_mut()
            .filter(|(_, b)| !b.is_empty())
            .map(|(o, b)| (*o, &mut **b))
            .collect();
        order.sort_by_key(|r| r.0);
        let mut i = 0;
        while i < order.len() {
            let start = order[i].0;
            let mut end = start + order[i].1.len() as u64;
            let mut j = i + 1;
            while j < order.len() && order[j].0 == end {
                end += order[j].1.len() as u64;
                j += 1;
            }
            let mut run: Vec<&mut [u8]> = order[i..j].iter_mut().map(|(_, b)| &mut **b).collect();
            self.fetch(start, &mut run)?;
            i = j;
        }
        Ok(())
    }

    /// A sibling URL on the same server (and, for S3, in the same bucket), sharing this
    /// stream's connection pool and credentials. Anything else is refused: credentials
    /// must never be sent to a server the spec did not name.
    fn open_relative(&self, name: &str) -> Result<Box<dyn Stream>> {
        let d = self.describe();
        let url = self
            .url
            .join(name)
            .map_err(|m| SourceError::Invalid(format!("{d}: related file {name:?}: {m}")))?;
        if url.origin() != self.url.origin() {
            return Err(SourceError::Invalid(format!(
                "{d}: related file {name:?} is on another server ({}); refused",
                url.redacted()
            )));
        }
        if !url.path.starts_with(&self.settings.scope) {
            return Err(SourceError::Invalid(format!(
                "{d}: related file {name:?} resolves outside {}; refused",
                self.settings.scope
            )));
        }
        let s = HttpStream::open_with_agent(url, self.settings.clone(), self.agent.clone())?;
        Ok(Box::new(s))
    }

    fn describe(&self) -> String {
        format!("{} {}", self.settings.kind, self.url.redacted())
    }
}

fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Reads what is left of a small body so the connection can be reused; gives up quietly.
fn finish_body(resp: &mut Response, at_most: u64) {
    let mut reader = resp.body_mut().as_reader().take(at_most + 1);
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
}

/// S3 error codes that mean the credentials were not accepted.
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AuthorizationHeaderMalformed",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "RequestTimeTooSkewed",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
];

/// The error code and `: Code: Message` for messages, from an S3-style XML error body (at
/// most 16 KiB of it is read).
fn error_detail(resp: &mut Response) -> (Option<String>, String) {
    let mut body = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(16 << 10)
        .read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let from = text.find(&open)? + open.len();
        let to = text[from..].find("</")? + from;
        Some(text[from..to].trim().chars().take(200).collect::<String>())
    };
    let code = tag("Code");
    let detail = match (&code, tag("Message")) {
        (Some(c), Some(m)) if !m.is_empty() => format!(": {c}: {m}"),
        (Some(c), _) => format!(": {c}"),
        _ => String::new(),
    };
    (code, detail)
}

#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    first: u64,
    last: u64,
    /// `None` for `*` (length unknown).
    total: Option<u64>,
}

/// `bytes FIRST-LAST/TOTAL` or `bytes FIRST-LAST/*`.
fn parse_content_range(v: Option<&str>) -> Option<ContentRange> {
    let rest = v?.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if last < first || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some(ContentRange { first, last, total })
}

/// A read that gave up waiting: a socket timeout, or ureq's per-read timeout (which the body
/// reader hands back as an io error of kind `Other` wrapping `ureq::Error::Timeout`).
fn is_timeout(e: &std::io::Error) -> bool {
    let ureq_timeout = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
        .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)));
    ureq_timeout
        || matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        )
}

/// Fills the concatenation of `bufs` from position `*done` up to `goal`, advancing `*done`
/// as bytes arrive so a retry can resume.
fn read_into(
    reader: &mut impl Read,
    bufs: &mut [&mut [u8]],
    done: &mut u64,
    goal: u64,
) -> std::io::Result<()> {
    let mut base = 0u64;
    for buf in bufs.iter_mut() {
        let end = base + buf.len() as u64;
        while *done < end.min(goal) {
            let from = (*done - base) as usize;
            let to = (end.min(goal) - base) as usize;
            match reader.read(&mut buf[from..to]) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed mid-body",
                    ))
                }
                Ok(n) => *done += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        base = end;
        if base >= goal {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        let p = |s: &str| parse_content_range(Some(s));
        assert_eq!(
            p("bytes 0-0/10"),
            Some(ContentRange {
                first: 0,
                last: 0,
                total: Some(10)
            })
        );
        assert_eq!(
            p("bytes 5-9/*"),
            Some(ContentRange {
                first: 5,
                last: 9,
                total: None
            })
        );
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes */10",
            "items 0-1/2",
            "bytes 0-1",
            "bytes a-1/2",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        assert_eq!(parse_content_range(None), None);
    }

    #[test]
    fn read_into_resumes_across_buffers() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut a = [0u8; 30];
        let mut b = [0u8; 70];
        let mut done = 0;
        {
            let mut bufs: Vec<&mut [u8]> = vec![&mut a, &mut b];
            // First try delivers 45 bytes then fails.
            let mut r1 = &data[..45];
            assert!(read_into(&mut r1, &mut bufs, &mut done, 100).is_err());
            assert_eq!(done, 45);
            let mut r2 = &data[45..];
            read_into(&mut r2, &mut bufs, &mut done, 100).unwrap();
        }
        assert_eq!(done, 100);
        assert_eq!(&a[..], &data[..30]);
        assert_eq!(&b[..], &data[30..]);
    }
}
