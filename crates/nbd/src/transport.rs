//! What a connection reads from and writes to: the socket itself, or the two halves of the
//! TLS session started on it by STARTTLS.

use std::io::{self, IoSlice, Read, Write};

use crate::tls_stream::{TlsReader, TlsWriter};
use crate::Stream;

pub(crate) enum Reader {
    Plain(Stream),
    Tls(TlsReader),
}

pub(crate) enum Writer {
    Plain(Stream),
    Tls(TlsWriter),
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Reader::Plain(s) => s.read(buf),
            Reader::Tls(s) => s.read(buf),
        }
    }
}

impl Writer {
    /// Ends the TLS session properly before the socket closes; nothing to do without TLS.
    /// Best effort: the client may be gone already.
    pub(crate) fn finish(&self) {
        if let Writer::Tls(w) = self {
            let _ = w.close_notify();
        }
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Writer::Plain(s) => s.write(buf),
            Writer::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Writer::Plain(s) => s.write_vectored(bufs),
            Writer::Tls(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
