//! Serves one file over NBD, for benches against `qemu-nbd -f raw -t` of the same file.
//!
//! usage: nbd_file_server FILE (--unix PATH | --port N) [--read-only] [--name NAME]
//! Prints `ready` once listening; SIGINT or SIGTERM stops it (after flushing).

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rbdm_nbd::file_device::FileDevice;
use rbdm_nbd::{serve, Export, Listener};

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

struct Args {
    file: PathBuf,
    unix: Option<PathBuf>,
    port: Option<u16>,
    read_only: bool,
    name: String,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        file: PathBuf::new(),
        unix: None,
        port: None,
        read_only: false,
        name: String::new(),
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--unix" => args.unix = Some(it.next().ok_or("--unix needs a path")?.into()),
            "--port" => {
                let p = it.next().ok_or("--port needs a number")?;
                args.port = Some(p.parse().map_err(|_| format!("bad port {p:?}"))?);
            }
            "--read-only" => args.read_only = true,
            "--name" => args.name = it.next().ok_or("--name needs a value")?,
            _ if args.file.as_os_str().is_empty() => args.file = a.into(),
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    if args.file.as_os_str().is_empty() || args.unix.is_some() == args.port.is_some() {
        return Err(
            "usage: nbd_file_server FILE (--unix PATH | --port N) [--read-only] [--name NAME]"
                .into(),
        );
    }
    Ok(args)
}

fn run(args: Args) -> Result<(), String> {
    let device = FileDevice::open(&args.file, args.read_only)
        .map_err(|e| format!("{}: {e}", args.file.display()))?;
    let listener = match (&args.unix, args.port) {
        (Some(path), _) => {
            let _ = std::fs::remove_file(path);
            Listener::Unix(
                UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?,
            )
        }
        (None, Some(port)) => {
            Listener::Tcp(TcpListener::bind(("127.0.0.1", port)).map_err(|e| e.to_string())?)
        }
        (None, None) => unreachable!("checked by parse_args"),
    };
    let handler = on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    std::thread::spawn(move || {
        while !SIGNALLED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop2.store(true, Ordering::Relaxed);
    });
    let export = Export {
        name: args.name,
        description: args.file.display().to_string(),
        device: Arc::new(device),
    };
    println!("ready");
    serve(listener, vec![export], stop).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nbd_file_server: {e}");
            ExitCode::FAILURE
        }
    }
}
