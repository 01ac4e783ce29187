//! STARTTLS through a raw client: a TLS server answers nothing but STARTTLS and ABORT in the
//! clear, hangs up on EXPORT_NAME, and after the upgrade serves the whole session over TLS; a
//! plain server refuses STARTTLS by policy. QEMU's TLS client is tested in tests/nbd_tls.rs.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rbdm_nbd::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert.pem, key.pem).
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

struct Tls {
    _dir: tempfile::TempDir,
    server: TlsConfig,
    client: Arc<ClientConfig>,
}

fn tls() -> Tls {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path());
    let server = TlsConfig::from_pem_files(&cert, &key, None).expect("credentials");
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&cert).expect("cert"))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        _dir: dir,
        server,
        client: Arc::new(client),
    }
}

/// Connects, greets, sends STARTTLS and, once acknowledged, goes on over TLS.
fn upgraded(port: u16, client: &Arc<ClientConfig>) -> Raw {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut raw = Raw {
        s: Box::new(tcp.try_clone().expect("clone")),
    };
    raw.greet();
    assert_eq!(raw.option(OPT_STARTTLS, &[])[0].0, REP_ACK);
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let conn = ClientConnection::new(Arc::clone(client), name).expect("client");
    raw.s = Box::new(StreamOwned::new(conn, tcp));
    raw
}

#[test]
fn before_starttls_only_starttls_and_abort_are_answered() {
    let t = tls();
    let (tcp, _unix) = Server::start_with(&[disk("disk", MIB)], Some(t.server));
    let mut raw = Raw::connect(tcp.port);
    for (opt, data) in [
        (OPT_LIST, vec![]),
        (OPT_STRUCTURED_REPLY, vec![]),
        (OPT_GO, vec![0u8; 6]),
        (OPT_INFO, vec![0u8; 6]),
        (42, b"whatever".to_vec()),
        // Drained, not buffered, and still refused for want of TLS.
        (OPT_LIST, vec![0u8; 1 << 20]),
    ] {
        let r = raw.option(opt, &data);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].0, REP_ERR_TLS_REQD, "option {opt}");
    }
    assert_eq!(raw.option(OPT_STARTTLS, b"x")[0].0, REP_ERR_INVALID);
    assert_eq!(raw.option(OPT_ABORT, &[])[0].0, REP_ACK);
    assert_closed(&mut raw);
    // EXPORT_NAME has no error reply: the server hangs up.
    let mut raw = Raw::connect(tcp.port);
    raw.send_option(OPT_EXPORT_NAME, b"disk");
    assert_closed(&mut raw);
}

#[test]
fn after_starttls_the_session_runs_over_tls() {
    let t = tls();
    let (tcp, _unix) = Server::start_with(&[disk("disk", 4 * MIB)], Some(t.server));
    let mut raw = upgraded(tcp.port, &t.client);
    assert_eq!(raw.option(OPT_STARTTLS, &[])[0].0, REP_ERR_INVALID, "twice");
    let list = raw.option(OPT_LIST, &[]);
    assert_eq!(list.len(), 2, "one export and ACK: {list:?}");
    raw.structured("disk");
    let (size, _) = raw.go("disk").expect("go");
    assert_eq!(size, 4 * MIB);
    // Several requests in flight, larger than one TLS record each way.
    let data: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
    raw.request(CMD_WRITE, 0, 1, 512 * 1024, data.len() as u32, &data);
    raw.request(CMD_FLUSH, 0, 2, 0, 0, &[]);
    for _ in 0..2 {
        let c = raw.reply(0);
        assert_eq!(c.kind, 0, "{c:?}");
    }
    raw.request(CMD_READ, CMD_FLAG_DF, 3, 512 * 1024, data.len() as u32, &[]);
    let c = raw.reply(0);
    assert_eq!(c.handle, 3);
    assert_eq!(&c.payload[8..], &data[..], "read back over TLS");
    let on_disk = read_file_range(&tcp.file("disk"), 512 * 1024, data.len());
    assert!(on_disk == data, "the write reached the device");
    raw.request(CMD_DISC, 0, 4, 0, 0, &[]);
    assert_closed(&mut raw);
}

#[test]
fn cleartext_after_starttls_ends_the_connection() {
    let t = tls();
    let (tcp, _unix) = Server::start_with(&[disk("disk", MIB)], Some(t.server));
    let mut raw = Raw::connect(tcp.port);
    // A client that does not wait for the ACK and goes on in the clear.
    let mut go = Vec::new();
    put_option(&mut go, OPT_STARTTLS, &[]);
    put_option(&mut go, OPT_LIST, &[]);
    std::io::Write::write_all(&mut raw.s, &go).expect("send");
    assert_eq!(raw.option_reply(OPT_STARTTLS).0, REP_ACK);
    assert_closed(&mut raw);
}

#[test]
fn a_plain_server_refuses_starttls_by_policy() {
    let (tcp, _unix) = Server::start(&[disk("disk", MIB)]);
    let mut raw = Raw::connect(tcp.port);
    let r = raw.option(OPT_STARTTLS, &[]);
    assert_eq!(r[0].0, REP_ERR_POLICY, "{r:?}");
    assert!(raw.go("disk").is_ok(), "the session goes on in the clear");
}

#[test]
fn clients_stalled_in_the_handshake_are_cut_off() {
    let t = tls();
    let (tcp, _unix) = Server::start_with(&[disk("disk", MIB)], Some(t.server));
    let start = std::time::Instant::now();
    // One that never sends an option, one that never sends its TLS hello, and one that
    // finished the handshake and then idles: only the first two are cut.
    let mut silent = Raw::connect(tcp.port);
    let mut no_hello = Raw::connect(tcp.port);
    assert_eq!(no_hello.option(OPT_STARTTLS, &[])[0].0, REP_ACK);
    let mut idle = upgraded(tcp.port, &t.client);
    idle.go("disk").expect("go");
    assert_closed(&mut silent);
    assert_closed(&mut no_hello);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(19),
        "cut after the 10 s limit, not at once nor never: {waited:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    idle.request(CMD_READ, 0, 7, 0, 4096, &[]);
    let c = idle.reply(4096);
    assert_eq!(
        (c.handle, c.kind),
        (7, 0),
        "a negotiated session has no such limit"
    );
}
