//! The http stream against a real web server (nginx, started here on loopback) and against
//! small misbehaving servers written below: dropped connections, 503s, ignored ranges,
//! objects that change mid-read, stalls.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbdm_registry::{OpenContext, SourceError, Stream};
use rbdm_stream_http::{HttpStream, Settings, Url};
use rbdm_tests::pseudo_random;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ctx_open(spec: serde_json::Value) -> Result<Box<dyn Stream>, SourceError> {
    rbdm_stream_http::link();
    rbdm_registry::open_stream(&spec, "stream", &OpenContext::without_store())
}

// ---------------------------------------------------------------------------------------
// nginx

struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx serving `root` on a free loopback port, logging the connection serial of each
    /// request so tests can count connections.
    fn start(root: &Path) -> Nginx {
        Self::start_with(root, None)
    }

    /// With `tls`, serves HTTPS with that certificate and key.
    fn start_with(root: &Path, tls: Option<(&Path, &Path)>) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        for attempt in 0..5 {
            let port = free_port();
            let d = dir.path().display();
            let listen = match tls {
                Some((cert, key)) => format!(
                    "listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};",
                    cert.display(),
                    key.display()
                ),
                None => format!("listen 127.0.0.1:{port};"),
            };
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  log_format conn '$connection $status $request_method $request_uri \"$http_range\"';\n\
                 access_log {d}/access.log conn;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 keepalive_requests 100000;\n\
                 server {{\n    {listen}\n    root {root};\n    location /secret/ {{ deny all; }}\n  }}\n}}\n",
                root = root.display()
            );
            std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
            let log = dir.path().join("error.log");
            let mut child = Command::new("nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .arg("-e")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nginx must be installed (.ci/install installs nginx-light)");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx { child, port, dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // most likely the port was taken meanwhile: try another
                }
                assert!(Instant::now() < deadline, "nginx did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                attempt < 4,
                "nginx failed: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        unreachable!()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.port)
    }

    /// The log once it has at least `n` lines: nginx writes a line only after it sent the
    /// response, so the client can be ahead of it.
    fn log_of(&self, n: usize) -> Vec<(String, String, String)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.len() >= n || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// (connection serial, request uri, range) of each logged request.
    fn log(&self) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.splitn(5, ' ').collect();
                (
                    f[0].to_string(),
                    f[3].to_string(),
                    f.get(4).unwrap_or(&"").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Site {
    _root: tempfile::TempDir,
    nginx: Nginx,
    data: Vec<u8>,
}

fn site() -> Site {
    let root = tempfile::tempdir().unwrap();
    // An odd size, with a run of zeros in the middle.
    let mut data = pseudo_random(3 * 1024 * 1024 + 12345, 7);
    data[1_000_000..1_500_000].fill(0);
    std::fs::create_dir_all(root.path().join("images/sub")).unwrap();
    std::fs::create_dir_all(root.path().join("secret")).unwrap();
    std::fs::write(root.path().join("images/disk.img"), &data).unwrap();
    std::fs::write(root.path().join("images/base.img"), b"the base image").unwrap();
    std::fs::write(root.path().join("images/empty.img"), b"").unwrap();
    std::fs::write(root.path().join("secret/x.img"), b"hidden").unwrap();
    let nginx = Nginx::start(root.path());
    Site {
        _root: root,
        nginx,
        data,
    }
}

fn open_url(url: &str) -> HttpStream {
    HttpStream::open(Url::parse(url).unwrap(), Settings::http()).unwrap()
}

#[test]
fn nginx_ranges_equal_the_file() {
    let s = site();
    let stream =
        ctx_open(serde_json::json!({"type": "http", "url": s.nginx.url("images/disk.img")}))
            .unwrap();
    assert_eq!(stream.size(), s.data.len() as u64);
    let rnd = pseudo_random(200, 99);
    for i in 0..50 {
        let off = (u32::from_le_bytes([rnd[4 * i], rnd[4 * i + 1], rnd[4 * i + 2], rnd[4 * i + 3]])
            as usize)
            % s.data.len();
        let len = (rnd[i] as usize * 997).min(s.data.len() - off);
        let mut buf = vec![0u8; len];
        stream.read_at(off as u64, &mut buf).unwrap();
        assert!(buf == s.data[off..off + len], "range {off}+{len} differs");
    }
    let mut whole = vec![0u8; s.data.len()];
    stream.read_at(0, &mut whole).unwrap();
    assert!(whole == s.data);
    let mut tail = [0u8; 10];
    stream.read_at(s.data.len() as u64 - 10, &mut tail).unwrap();
    assert_eq!(&tail[..], &s.data[s.data.len() - 10..]);
    let past = stream
        .read_at(s.data.len() as u64 - 5, &mut tail)
        .unwrap_err();
    assert!(matches!(past, SourceError::Invalid(_)), "{past}");
    assert!(stream.extents(0, 100).is_none());
}

#[test]
fn nginx_adjacent_reads_coalesce_and_connections_are_reused() {
    let s = site();
    let stream = open_url(&s.nginx.url("images/disk.img"));
    assert_eq!(stream.requests(), 1);
    // Four adjacent reads given out of order, and one apart: two requests.
    let (mut a, mut b, mut c, mut d, mut e) = (
        vec![0u8; 4096],
        vec![0u8; 100],
        vec![0u8; 65536],
        vec![0u8; 1],
        vec![0u8; 777],
    );
    let mut reads: Vec<(u64, &mut [u8])> = vec![
        (4196, &mut c),
        (100, &mut a),
        (2_000_000, &mut e),
        (0, &mut b),
        (69732, &mut d),
    ];
    stream.read_vectored_at(&mut reads).unwrap();
    assert_eq!(stream.requests(), 3);
    assert!(a == s.data[100..4196]);
    assert!(b == s.data[0..100]);
    assert!(c == s.data[4196..69732]);
    assert!(d == s.data[69732..69733]);
    assert!(e == s.data[2_000_000..2_000_777]);
    let ranges: Vec<String> = s.nginx.log_of(3).into_iter().map(|(_, _, r)| r).collect();
    assert!(
        ranges.contains(&"\"bytes=0-69732\"".to_string()),
        "{ranges:?}"
    );

    for i in 0..200u64 {
        let mut buf = [0u8; 512];
        stream.read_at(i * 9000, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &s.data[(i * 9000) as usize..(i * 9000 + 512) as usize]
        );
    }
    assert_eq!(stream.requests(), 203);
    let log = s.nginx.log_of(203);
    assert_eq!(log.len(), 203, "nginx saw every request");
    let conns: HashSet<String> = log.iter().map(|(c, _, _)| c.clone()).collect();
    assert!(
        conns.len() <= 2,
        "203 requests used {} connections",
        conns.len()
    );
}

#[test]
fn nginx_query_kept_errors_named_and_relatives_confined() {
    let s = site();
    let stream = open_url(&format!(
        "{}?token=abc&v=2",
        s.nginx.url("images/sub/../disk.img")
    ));
    assert_eq!(stream.size(), s.data.len() as u64);
    let log = s.nginx.log_of(1);
    assert!(
        log.iter()
            .any(|(_, uri, _)| uri.ends_with("disk.img?token=abc&v=2")),
        "{log:?}"
    );
    let shown = stream.describe();
    assert!(
        !shown.contains("abc") && shown.starts_with("http http://127.0.0.1:"),
        "{shown}"
    );

    let missing = HttpStream::open(
        Url::parse(&s.nginx.url("images/nope.img")).unwrap(),
        Settings::http(),
    )
    .err()
    .unwrap();
    assert!(matches!(missing, SourceError::NotFound(_)), "{missing}");
    assert_eq!(missing.errno(), libc_enoent());
    let denied = HttpStream::open(
        Url::parse(&s.nginx.url("secret/x.img")).unwrap(),
        Settings::http(),
    )
    .err()
    .unwrap();
    assert!(
        matches!(denied, SourceError::PermissionDenied(_)),
        "{denied}"
    );

    let empty = open_url(&s.nginx.url("images/empty.img"));
    assert_eq!(empty.size(), 0);
    empty.read_at(0, &mut []).unwrap();

    let base = stream.open_relative("base.img").unwrap();
    let mut buf = vec![0u8; base.size() as usize];
    base.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, b"the base image");
    assert!(stream
        .open_relative(&s.nginx.url("images/base.img"))
        .is_ok());
    for refused in [
        "../../../etc/passwd",
        "http://127.0.0.2:1/base.img",
        "//example.com/x",
    ] {
        let e = stream.open_relative(refused).err().unwrap();
        assert!(matches!(e, SourceError::Invalid(_)), "{refused}: {e}");
    }
    assert!(matches!(
        stream.open_relative("missing.img").err().unwrap(),
        SourceError::NotFound(_)
    ));
}

