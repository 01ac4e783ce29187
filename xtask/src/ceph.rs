//! A throwaway single-node Ceph Pacific cluster (one mon, one OSD, optionally radosgw) for
//! `cargo xtask bench --vs-ceph`: the logic of ../shared/tools/microceph.sh in Rust.
//!
//! Every daemon is a child process of xtask, listening on loopback only; dropping the
//! `Cluster` stops them (SIGTERM, then SIGKILL) and removes its directory. What it is not: a
//! way to run Ceph for anything but measurements (pool size 1, no mgr, cephx keys on disk).

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Programs the cluster needs, and the Debian package that ships each.
const TOOLS: &[(&str, &str)] = &[
    ("ceph-mon", "ceph-mon"),
    ("ceph-osd", "ceph-osd"),
    ("ceph", "ceph-common"),
    ("rbd", "ceph-common"),
    ("ceph-authtool", "ceph-common"),
    ("monmaptool", "ceph-common"),
];
const RGW_TOOLS: &[(&str, &str)] = &[("radosgw", "radosgw"), ("radosgw-admin", "radosgw")];

/// The OSD's block file is sparse: this is its apparent size, not what it uses.
const OSD_BYTES: u64 = 20 << 30;

/// An S3 endpoint served by the cluster's radosgw, with a user that may create buckets.
pub struct Rgw {
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
}

impl Rgw {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    /// Started daemons, in start order; stopped in reverse.
    daemons: Vec<(String, Child)>,
    rgw: Option<Rgw>,
    pub started_in: Duration,
}

/// The programs from `TOOLS` (and `RGW_TOOLS` when `with_rgw`) not found on PATH.
pub fn missing(with_rgw: bool) -> Vec<&'static str> {
    missing_on(std::env::var_os("PATH").as_deref(), with_rgw)
}

fn tools(with_rgw: bool) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    let rgw: &[(&str, &str)] = if with_rgw { RGW_TOOLS } else { &[] };
    TOOLS.iter().chain(rgw)
}

fn missing_on(path: Option<&OsStr>, with_rgw: bool) -> Vec<&'static str> {
    let dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    tools(with_rgw)
        .filter(|(prog, _)| !dirs.iter().any(|d| d.join(prog).is_file()))
        .map(|(prog, _)| *prog)
        .collect()
}

/// The error for missing programs: which, and the apt-get line that installs them.
fn not_installed(gone: &[&str], with_rgw: bool) -> anyhow::Error {
    let mut pkgs: Vec<&str> = tools(with_rgw)
        .filter(|(prog, _)| gone.contains(prog))
        .map(|(_, pkg)| *pkg)
        .collect();
    pkgs.dedup();
    anyhow!(
        "Ceph is not installed: {} not found on PATH (apt-get install -y {})",
        gone.join(", "),
        pkgs.join(" ")
    )
}

impl Cluster {
    /// Starts a cluster whose files all live in `dir` (which must not exist or be empty):
    /// one mon, one BlueStore OSD on a sparse file, pool `rbd`, and with `with_rgw` a radosgw
    /// with an S3 user.
    pub fn start(dir: &Path, with_rgw: bool) -> Result<Cluster> {
        let gone = missing(with_rgw);
        if !gone.is_empty() {
            return Err(not_installed(&gone, with_rgw));
        }
        if fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
        {
            bail!(
                "{} is not empty; a cluster needs a fresh directory",
                dir.display()
            );
        }
        for sub in ["log", "run", "crash", "mon.a", "osd.0"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let t0 = Instant::now();
        // Built first so that a failure half-way stops what did start and removes the files.
        let mut c = Cluster {
            conf: dir.join("ceph.conf"),
            dir,
            daemons: Vec::new(),
            rgw: None,
            started_in: Duration::ZERO,
        };
        let ports = Ports {
            mon_v2: free_port()?,
            mon_v1: free_port()?,
            rgw: free_port()?,
        };
        c.write_conf(&ports)?;
        c.start_mon(&ports)?;
        c.start_osd()?;
        c.ceph(&["osd", "pool", "create", "rbd", "8", "8"])?;
        run_for(c.rbd().args(["pool", "init", "rbd"]), 60)?;
        if with_rgw {
            c.start_rgw(ports.rgw)?;
        }
        c.started_in = t0.elapsed();
        Ok(c)
    }

    /// The cluster's ceph.conf, for `rbd -c`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    pub fn rgw(&self) -> Option<&Rgw> {
        self.rgw.as_ref()
    }

