//! `rbdm nbd export` beyond loopback: TLS through STARTTLS with QEMU's own TLS client
//! (`qemu-io --object tls-creds-x509`), client certificates under `--tls-ca`, plain and TLS
//! clients each refused by the other kind of server, bad credential files refused before
//! anything listens, and the warning for a non-loopback address served in the clear.
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rbdm_tests::qemu_nbd::output_within;
use rbdm_tests::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `openssl` with `args` in `dir`; it must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA in `dir` (ca-cert.pem, ca-key.pem), as tls-creds-x509 expects it.
fn make_ca(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-subj",
            "/CN=rbdm-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `<who>-cert.pem` and `<who>-key.pem` in `dir`, signed by the CA in `ca_dir`; `who` is
/// "server" (valid for 127.0.0.1) or "client".
fn make_cert(dir: &Path, ca_dir: &Path, who: &str) {
    let (usage, name) = match who {
        "server" => ("serverAuth", "IP:127.0.0.1,DNS:localhost"),
        _ => ("clientAuth", "DNS:rbdm-test-client"),
    };
    let ext = dir.join(format!("{who}.ext"));
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,\
             keyEncipherment\nextendedKeyUsage={usage}\nsubjectAltName={name}\n"
        ),
    )
    .expect("write ext");
    let key = format!("{who}-key.pem");
    let csr = format!("{who}.csr");
    let cert = format!("{who}-cert.pem");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={who}"),
        ],
    );
    let ca_cert = ca_dir.join("ca-cert.pem");
    let ca_key = ca_dir.join("ca-key.pem");
    let serial = dir.join(format!("{who}.srl"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-out",
            &cert,
            "-CA",
            ca_cert.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAserial",
            serial.to_str().unwrap(),
            "-CAcreateserial",
            "-extfile",
            ext.to_str().unwrap(),
        ],
    );
}

/// The credentials of one test: `server/` holds the CA and the server's certificate and key;
/// `client/` the CA and a client certificate; `anon/` only the CA (a client that has no
/// certificate); `stranger/` a client certificate from another CA.
struct Creds {
    server: std::path::PathBuf,
    client: std::path::PathBuf,
    anon: std::path::PathBuf,
    stranger: std::path::PathBuf,
}

impl Creds {
    fn new(env: &Env) -> Creds {
        let root = env.path("tls");
        let c = Creds {
            server: root.join("server"),
            client: root.join("client"),
            anon: root.join("anon"),
            stranger: root.join("stranger"),
        };
        make_ca(&c.server);
        make_cert(&c.server, &c.server, "server");
        for dir in [&c.client, &c.anon] {
            std::fs::create_dir_all(dir).expect("mkdir");
            std::fs::copy(c.server.join("ca-cert.pem"), dir.join("ca-cert.pem")).expect("cp");
        }
        make_cert(&c.client, &c.server, "client");
        // Trusts our server's CA, but its own certificate comes from a CA we never accept.
        let other = root.join("other-ca");
        make_ca(&other);
        std::fs::create_dir_all(&c.stranger).expect("mkdir");
        std::fs::copy(c.server.join("ca-cert.pem"), c.stranger.join("ca-cert.pem")).expect("cp");
        make_cert(&c.stranger, &other, "client");
        c
    }

    /// `--tls-cert … --tls-key …` and, with `verify`, `--tls-ca …`.
    fn args(&self, verify: bool) -> Vec<String> {
        let file = |name: &str| self.server.join(name).to_str().unwrap().to_string();
        let mut a = vec![
            "--tls-cert".into(),
            file("server-cert.pem"),
            "--tls-key".into(),
            file("server-key.pem"),
        ];
        if verify {
            a.extend(["--tls-ca".into(), file("ca-cert.pem")]);
        }
        a
    }
}

/// A running `rbdm nbd export`, its port, export name and what it printed on stderr so far.
struct Export {
    proc: Killed,
    port: u16,
    name: String,
    stderr: std::thread::JoinHandle<String>,
}