#[test]
fn nginx_https_with_a_private_ca() {
    let root = tempfile::tempdir().unwrap();
    let data = pseudo_random(1_000_000, 21);
    std::fs::write(root.path().join("disk.img"), &data).unwrap();
    let p = |n: &str| root.path().join(n);
    let (ca, ca_key, cert, key) = (p("ca.pem"), p("ca.key"), p("cert.pem"), p("key.pem"));
    let openssl = |args: &[&str]| {
        let st = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl must be installed");
        assert!(st.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
    ];
    let s = |p: &std::path::PathBuf| p.to_str().unwrap().to_string();
    let (ca_s, ca_key_s, cert_s, key_s) = (s(&ca), s(&ca_key), s(&cert), s(&key));
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-subj",
                "/CN=rbdm test CA",
                "-keyout",
                &ca_key_s,
                "-out",
                &ca_s,
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-x509", "-CA", &ca_s, "-CAkey", &ca_key_s][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            &[
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-keyout",
                &key_s,
                "-out",
                &cert_s,
            ],
        ]
        .concat(),
    );
    let nginx = Nginx::start_with(root.path(), Some((&cert, &key)));
    let url = Url::parse(&nginx.https_url("disk.img")).unwrap();
    let s = HttpStream::open(
        url.clone(),
        Settings {
            ca_file: Some(ca.clone()),
            ..Settings::http()
        },
    )
    .unwrap();
    let mut buf = vec![0u8; data.len()];
    s.read_at(0, &mut buf).unwrap();
    assert!(buf == data);
    let mut part = vec![0u8; 1000];
    s.read_at(777_777, &mut part).unwrap();
    assert!(part == data[777_777..778_777]);
    assert_eq!(nginx.log_of(3).len(), 3, "a probe and two reads");
    // Without the private CA the server is not trusted.
    let e = HttpStream::open(
        url,
        Settings {
            ca_file: None,
            ..quick()
        },
    )
    .err()
    .unwrap();
    let e = rbdm_registry::report(&e);
    assert!(e.contains("UnknownIssuer"), "{e}");
}

