//! A server-side TLS session over a connected socket, split into a reading half and a
//! writing half so that one thread reads requests while workers send replies, as they do over
//! a plain socket. Socket reads happen outside any lock; the session state is locked only to
//! feed it ciphertext or take records out of it.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use rustls::ServerConnection;

use crate::tls::TlsConfig;
use crate::{lock, Stream};

/// Ciphertext read from the socket per round; no more plaintext than this can come out of
/// it, so rustls's received-plaintext buffer (16 KiB) never overflows.
const RAW_CHUNK: usize = 16 << 10;

struct Shared {
    session: Mutex<ServerConnection>,
    /// Held from encrypting records until they are on the socket, so that records reach the
    /// socket in the order of their sequence numbers.
    out: Mutex<Outbox>,
}

struct Outbox {
    sock: Stream,
    /// Records waiting to be written, kept to reuse the allocation.
    records: Vec<u8>,
}

/// The reading half: decrypted bytes from the client.
pub(crate) struct TlsReader {
    shared: Arc<Shared>,
    sock: Stream,
    raw: Box<[u8]>,
    plain: Vec<u8>,
    taken: usize,
    eof: bool,
}

/// The writing half: everything written goes out encrypted before `write` returns.
pub(crate) struct TlsWriter {
    shared: Arc<Shared>,
}

/// Starts a server session on `sock`. The TLS handshake itself runs on the first read, which
/// waits for the client's hello.
pub(crate) fn accept(sock: &Stream, config: &TlsConfig) -> io::Result<(TlsReader, TlsWriter)> {
    let session = ServerConnection::new(Arc::clone(&config.server)).map_err(io::Error::other)?;
    let shared = Arc::new(Shared {
        session: Mutex::new(session),
        out: Mutex::new(Outbox {
            sock: sock.try_clone()?,
            records: Vec::new(),
        }),
    });
    let reader = TlsReader {
        shared: Arc::clone(&shared),
        sock: sock.try_clone()?,
        raw: vec![0u8; RAW_CHUNK].into_boxed_slice(),
        plain: Vec::new(),
        taken: 0,
        eof: false,
    };
    Ok((reader, TlsWriter { shared }))
}

impl Shared {
    /// Runs `put` on the session, then sends whatever records it queued.
    fn send<T>(&self, put: impl FnOnce(&mut ServerConnection) -> io::Result<T>) -> io::Result<T> {
        let mut out = lock(&self.out);
        let Outbox { sock, records } = &mut *out;
        records.clear();
        let value = {
            let mut session = lock(&self.session);
            let value = put(&mut session)?;
            while session.wants_write() {
                session.write_tls(records)?;
            }
            value
        };
        sock.write_all(records)?;
        records.clear();
        Ok(value)
    }
}

impl TlsWriter {
    /// Tells the client the session ends (close_notify), as NBD asks before closing.
    pub(crate) fn close_notify(&self) -> io::Result<()> {
        self.shared.send(|s| {
            s.send_close_notify();
            Ok(())
        })
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.send(|s| s.writer().write(buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.shared.send(|s| s.writer().write_vectored(bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.taken == self.plain.len() {
            if self.eof {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = buf.len().min(self.plain.len() - self.taken);
        buf[..n].copy_from_slice(&self.plain[self.taken..self.taken + n]);
        self.taken += n;
        Ok(n)
    }
}

impl TlsReader {
    /// Reads one chunk of ciphertext (without holding the session) and decrypts it. Handshake
    /// messages it completes are answered here; an empty read is the client hanging up.
    fn fill(&mut self) -> io::Result<()> {
        self.plain.clear();
        self.taken = 0;
        let n = loop {
            match self.sock.read(&mut self.raw) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        if n == 0 {
            self.eof = true;
        }
        let result = self.decrypt(n);
        let reply_due = lock(&self.shared.session).wants_write();
        if reply_due {
            // Handshake flights, and alerts that explain a failure: a failed send changes
            // nothing about what is returned.
            let sent = self.shared.send(|_| Ok(()));
            if result.is_ok() {
                sent?;
            }
        }
        result
    }

    fn decrypt(&mut self, n: usize) -> io::Result<()> {
        let mut session = lock(&self.shared.session);
        let mut input = &self.raw[..n];
        loop {
            let fed = session.read_tls(&mut input)?;
            let state = session
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let wanted = state.plaintext_bytes_to_read();
            if wanted > 0 {
                let start = self.plain.len();
                self.plain.resize(start + wanted, 0);
                session.reader().read_exact(&mut self.plain[start..])?;
            }
            if state.peer_has_closed() {
                self.eof = true;
            }
            // After close_notify (or at end of input) nothing more is read.
            if fed == 0 || input.is_empty() {
                return Ok(());
            }
        }
    }
}