impl Export {
    fn start(env: &Env, image: &str, bind: &str, extra: &[String]) -> Export {
        let mut args = vec!["nbd", "export", image, "--bind", bind];
        args.extend(extra.iter().map(String::as_str));
        let mut child = env
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rbdm nbd export starts");
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        let _ = BufReader::new(out).read_line(&mut line);
        let proc = Killed(child);
        // nbd://ADDR:PORT/NAME
        let Some(rest) = line.trim().strip_prefix("nbd://") else {
            drop(proc);
            panic!(
                "no URI printed: {line:?}, stderr: {}",
                stderr.join().unwrap_or_default()
            );
        };
        let (addr, name) = rest.split_once('/').expect("URI has a name");
        let port = addr.rsplit_once(':').expect("URI has a port").1;
        Export {
            proc,
            port: port.parse().expect("port"),
            name: name.to_string(),
            stderr,
        }
    }

    /// SIGTERM, a clean exit, and everything the export printed on stderr.
    fn stop(self) -> String {
        self.proc.stop();
        self.stderr.join().expect("stderr reader")
    }

    /// `--image-opts` for this export, with TLS when `creds` is a tls-creds-x509 directory.
    fn image_opts(&self, creds: Option<&Path>) -> String {
        let mut o = format!(
            "driver=nbd,host=127.0.0.1,port={},export={}",
            self.port, self.name
        );
        if creds.is_some() {
            o.push_str(",tls-creds=tls0");
        }
        o
    }
}

/// `--object tls-creds-x509` for a client whose credentials are in `creds`, if any.
fn tls_object(cmd: &mut Command, creds: Option<&Path>) {
    if let Some(dir) = creds {
        cmd.arg("--object").arg(format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            dir.display()
        ));
    }
}

/// qemu-io with `-c` commands against `ex`; true only when every command succeeded.
fn qemu_io(ex: &Export, creds: Option<&Path>, cmds: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("qemu-io");
    tls_object(&mut cmd, creds);
    cmd.arg("--image-opts").arg(ex.image_opts(creds));
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    let out = output_within(&mut cmd, LIMIT);
    let text = both(&out);
    let ok = out.status.success()
        && !["failed", "error", "Error", "Could not"]
            .iter()
            .any(|b| text.contains(b));
    (ok, text)
}