    /// radosgw's log: one `beast:` line per request served.
    pub fn rgw_log(&self) -> PathBuf {
        self.dir.join("log/client.rgw.a.log")
    }

    /// `rbd -c CONF`, ready for more arguments.
    pub fn rbd(&self) -> Command {
        let mut c = Command::new("rbd");
        c.arg("-c").arg(self.conf());
        c
    }

    fn ceph(&self, args: &[&str]) -> Result<String> {
        run_for(
            Command::new("ceph")
                .arg("-c")
                .arg(&self.conf)
                .args(["--connect-timeout", "10"])
                .args(args),
            60,
        )
    }

    fn write_conf(&self, p: &Ports) -> Result<()> {
        let d = self.dir.display();
        let text = format!(
            "[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {d}/run
crash dir = {d}/crash
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
log to stderr = false
err to stderr = true
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 1
mon data avail crit = 0
mon max pg per osd = 1000
osd objectstore = bluestore

[mon]
mon data = {d}/mon.$id
mon cluster log file = {d}/log/cluster.log

[osd]
osd data = {d}/osd.$id
keyring = {d}/osd.$id/keyring
osd memory target = 1073741824
osd class load list = *
osd class default list = *
bluestore block create = true
bluestore block size = {OSD_BYTES}
bluestore fsck on mount = false
bluestore fsck on mkfs = false

[client]
keyring = {d}/keyring
# CLI clients get no admin socket: concurrent rbd calls would fight over one path
admin socket =

[client.rgw.a]
keyring = {d}/rgw.a/keyring
admin socket = {d}/run/$name.asok
rgw data = {d}/rgw.a
rgw frontends = beast endpoint=127.0.0.1:{rgw}
rgw dns name = 127.0.0.1
",
            fsid = uuid()?,
            v2 = p.mon_v2,
            v1 = p.mon_v1,
            rgw = p.rgw,
        );
        fs::write(&self.conf, text).with_context(|| format!("cannot write {}", self.conf.display()))
    }

    fn start_mon(&mut self, p: &Ports) -> Result<()> {
        let mon_keyring = self.dir.join("mon.keyring");
        let admin_keyring = self.dir.join("keyring");
        run_for(
            Command::new("ceph-authtool")
                .arg("--create-keyring")
                .arg(&mon_keyring)
                .args(["--gen-key", "-n", "mon.", "--cap", "mon", "allow *"]),
            30,
        )?;
        run_for(
            Command::new("ceph-authtool")
                .arg("--create-keyring")
                .arg(&admin_keyring)
                .args(["--gen-key", "-n", "client.admin"])
                .args(["--cap", "mon", "allow *", "--cap", "osd", "allow *"])
                .args(["--cap", "mgr", "allow *", "--cap", "mds", "allow *"]),
            30,
        )?;
        // The mon's initial keyring must hold the admin key too, or nobody could log in.
        let admin = fs::read(&admin_keyring).context("cannot read the admin keyring")?;
        fs::OpenOptions::new()
            .append(true)
            .open(&mon_keyring)
            .and_then(|mut f| f.write_all(&admin))
            .context("cannot extend the mon keyring")?;
        let monmap = self.dir.join("monmap");
        let fsid = conf_value(&self.conf, "fsid")?;
        run_for(
            Command::new("monmaptool")
                .args(["--create", "--fsid", &fsid, "--addv", "a"])
                .arg(format!(
                    "[v2:127.0.0.1:{},v1:127.0.0.1:{}]",
                    p.mon_v2, p.mon_v1
                ))
                .arg(&monmap),
            30,
        )?;
        run_for(
            Command::new("ceph-mon")
                .arg("-c")
                .arg(&self.conf)
                .args(["--mkfs", "-i", "a", "--monmap"])
                .arg(&monmap)
                .arg("--keyring")
                .arg(&mon_keyring),
            60,
        )?;
        self.spawn("mon.a", Command::new("ceph-mon").args(["-i", "a", "-f"]))?;
        self.wait_for("mon quorum", 60, |c| {
            Ok(c.ceph_quick(&["mon", "stat"]).is_ok())
        })
    }

