//! `rbdm nbd export`: serves one image (or a snapshot, read-only) over NBD in the foreground
//! until SIGINT or SIGTERM, then flushes and closes the image, as `rbd-nbd` does for a device.
//! With `--tls-cert`/`--tls-key` clients must use TLS; without, a non-loopback address warns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rbdm_image::Image;
use rbdm_nbd::{BlockDevice, Export, Listener, TlsConfig};

use crate::args::NbdExportArgs;
use crate::ctx::{Ctx, Snap};
use crate::output::{err, CmdResult, Fail};

/// An open image as an NBD block device.
struct ImageDevice(Image);

fn io_err(e: rbdm_image::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}

impl BlockDevice for ImageDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        self.0.is_read_only()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, buf).map_err(io_err)
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data).map_err(io_err)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush().map_err(io_err)
    }
    fn trim(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.discard(offset, len).map_err(io_err)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.write_zeroes(offset, len).map_err(io_err)
    }
    fn allocated(&self, offset: u64, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
        self.0.allocated_extents(offset, len).map_err(io_err)
    }
    fn allocation_granule(&self) -> u64 {
        self.0.allocation_granule()
    }
    fn allocation_token(&self, offset: u64) -> std::io::Result<u64> {
        self.0.allocation_token(offset).map_err(io_err)
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn export(ctx: &Ctx, a: &NbdExportArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.image, Snap::Maybe)?;
    // Credentials are checked before anything listens: a bad file never leaves a port open.
    let tls = tls_config(a)?;
    let listener = listen(a)?;
    let rbd = ctx.rbd()?;
    let image = rbd
        .open(&spec, a.read_only)
        .map_err(err(format!("error opening image {}", spec.image)))?;
    if let Some(warning) = exposure_warning(&listener, tls.as_ref(), image.is_read_only()) {
        eprintln!("rbdm: warning: {warning}");
    }
    let name = a.export_name.clone().unwrap_or_else(|| spec.to_string());
    let uri = match &listener {
        Listener::Tcp(l) => format!(
            "nbd://{}/{}",
            l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            name
        ),
        Listener::Unix(_) => format!(
            "nbd+unix:///{}?socket={}",
            name,
            a.socket
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    };
    // SAFETY: installing async-signal-safe handlers that only store to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let relay = stop.clone();
    std::thread::spawn(move || loop {
        if STOP.load(Ordering::SeqCst) {
            relay.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    let device = Arc::new(ImageDevice(image));
    println!("{uri}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let exports = vec![Export {
        name,
        description: format!("rbdm image {spec}"),
        device: device.clone(),
    }];
    let served = rbdm_nbd::serve_with(listener, exports, stop, tls);
    if let Some(path) = &a.socket {
        let _ = std::fs::remove_file(path);
    }
    served.map_err(|e| Fail::errno(libc::EIO, "nbd export failed", &rbdm_store::report(&e)))?;
    let image = Arc::try_unwrap(device)
        .map_err(|_| Fail::errno(libc::EBUSY, "nbd export", "connections still open"))?;
    image
        .0
        .close()
        .map_err(err(format!("error closing image {}", spec.image)))
}

fn listen(a: &NbdExportArgs) -> Result<Listener, Fail> {
    match (&a.bind, &a.socket) {
        (Some(addr), None) => std::net::TcpListener::bind(addr)
            .map(Listener::Tcp)
            .map_err(|e| Fail::io(&e, format!("cannot listen on {addr}"))),
        (None, Some(path)) => std::os::unix::net::UnixListener::bind(path)
            .map(Listener::Unix)
            .map_err(|e| Fail::io(&e, format!("cannot listen on {}", path.display()))),
        _ => Err(Fail::invalid(
            "give exactly one of --bind ADDR:PORT and --socket PATH",
        )),
    }
}

/// `--tls-cert` and `--tls-key` (clap requires both or neither), with `--tls-ca`.
fn tls_config(a: &NbdExportArgs) -> Result<Option<TlsConfig>, Fail> {
    let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) else {
        return Ok(None);
    };
    TlsConfig::from_pem_files(cert, key, a.tls_ca.as_deref())
        .map(Some)
        .map_err(|e| {
            Fail::errno(
                e.errno(),
                "cannot load TLS credentials",
                &rbdm_store::report(&e),
            )
        })
}

/// One line for stderr when clients other than this host's can reach the export without
/// proving who they are. A Unix socket is guarded by its file permissions instead.
fn exposure_warning(
    listener: &Listener,
    tls: Option<&TlsConfig>,
    read_only: bool,
) -> Option<String> {
    let Listener::Tcp(l) = listener else {
        return None;
    };
    let addr = l.local_addr().ok()?;
    if addr.ip().to_canonical().is_loopback() {
        return None;
    }
    let access = if read_only { "read" } else { "read and write" };
    match tls {
        None => Some(format!(
            "serving {addr} without TLS: anyone who can reach this address can {access} the \
             image (add --tls-cert and --tls-key, or bind 127.0.0.1)"
        )),
        Some(t) if !t.verifies_clients() => Some(format!(
            "serving {addr} with TLS but without --tls-ca: any client that can reach this \
             address can {access} the image"
        )),
        Some(_) => None,
    }
}