/// qemu-io as in [`qemu_io`], which must succeed.
fn serves(ex: &Export, creds: Option<&Path>, cmds: &[&str]) {
    let (ok, out) = qemu_io(ex, creds, cmds);
    assert!(ok, "{out}");
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn image(env: &Env, name: &str) {
    let raw = env.path(&format!("{name}.raw"));
    make_raw(&raw, 16 * MIB, &[(4 * MIB, MIB, 0x21)]);
    env.ok(&["import", raw.to_str().unwrap(), name]);
}

fn exported(env: &Env, name: &str) -> Vec<u8> {
    let out = env.path(&format!("{name}.out"));
    let _ = std::fs::remove_file(&out);
    env.ok(&["export", name, out.to_str().unwrap()]);
    std::fs::read(&out).expect("read export")
}

#[test]
fn qemu_reads_and_writes_over_tls() {
    let env = Env::new();
    let creds = Creds::new(&env);
    image(&env, "d");
    for verify in [false, true] {
        let ex = Export::start(&env, "d", "127.0.0.1:0", &creds.args(verify));
        let (ok, out) = qemu_io(
            &ex,
            Some(&creds.client),
            &[
                "write -P 0x5a 0 64k",
                "read -P 0x5a 0 64k",
                // Larger than a TLS record and than rustls's send buffer, both ways.
                "write -P 0x6b 8M 3M",
                "read -P 0x6b 8M 3M",
                "read -P 0x21 4M 1M",
            ],
        );
        assert!(ok, "TLS session (--tls-ca: {verify}):\n{out}");
        // Whole-image reads with many requests in flight, as a copy tool does them.
        let copy = env.path("copy.raw");
        let mut cmd = Command::new("qemu-img");
        cmd.arg("convert");
        tls_object(&mut cmd, Some(&creds.client));
        cmd.args([
            "--image-opts",
            &ex.image_opts(Some(&creds.client)),
            "-O",
            "raw",
        ])
        .arg(&copy);
        let conv = output_within(&mut cmd, LIMIT);
        assert!(conv.status.success(), "qemu-img convert: {}", both(&conv));
        let stderr = ex.stop();
        assert!(
            !stderr.contains("warning"),
            "loopback: no warning: {stderr}"
        );
        let mut want = raw_contents(16 * MIB, &[(4 * MIB, MIB, 0x21)]);
        want[..64 * KIB as usize].fill(0x5a);
        want[8 * MIB as usize..11 * MIB as usize].fill(0x6b);
        bytes_equal(&exported(&env, "d"), &want).unwrap();
        file_is(&copy, &want).unwrap();
    }
}

#[test]
fn a_tls_server_refuses_plain_clients() {
    let env = Env::new();
    let creds = Creds::new(&env);
    image(&env, "d");
    let ex = Export::start(&env, "d", "127.0.0.1:0", &creds.args(false));
    let (ok, out) = qemu_io(&ex, None, &["write -P 0x77 4M 4k"]);
    assert!(!ok, "a plain client must be refused:\n{out}");
    assert!(
        out.contains("send STARTTLS first"),
        "QEMU shows the server's reason:\n{out}"
    );
    // The old-style EXPORT_NAME path, which has no error reply, is refused too.
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "-f", "raw"])
        .arg(format!("nbd://127.0.0.1:{}/{}", ex.port, ex.name));
    let info = output_within(&mut cmd, LIMIT);
    assert!(!info.status.success(), "qemu-img info: {}", both(&info));
    // Refusing one client leaves the server serving the others.
    serves(&ex, Some(&creds.client), &["read -P 0x21 4M 4k"]);
    ex.stop();
    let data = exported(&env, "d");
    assert!(data[4 * MIB as usize..][..4096].iter().all(|&b| b == 0x21));
}

#[test]
fn a_plain_server_refuses_tls_clients() {
    let env = Env::new();
    let creds = Creds::new(&env);
    image(&env, "d");
    let ex = Export::start(&env, "d", "127.0.0.1:0", &[]);
    let (ok, out) = qemu_io(&ex, Some(&creds.client), &["read 0 4k"]);
    assert!(!ok, "a TLS client must not fall back to plain text:\n{out}");
    assert!(
        out.contains("TLS is not configured"),
        "QEMU shows the server's reason:\n{out}"
    );
    serves(&ex, None, &["read -P 0x21 4M 4k"]);
    ex.stop();
}

#[test]
fn with_tls_ca_clients_need_a_certificate_from_that_ca() {
    let env = Env::new();
    let creds = Creds::new(&env);
    image(&env, "d");
    let ex = Export::start(&env, "d", "127.0.0.1:0", &creds.args(true));
    for (who, dir) in [
        ("no certificate", &creds.anon),
        ("another CA", &creds.stranger),
    ] {
        let (ok, out) = qemu_io(&ex, Some(dir), &["write -P 0x77 4M 4k"]);
        assert!(!ok, "a client with {who} must be refused:\n{out}");
    }
    serves(&ex, Some(&creds.client), &["read -P 0x21 4M 4k"]);
    ex.stop();
    let data = exported(&env, "d");
    assert!(data[4 * MIB as usize..][..4096].iter().all(|&b| b == 0x21));
    // Without --tls-ca the same certificate-less client is let in.
    let ex = Export::start(&env, "d", "127.0.0.1:0", &creds.args(false));
    serves(&ex, Some(&creds.anon), &["read -P 0x21 4M 4k"]);
    ex.stop();
}

