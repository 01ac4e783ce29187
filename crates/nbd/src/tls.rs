//! TLS credentials for NBD's STARTTLS: the server's certificate chain and private key, and
//! optionally the CA that client certificates must chain to, read from PEM files (the files
//! `qemu-nbd --object tls-creds-x509` reads) into a rustls server configuration.
//!
//! rustls runs on the `ring` provider: the workspace already builds it (ureq's TLS), and it is
//! smaller and quicker to build than `aws-lc-rs`, which needs cmake and a large C build.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// PEM files larger than this are refused unread: a certificate chain is a few KiB, and a
/// path such as /dev/zero must not be read until memory runs out.
const MAX_PEM_FILE: u64 = 1 << 20;

/// A server configuration ready for STARTTLS; cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) server: Arc<ServerConfig>,
    verifies_clients: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is larger than 1 MiB: not a PEM certificate or key file", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: no PEM {what} found", path.display())]
    Missing { path: PathBuf, what: &'static str },
    #[error("{}: malformed PEM", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{}", path.display())]
    Rejected {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("certificate {} with key {}", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("client CA {}", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

impl TlsError {
    /// The errno a command reports: the OS error of a file that cannot be read, else EINVAL
    /// (the file is there but is not usable credentials).
    pub fn errno(&self) -> i32 {
        match self {
            TlsError::Read { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EINVAL,
        }
    }
}

impl TlsConfig {
    /// Loads `cert` (the server's certificate, then any intermediates) and `key` (PKCS#8,
    /// PKCS#1 or SEC1, unencrypted). With `client_ca`, every client must present a
    /// certificate that chains to one of the CA certificates in that file.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<TlsConfig, TlsError> {
        let chain = read_certs(cert)?;
        let key_der = read_key(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Checked alone first so that an unusable key is reported against its own file.
        provider
            .key_provider
            .load_private_key(key_der.clone_key())
            .map_err(|source| TlsError::Rejected {
                path: key.to_path_buf(),
                source,
            })?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rejected {
                path: cert.to_path_buf(),
                source,
            })?;
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, &provider)?),
            None => builder.with_no_client_auth(),
        };
        let server = builder
            .with_single_cert(chain, key_der)
            .map_err(|source| TlsError::Pair {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                source,
            })?;
        Ok(TlsConfig {
            server: Arc::new(server),
            verifies_clients: client_ca.is_some(),
        })
    }

    /// Whether clients must present a certificate signed by the configured CA.
    pub fn verifies_clients(&self) -> bool {
        self.verifies_clients
    }
}

fn client_verifier(
    ca: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in read_certs(ca)? {
        roots.add(der).map_err(|source| TlsError::Rejected {
            path: ca.to_path_buf(),
            source,
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|source| TlsError::ClientCa {
            path: ca.to_path_buf(),
            source,
        })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read_bounded(path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e, "certificate"))?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&text)
        .map_err(|e| pem_error(path, e, "private key (unencrypted PKCS#8, PKCS#1 or SEC1)"))
}

fn pem_error(path: &Path, e: pem::Error, what: &'static str) -> TlsError {
    match e {
        pem::Error::NoItemsFound => TlsError::Missing {
            path: path.to_path_buf(),
            what,
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut text = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let empty = write(dir.path(), "empty.pem", b"");
        let garbage = write(
            dir.path(),
            "garbage.pem",
            b"-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
        );
        let e = TlsConfig::from_pem_files(&missing, &empty, None)
            .err()
            .expect("fails");
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert_eq!(e.errno(), libc::ENOENT);
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e = TlsConfig::from_pem_files(&empty, &empty, None)
            .err()
            .expect("fails");
        assert!(
            e.to_string().contains("empty.pem: no PEM certificate"),
            "{e}"
        );
        assert_eq!(e.errno(), libc::EINVAL);
        let e = TlsConfig::from_pem_files(&garbage, &empty, None)
            .err()
            .expect("fails");
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        assert!(e.to_string().contains("garbage.pem"), "{e}");
    }

    #[test]
    fn oversized_files_are_not_read_whole() {
        let e = TlsConfig::from_pem_files(Path::new("/dev/zero"), Path::new("/dev/zero"), None)
            .err()
            .expect("fails");
        assert!(matches!(e, TlsError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("/dev/zero"), "{e}");
    }
}