fn libc_enoent() -> i32 {
    2
}

#[test]
fn spec_errors_name_the_path() {
    let bad = |v: serde_json::Value| match ctx_open(v) {
        Err(SourceError::BadSpec(m)) => m,
        other => panic!("expected BadSpec, got {:?}", other.map(|s| s.describe())),
    };
    assert_eq!(
        bad(serde_json::json!({"type": "http"})),
        "stream.url: missing"
    );
    assert!(bad(serde_json::json!({"type": "http", "url": 5})).starts_with("stream.url:"));
    assert!(bad(serde_json::json!({"type": "http", "url": "ftp://x/y"})).starts_with("stream.url:"));
    assert!(
        bad(serde_json::json!({"type": "http", "url": "http://h/x", "extra": 1}))
            .starts_with("stream.extra:")
    );
}

// ---------------------------------------------------------------------------------------
// A scripted server: every request gets a number (0 = the opening probe) and the test's
// script decides what it answers.

#[derive(Clone, Debug)]
struct Req {
    n: usize,
    method: String,
    path: String,
    range: Option<(u64, u64)>,
}

enum Act {
    /// A correct answer, with this ETag.
    Serve(&'static str),
    /// Headers for the whole range, then only this many body bytes, then close.
    DropAfter(usize),
    Status(u16),
    /// 200 with the whole object.
    IgnoreRange,
    /// Headers, then silence.
    Stall,
    /// Headers for the whole range and the first `n` body bytes, then silence, the
    /// connection held open for half a minute.
    Hang(usize),
    /// Content-Range names a different start than asked.
    WrongRange,
    /// A correct range of an object that has grown by a byte.
    Grown,
}

type Script = dyn Fn(&Req) -> Act + Send + Sync;

struct Fault {
    port: u16,
    seen: Arc<Mutex<Vec<Req>>>,
    conns: Arc<AtomicUsize>,
}

impl Fault {
    /// Answers the size probe that opening makes (ETag `"v1"`), then `then()` for every
    /// later request.
    fn after_open(data: Vec<u8>, then: impl Fn() -> Act + Send + Sync + 'static) -> Fault {
        Fault::start(
            data,
            Box::new(move |r: &Req| {
                if r.n == 0 {
                    Act::Serve("\"v1\"")
                } else {
                    then()
                }
            }),
        )
    }