#[test]
fn non_loopback_without_tls_warns_and_still_serves() {
    let env = Env::new();
    let creds = Creds::new(&env);
    image(&env, "d");
    let ex = Export::start(&env, "d", "0.0.0.0:0", &[]);
    serves(&ex, None, &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"]);
    let stderr = ex.stop();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "one warning line: {stderr:?}");
    let w = warnings[0];
    assert!(
        w.contains("0.0.0.0:") && w.contains("without TLS") && w.contains("read and write"),
        "{w}"
    );
    // Read-only exports say what is exposed.
    let ex = Export::start(&env, "d", "0.0.0.0:0", &["--read-only".into()]);
    let stderr = ex.stop();
    assert!(stderr.contains("can read the image"), "{stderr}");
    // TLS with client certificates: nothing to warn about.
    let ex = Export::start(&env, "d", "0.0.0.0:0", &creds.args(true));
    serves(&ex, Some(&creds.client), &["read -P 0x5a 0 64k"]);
    let stderr = ex.stop();
    assert!(!stderr.contains("warning"), "{stderr}");
    // TLS that lets any client in is still open to anyone who reaches the address.
    let ex = Export::start(&env, "d", "0.0.0.0:0", &creds.args(false));
    let stderr = ex.stop();
    assert!(stderr.contains("without --tls-ca"), "{stderr}");
}

#[test]
fn bad_credentials_fail_with_einval_before_listening() {
    let env = Env::new();
    let creds = Creds::new(&env);
    image(&env, "d");
    // A port that is taken: an export that listened before checking the files would fail
    // with EADDRINUSE instead.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let bind = taken.local_addr().expect("addr").to_string();
    let garbage = env.path("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let empty = env.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let s = |n: &str| creds.server.join(n).to_str().unwrap().to_string();
    let c = |n: &str| creds.client.join(n).to_str().unwrap().to_string();
    let g = garbage.to_str().unwrap().to_string();
    let e = empty.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (vec![g.clone(), s("server-key.pem")], vec![g.clone()]),
        (vec![s("server-cert.pem"), e.clone()], vec![e.clone()]),
        // A certificate file given as the key: no key in it.
        (
            vec![s("server-cert.pem"), s("server-cert.pem")],
            vec![s("server-cert.pem")],
        ),
        // A valid key that belongs to another certificate.
        (
            vec![s("server-cert.pem"), c("client-key.pem")],
            vec![s("server-cert.pem"), c("client-key.pem")],
        ),
        (
            vec![s("server-cert.pem"), s("server-key.pem"), e.clone()],
            vec![e.clone()],
        ),
        (
            vec!["/dev/zero".into(), s("server-key.pem")],
            vec!["/dev/zero".into()],
        ),
    ];
    for (files, named) in cases {
        let mut args = vec!["nbd", "export", "d", "--bind", &bind];
        let flags = ["--tls-cert", "--tls-key", "--tls-ca"];
        for (flag, f) in flags.iter().zip(&files) {
            args.extend([*flag, f.as_str()]);
        }
        let out = output_within(&mut env.command(&args), LIMIT);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(libc::EINVAL), "{files:?}: {err}");
        for n in named {
            assert!(err.contains(&n), "{files:?}: the error names {n}: {err}");
        }
        assert!(!err.contains("listen"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A missing file reports its errno.
    let missing = env.path("missing.pem");
    let args = [
        "nbd",
        "export",
        "d",
        "--bind",
        &bind,
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        &s("server-key.pem"),
    ];
    let out = output_within(&mut env.command(&args), LIMIT);
    assert_eq!(out.status.code(), Some(libc::ENOENT), "{}", stderr(&out));
    assert!(stderr(&out).contains("missing.pem"), "{}", stderr(&out));
    // --tls-key without --tls-cert is a usage error.
    let out = env.rbdm(&[
        "nbd",
        "export",
        "d",
        "--bind",
        &bind,
        "--tls-key",
        &s("server-key.pem"),
    ]);
    assert_eq!(out.status.code(), Some(libc::EINVAL), "{}", stderr(&out));
    drop(taken);
}