    fn start_osd(&mut self) -> Result<()> {
        let osd_dir = self.dir.join("osd.0");
        let uuid = uuid()?;
        let key = run_for(Command::new("ceph-authtool").arg("--gen-print-key"), 30)?;
        let key = key.trim();
        let secret = osd_dir.join("new.json");
        fs::write(&secret, format!("{{\"cephx_secret\": \"{key}\"}}\n"))
            .context("cannot write the OSD secret")?;
        let id = self.ceph(&["osd", "new", &uuid, "-i", &secret.to_string_lossy()])?;
        let _ = fs::remove_file(&secret);
        if id.trim() != "0" {
            bail!("ceph osd new gave id {:?}, expected 0", id.trim());
        }
        fs::write(osd_dir.join("keyring"), format!("[osd.0]\n\tkey = {key}\n"))
            .context("cannot write the OSD keyring")?;
        run_for(
            Command::new("ceph-osd").arg("-c").arg(&self.conf).args([
                "-i",
                "0",
                "--mkfs",
                "--osd-uuid",
                &uuid,
            ]),
            120,
        )
        .context("ceph-osd --mkfs (BlueStore) failed")?;
        self.spawn("osd.0", Command::new("ceph-osd").args(["-i", "0", "-f"]))?;
        self.wait_for("osd.0 up", 120, |c| {
            Ok(c.ceph_quick(&["osd", "dump", "-f", "json"])
                .map(|s| s.contains("\"up\":1"))
                .unwrap_or(false))
        })
    }

    fn start_rgw(&mut self, port: u16) -> Result<()> {
        let rgw_dir = self.dir.join("rgw.a");
        fs::create_dir_all(&rgw_dir).context("cannot create the radosgw directory")?;
        let keyring = rgw_dir.join("keyring");
        self.ceph(&[
            "auth",
            "get-or-create",
            "client.rgw.a",
            "mon",
            "allow rw",
            "osd",
            "allow rwx",
            "mgr",
            "allow rw",
            "-o",
            &keyring.to_string_lossy(),
        ])?;
        self.spawn(
            "rgw.a",
            Command::new("radosgw").args(["-n", "client.rgw.a", "-f"]),
        )?;
        // radosgw creates its zone's pools before it answers; that is most of its start time.
        self.wait_for("radosgw", 120, |_| Ok(http_ok(port)))?;
        let access_key = hex(&random(10)?).to_uppercase();
        let secret_key = hex(&random(20)?);
        run_for(
            Command::new("radosgw-admin")
                .arg("-c")
                .arg(&self.conf)
                .args(["user", "create", "--uid=tester", "--display-name=tester"])
                .arg(format!("--access-key={access_key}"))
                .arg(format!("--secret-key={secret_key}")),
            60,
        )?;
        self.rgw = Some(Rgw {
            port,
            access_key,
            secret_key,
        });
        Ok(())
    }