    fn start(data: Vec<u8>, script: Box<Script>) -> Fault {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (data, script) = (Arc::new(data), Arc::<Script>::from(script));
        let (seen2, conns2) = (seen.clone(), conns.clone());
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { return };
                conns2.fetch_add(1, Ordering::SeqCst);
                let (data, script, seen) = (data.clone(), script.clone(), seen2.clone());
                std::thread::spawn(move || serve(sock, &data, &*script, &seen));
            }
        });
        Fault { port, seen, conns }
    }

    fn url(&self) -> Url {
        Url::parse(&format!("http://127.0.0.1:{}/obj.img?sig=a%2Bb", self.port)).unwrap()
    }

    fn seen(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(sock: TcpStream, data: &[u8], script: &Script, seen: &Mutex<Vec<Req>>) {
    let mut reader = BufReader::new(sock.try_clone().unwrap());
    let mut out = sock;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                let (a, b) = v.trim().split_once('-').unwrap();
                range = Some((a.parse().unwrap(), b.parse().unwrap()));
            }
        }
        let req = {
            let mut s = seen.lock().unwrap();
            let r = Req {
                n: s.len(),
                method,
                path,
                range,
            };
            s.push(r.clone());
            r
        };
        let size = data.len() as u64;
        let ok = match script(&req) {
            Act::Serve(etag) => respond(&mut out, &req, data, etag, None),
            Act::Grown => {
                let (a, b) = req.range.unwrap_or((0, 0));
                let _ = write!(
                    out,
                    "HTTP/1.1 206 Partial\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {}\r\n\r\n",
                    size + 1,
                    b - a + 1
                );
                out.write_all(&data[a as usize..=b as usize]).is_ok()
            }
            Act::DropAfter(n) => {
                let _ = respond(&mut out, &req, data, "\"v1\"", Some(n));
                return;
            }
            Act::Status(code) => {
                let body = format!("<Error><Code>Scripted{code}</Code></Error>");
                write!(
                    out,
                    "HTTP/1.1 {code} Scripted\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .is_ok()
            }
            Act::IgnoreRange => {
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nETag: \"v1\"\r\n\r\n"
                );
                out.write_all(data).is_ok()
            }
            Act::Stall => {
                let _ = write!(out, "HTTP/1.1 206 Partial\r\nContent-Range: bytes 0-0/{size}\r\nContent-Length: 1\r\n\r\n");
                std::thread::sleep(Duration::from_secs(3));
                return;
            }
            Act::Hang(n) => {
                let (a, b) = req.range.unwrap_or((0, size - 1));
                let _ = write!(
                    out,
                    "HTTP/1.1 206 Partial\r\nContent-Range: bytes {a}-{b}/{size}\r\nContent-Length: {}\r\nETag: \"v1\"\r\n\r\n",
                    b - a + 1
                );
                let _ = out.write_all(&data[a as usize..(a as usize + n).min(b as usize + 1)]);
                let _ = out.flush();
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            Act::WrongRange => {
                let (a, b) = req.range.unwrap_or((0, 0));
                let _ = write!(
                    out,
                    "HTTP/1.1 206 Partial\r\nContent-Range: bytes {}-{}/{size}\r\nContent-Length: {}\r\n\r\n",
                    a + 1,
                    b + 1,
                    b - a + 1
                );
                out.write_all(&data[(a + 1) as usize..(b + 2) as usize])
                    .is_ok()
            }
        };
        if !ok {
            return;
        }
    }
}

fn respond(out: &mut TcpStream, req: &Req, data: &[u8], etag: &str, cut: Option<usize>) -> bool {
    let size = data.len() as u64;
    let head = req.method == "HEAD";
    let (status, range_hdr, body) = match req.range {
        Some((a, b)) if a < size => {
            let b = b.min(size - 1);
            (
                "206 Partial Content",
                format!("Content-Range: bytes {a}-{b}/{size}\r\n"),
                &data[a as usize..=b as usize],
            )
        }
        Some(_) => (
            "416 Range Not Satisfiable",
            format!("Content-Range: bytes */{size}\r\n"),
            &data[0..0],
        ),
        None => ("200 OK", String::new(), data),
    };
    let r = write!(
        out,
        "HTTP/1.1 {status}\r\n{range_hdr}Content-Length: {}\r\nETag: {etag}\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n",
        body.len()
    );
    if r.is_err() || head {
        return r.is_ok();
    }
    let body = &body[..cut.unwrap_or(body.len()).min(body.len())];
    out.write_all(body).is_ok() && out.flush().is_ok()
}

