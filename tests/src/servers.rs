//! Real servers for the tests, started on loopback: nginx (HTTP with Range) and moto (S3
//! that checks SigV4 signatures, set up with boto3, a client other than ours).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16, child: &mut Child, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

pub struct Server {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }
}

/// nginx serving the files of `root`.
pub fn nginx(root: &Path) -> Server {
    nginx_logged(root, None)
}

/// nginx serving `root`, with one access-log line per request in `log` when given.
pub fn nginx_logged(root: &Path, log: Option<&Path>) -> Server {
    let access = match log {
        Some(p) => format!("access_log {};", p.display()),
        None => "access_log off;".to_string(),
    };
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..5 {
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\nhttp {{\n  {access}\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n  keepalive_requests 100000;\n  server {{\n    listen 127.0.0.1:{port};\n\
             root {};\n  }}\n}}\n",
            root.display()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx must be installed (.ci/install installs nginx-light)");
        if wait_for(port, &mut child, "nginx") {
            return Server {
                child,
                port,
                _dir: dir,
            };
        }
    }
    panic!("nginx did not start");
}

/// moto listening on loopback, empty, authentication still off.
pub fn start_moto() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
    let mut child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("python3 with moto[server] must be installed (.ci/install)");
    assert!(
        wait_for(port, &mut child, "moto"),
        "moto exited: {}",
        std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default()
    );
    Server {
        child,
        port,
        _dir: dir,
    }
}

const SETUP: &str = r#"
import json, sys, boto3, urllib.request
endpoint, files = sys.argv[1], sys.argv[2:]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
iam, s3 = boto3.client("iam", **kw), boto3.client("s3", **kw)
allow = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
iam.create_user(UserName="rbdm")
iam.put_user_policy(UserName="rbdm", PolicyName="s3", PolicyDocument=allow)
key = iam.create_access_key(UserName="rbdm")["AccessKey"]
s3.create_bucket(Bucket="images")
for f in files:
    name, path = f.split("=", 1)
    s3.upload_file(path, "images", name)
urllib.request.urlopen(urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"})).read()
print(json.dumps({"ak": key["AccessKeyId"], "sk": key["SecretAccessKey"]}))
"#;

/// moto with signature checks on, holding `files` (`(object name, path)`) in bucket
/// `images`; returns the server and an access key and secret that may read them.
pub fn moto(files: &[(&str, &Path)]) -> (Server, String, String) {
    let server = start_moto();
    let port = server.port;
    let mut setup = Command::new("python3");
    setup.args(["-c", SETUP, &format!("http://127.0.0.1:{port}")]);
    for (name, path) in files {
        setup.arg(format!("{name}={}", path.display()));
    }
    let out = setup.output().unwrap();
    assert!(
        out.status.success(),
        "moto setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ak = creds["ak"].as_str().unwrap().to_string();
    let sk = creds["sk"].as_str().unwrap().to_string();
    (server, ak, sk)
}