    /// A `ceph` call that gives up quickly: used while polling for a daemon.
    fn ceph_quick(&self, args: &[&str]) -> Result<String> {
        run_for(
            Command::new("ceph")
                .arg("-c")
                .arg(&self.conf)
                .args(["--connect-timeout", "2"])
                .args(args),
            10,
        )
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<()> {
        let log = self.dir.join(format!("log/{name}.stdout"));
        let out =
            fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone().context("cannot share a log file")?;
        cmd.arg("-c").arg(&self.conf);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to signal the daemon if
        // xtask dies, so a killed bench leaves no stray cluster behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", crate::util::show(cmd)))?;
        self.daemons.push((name.to_string(), child));
        Ok(())
    }

    /// Polls `ready` until it says yes; fails early, with the log's tail, if a daemon died.
    fn wait_for(
        &mut self,
        what: &str,
        secs: u64,
        ready: impl Fn(&Self) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if ready(self)? {
                return Ok(());
            }
            for (name, child) in &mut self.daemons {
                if let Ok(Some(status)) = child.try_wait() {
                    let own = self.dir.join(format!("log/{name}.stdout"));
                    let log = self.dir.join(format!("log/{}.log", daemon_log_name(name)));
                    bail!(
                        "{name} exited ({status}) while waiting for {what}; its output ends:\n{}{}",
                        tail(&own),
                        tail(&log)
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout after {secs} s waiting for {what} (logs in {})",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // One at a time, newest first, so the OSD can still tell the mon it is going down.
        while let Some((_, mut child)) = self.daemons.pop() {
            stop(&mut child);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: a plain signal to our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct Ports {
    mon_v2: u16,
    mon_v1: u16,
    rgw: u16,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("cannot bind a loopback port")?
        .local_addr()?
        .port())
}

/// Runs a command for at most `secs` seconds and returns its stdout; fails with its stderr.
fn run_for(cmd: &mut Command, secs: u64) -> Result<String> {
    let shown = crate::util::show(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    // Read both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let mut err = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe"))?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} timed out after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    if !status.success() {
        bail!("{shown} failed: {status}\n{err}");
    }
    Ok(out)
}

/// True once a GET / on loopback `port` answers 200 (radosgw's anonymous bucket list).
fn http_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

fn uuid() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("cannot read /proc/sys/kernel/random/uuid")?
        .trim()
        .to_string())
}

fn random(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read /dev/urandom")?;
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn conf_value(conf: &Path, key: &str) -> Result<String> {
    let text =
        fs::read_to_string(conf).with_context(|| format!("cannot read {}", conf.display()))?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .ok_or_else(|| anyhow!("{key} missing from {}", conf.display()))
}

/// Ceph names a daemon's log after its entity name: `mon.a`, `osd.0`, `client.rgw.a`.
fn daemon_log_name(name: &str) -> String {
    if name.starts_with("rgw.") {
        format!("client.{name}")
    } else {
        name.to_string()
    }
}

/// The last lines of a log file, for an error message.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(15);
    lines[from..].join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a real cluster (about 20 s), makes an image through S3-free `rbd`, and checks
    /// that dropping the cluster ends every daemon and removes its directory.
    #[test]
    #[ignore = "needs Debian's ceph-mon, ceph-osd, ceph-common, radosgw; run with --ignored"]
    fn cluster_starts_serves_and_goes_away() {
        let dir = std::env::temp_dir().join(format!("xtask-ceph-test-{}", std::process::id()));
        let c = Cluster::start(&dir, true).expect("cluster start");
        let out = run_for(c.rbd().args(["create", "--size", "8M", "rbd/t"]), 60)
            .and_then(|_| run_for(c.rbd().args(["ls", "rbd"]), 60))
            .expect("rbd create and ls");
        assert_eq!(out.trim(), "t");
        let rgw = c.rgw().expect("rgw requested");
        assert!(http_ok(rgw.port));
        let pids: Vec<u32> = c.daemons.iter().map(|(_, ch)| ch.id()).collect();
        assert_eq!(pids.len(), 3);
        drop(c);
        assert!(!dir.exists());
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} still there"
            );
        }
    }

    #[test]
    fn missing_tools_are_named_with_their_packages() {
        let none = missing_on(Some(OsStr::new("")), true);
        assert_eq!(none.len(), TOOLS.len() + RGW_TOOLS.len());
        let err = not_installed(&none, true).to_string();
        assert!(
            err.contains("ceph-mon") && err.contains("radosgw-admin"),
            "{err}"
        );
        assert!(
            err.contains("apt-get install -y ceph-mon ceph-osd ceph-common radosgw"),
            "{err}"
        );
        assert!(!missing_on(Some(OsStr::new("")), false).contains(&"radosgw"));
    }

    #[test]
    fn a_program_on_path_is_not_missing() {
        let dir = std::env::temp_dir().join(format!("xtask-ceph-path-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("ceph-mon"), "").expect("write");
        let gone = missing_on(Some(dir.as_os_str()), false);
        let _ = fs::remove_dir_all(&dir);
        assert!(!gone.contains(&"ceph-mon"), "{gone:?}");
        assert!(gone.contains(&"ceph-osd"), "{gone:?}");
        let err = not_installed(&gone, false).to_string();
        assert!(
            err.contains("apt-get install -y ceph-osd ceph-common)"),
            "{err}"
        );
    }
}