fn quick() -> Settings {
    Settings {
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(40),
        ..Settings::http()
    }
}

#[test]
fn fault_dropped_mid_body_resumes_with_the_rest() {
    let data = pseudo_random(300_000, 3);
    let f = Fault::start(
        data.clone(),
        Box::new(|r: &Req| {
            if r.n == 1 {
                Act::DropAfter(70_000)
            } else {
                Act::Serve("\"v1\"")
            }
        }),
    );
    let s = HttpStream::open(f.url(), quick()).unwrap();
    let mut buf = vec![0u8; 200_000];
    s.read_at(50_000, &mut buf).unwrap();
    assert!(buf == data[50_000..250_000]);
    let seen = f.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1].range, Some((50_000, 249_999)));
    assert_eq!(
        seen[2].range,
        Some((120_000, 249_999)),
        "the retry asks only for what is missing"
    );
    assert!(
        seen.iter()
            .all(|r| r.method == "GET" && r.path == "/obj.img?sig=a%2Bb"),
        "query kept as is: {seen:?}"
    );
    // Dropped connection replaced, the others reused.
    assert_eq!(f.conns.load(Ordering::SeqCst), 2);
}

#[test]
fn fault_503_then_success_is_retried() {
    let data = pseudo_random(10_000, 4);
    let f = Fault::start(
        data.clone(),
        Box::new(|r: &Req| {
            if matches!(r.n, 0 | 2 | 3) {
                Act::Status(503)
            } else {
                Act::Serve("\"v1\"")
            }
        }),
    );
    let s = HttpStream::open(f.url(), quick()).unwrap();
    assert_eq!(s.size(), 10_000);
    let mut buf = vec![0u8; 5000];
    s.read_at(1000, &mut buf).unwrap();
    assert!(buf == data[1000..6000]);
    assert_eq!(s.requests(), 5);
    assert_eq!(f.seen().len(), 5);
}

#[test]
fn fault_persistent_503_gives_up_after_five_tries() {
    let f = Fault::after_open(vec![1; 100], || Act::Status(503));
    let s = HttpStream::open(f.url(), quick()).unwrap();
    let e = s.read_at(0, &mut [0u8; 10]).unwrap_err();
    assert!(
        matches!(e, SourceError::Remote(_)) && e.to_string().contains("503"),
        "{e}"
    );
    assert_eq!(f.seen().len(), 1 + 5);
}

#[test]
fn fault_server_ignoring_range_is_refused() {
    let f = Fault::start(vec![9; 5000], Box::new(|_: &Req| Act::IgnoreRange));
    let e = HttpStream::open(f.url(), quick()).err().unwrap();
    assert!(e.to_string().contains("server ignores Range"), "{e}");
    assert_eq!(f.seen().len(), 1, "not retried");
    // The same when it starts ignoring ranges after open.
    let f = Fault::after_open(vec![9; 5000], || Act::IgnoreRange);
    let s = HttpStream::open(f.url(), quick()).unwrap();
    let e = s.read_at(10, &mut [0u8; 10]).unwrap_err();
    assert!(e.to_string().contains("server ignores Range"), "{e}");
}

#[test]
fn fault_object_changing_mid_read_is_detected() {
    let data = pseudo_random(50_000, 5);
    let f = Fault::start(
        data.clone(),
        Box::new(|r: &Req| {
            if r.n < 3 {
                Act::Serve("\"v1\"")
            } else {
                Act::Serve("\"v2\"")
            }
        }),
    );
    let s = HttpStream::open(f.url(), quick()).unwrap();
    let mut buf = vec![0u8; 1000];
    s.read_at(0, &mut buf).unwrap();
    s.read_at(1000, &mut buf).unwrap();
    let e = s.read_at(2000, &mut buf).unwrap_err();
    assert!(matches!(e, SourceError::Changed(_)), "{e}");
    assert!(e.to_string().contains("ETag"), "{e}");
    assert_eq!(f.seen().len(), 4, "a change is not retried");
}

