//! `qemu-nbd` started as Ceph's QA starts it (`--fork`, a pid file), killed with SIGKILL as
//! its `kill_nbd_server` does; the lock that keeps tests off NBD's default port 10809 at the
//! same time; and running a command with a time limit, so a hang fails a test instead of
//! stalling the suite.
use std::fs::File;
use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// NBD's IANA port, what `nbd://localhost` and `nbd://` mean.
pub const DEFAULT_PORT: u16 = 10809;

/// Holds NBD's default port for one test: an exclusive `flock` on a file in the temporary
/// directory. flock locks belong to the open file, so it serializes threads of one test
/// binary and test binaries run in parallel alike; the kernel drops it if the test dies.
pub struct PortLock {
    _file: File,
}

/// Waits until no other test uses port 10809 and takes it.
pub fn lock_default_port() -> PortLock {
    let path = std::env::temp_dir().join("rbdm-tests-nbd-port-10809.lock");
    let file = File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: flock on a descriptor this function owns; it blocks until the lock is ours.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock {}", path.display());
    PortLock { _file: file }
}

/// A daemonized `qemu-nbd`; SIGKILLed when dropped unless killed before.
pub struct QemuNbd {
    pid: libc::pid_t,
    alive: bool,
}

impl QemuNbd {
    /// `qemu-nbd --fork --pid-file PID_FILE ARGS... IMAGE`: returns once it listens (the
    /// parent exits only then).
    pub fn fork(args: &[&str], image: &Path, pid_file: &Path) -> QemuNbd {
        let _ = std::fs::remove_file(pid_file);
        let out = Command::new("qemu-nbd")
            .args(["--fork", "--pid-file"])
            .arg(pid_file)
            .args(args)
            .arg(image)
            .stdin(Stdio::null())
            .output()
            .expect("qemu-nbd must be installed (qemu-utils)");
        assert!(
            out.status.success(),
            "qemu-nbd {args:?} {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
        let pid = text.trim().parse().expect("a pid in qemu-nbd's pid file");
        QemuNbd { pid, alive: true }
    }

    /// Read-only, shared by up to 10 clients, staying up between them: Ceph's options.
    pub fn serve(extra: &[&str], image: &Path, format: &str, pid_file: &Path) -> QemuNbd {
        let mut args = vec![
            "-f",
            format,
            "--read-only",
            "--shared",
            "10",
            "--persistent",
        ];
        args.extend_from_slice(extra);
        Self::fork(&args, image, pid_file)
    }

    /// On loopback at port 10809 (qemu-nbd's default is every interface; tests stay local).
    pub fn on_default_port(extra: &[&str], image: &Path, format: &str, dir: &Path) -> QemuNbd {
        let mut args = vec!["--bind", "127.0.0.1"];
        args.extend_from_slice(extra);
        Self::serve(&args, image, format, &dir.join("qemu-nbd-10809.pid"))
    }

    /// On a unix socket; returns the server and its `nbd+unix` URI.
    pub fn on_socket(image: &Path, format: &str, socket: &Path) -> (QemuNbd, String) {
        Self::on_socket_with(&[], image, format, socket)
    }

    /// On a unix socket with more options (`--export-name`); the server and its `nbd+unix`
    /// URI (of the default export).
    pub fn on_socket_with(
        extra: &[&str],
        image: &Path,
        format: &str,
        socket: &Path,
    ) -> (QemuNbd, String) {
        let pid_file = PathBuf::from(format!("{}.pid", socket.display()));
        let sock = socket.to_str().expect("a UTF-8 socket path");
        let mut args = vec!["--socket", sock];
        args.extend_from_slice(extra);
        let server = Self::serve(&args, image, format, &pid_file);
        (server, format!("nbd+unix:///?socket={sock}"))
    }

    /// The daemon's pid, for tests that signal it (SIGSTOP, to play a stalled server).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// SIGKILL, and wait until the process is gone (or a zombie: its sockets are closed).
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if !self.alive {
            return;
        }
        self.alive = false;
        // SAFETY: signals the daemon whose pid qemu-nbd itself recorded for us.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(self.pid) {
            assert!(
                Instant::now() < deadline,
                "qemu-nbd {} survived SIGKILL",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Whether `pid` still runs: listed in /proc and not a zombie.
fn running(pid: libc::pid_t) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Runs `cmd` to its end, killing it and failing the test if it takes longer than `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("{cmd:?} did not finish in {limit:?}; stderr so far: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The text of the nodes `xpath` selects in `xml`, read by a real XML parser (xmlstarlet).
pub fn xpath(xml: &str, xpath: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("xmlstarlet")
        .args(["sel", "-t", "-v", xpath])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xmlstarlet must be installed (Debian package xmlstarlet)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(xml.as_bytes())
        .expect("write to xmlstarlet");
    let out = child.wait_with_output().expect("xmlstarlet runs");
    // Exit 1 only means nothing matched; a parse error also prints to stderr.
    assert!(
        out.stderr.is_empty(),
        "xmlstarlet cannot read {xml:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