#[test]
fn fault_size_change_and_wrong_range_are_errors() {
    let data = pseudo_random(50_000, 6);
    let f = Fault::start(
        data.clone(),
        Box::new(|r: &Req| {
            if r.n < 2 {
                Act::Serve("\"v1\"")
            } else {
                Act::Grown
            }
        }),
    );
    let s = HttpStream::open(f.url(), quick()).unwrap();
    s.read_at(0, &mut [0u8; 100]).unwrap();
    let e = s.read_at(100, &mut [0u8; 100]).unwrap_err();
    assert!(
        matches!(e, SourceError::Changed(_)) && e.to_string().contains("size was 50000, now 50001"),
        "{e}"
    );

    let f = Fault::after_open(data.clone(), || Act::WrongRange);
    let s = HttpStream::open(f.url(), quick()).unwrap();
    let e = s.read_at(100, &mut [0u8; 100]).unwrap_err();
    assert!(
        matches!(e, SourceError::Remote(_)) && e.to_string().contains("answered bytes 101-200"),
        "{e}"
    );

    let f = Fault::after_open(data.clone(), || Act::Status(416));
    let s = HttpStream::open(f.url(), quick()).unwrap();
    let e = s.read_at(100, &mut [0u8; 100]).unwrap_err();
    assert!(matches!(e, SourceError::Changed(_)), "{e}");
}

#[test]
fn fault_statuses_map_to_errors() {
    for (code, errno) in [(404u16, 2), (410, 2), (401, 13), (403, 13), (400, 5)] {
        let f = Fault::start(vec![0; 10], Box::new(move |_: &Req| Act::Status(code)));
        let e = HttpStream::open(f.url(), quick()).err().unwrap();
        assert_eq!(e.errno(), errno, "{code}: {e}");
        assert_eq!(f.seen().len(), 1, "{code} is not retried");
    }
}

#[test]
fn fault_stall_times_out() {
    let f = Fault::after_open(vec![0; 10], || Act::Stall);
    let e = read_timing_out(&f, 0, 1);
    assert_eq!(f.seen().len(), 3, "{e}");
}

/// A read of `len` bytes at `offset` with a 300 ms timeout and two tries: its error, which
/// must come in well under 3 s.
fn read_timing_out(f: &Fault, offset: u64, len: usize) -> SourceError {
    let settings = Settings {
        recv_timeout: Duration::from_millis(300),
        attempts: 2,
        ..quick()
    };
    let s = HttpStream::open(f.url(), settings).unwrap();
    let t = Instant::now();
    let e = s.read_at(offset, &mut vec![0u8; len]).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    e
}

#[test]
fn fault_connection_refused_is_retried_then_reported() {
    let port = free_port();
    let t = Instant::now();
    let e = HttpStream::open(
        Url::parse(&format!("http://127.0.0.1:{port}/x")).unwrap(),
        quick(),
    )
    .err()
    .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(5 + 10 + 20 + 40),
        "backed off: {:?}",
        t.elapsed()
    );
    assert!(e.to_string().contains("127.0.0.1"), "{e}");
}

/// Issue 13 point 9: a server that stops mid-body fails the read with ETIMEDOUT once the
/// tries are spent, naming the stream and the bytes it waited for, in bounded time.
#[test]
fn fault_hang_mid_body_is_etimedout_naming_the_range() {
    let f = Fault::after_open(pseudo_random(1 << 20, 4), || Act::Hang(1000));
    let e = read_timing_out(&f, 4096, 65536);
    assert_eq!(e.errno(), 110, "{e}"); // ETIMEDOUT
    let msg = e.to_string();
    assert!(msg.contains("127.0.0.1") && msg.contains("bytes"), "{msg}");
}

/// The registry's `Stream` contract through nginx, and a stream whose server went away
/// failing its reads rather than returning zeros.
#[test]
fn nginx_stream_keeps_the_registry_contract() {
    let mut s = site();
    let stream = HttpStream::open(
        Url::parse(&s.nginx.url("images/disk.img")).unwrap(),
        quick(),
    )
    .unwrap();
    rbdm_registry::conformance::check_stream(&stream, Some(&s.data))
        .unwrap_or_else(|e| panic!("{e}"));
    let empty = open_url(&s.nginx.url("images/empty.img"));
    rbdm_registry::conformance::check_stream(&empty, Some(&[])).unwrap_or_else(|e| panic!("{e}"));
    let _ = s.nginx.child.kill();
    let _ = s.nginx.child.wait();
    rbdm_registry::conformance::check_fails(&stream).unwrap_or_else(|e| panic!("{e}"));
}
