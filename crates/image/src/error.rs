//! The image layer's error type and the errno each kind maps to, as `rbd` reports it.
use rbdm_store::Error as StoreError;

/// Image-level errors; `errno()` is what the CLI reports, as `rbd` does.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    ReadOnly(String),
    #[error("{0}")]
    NotEmpty(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Corrupt(String),
    /// A size beyond what an image can address.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) => libc::EEXIST,
            Error::Busy(_) => libc::EBUSY,
            Error::Invalid(_) => libc::EINVAL,
            Error::ReadOnly(_) => libc::EROFS,
            Error::NotEmpty(_) => libc::ENOTEMPTY,
            Error::Unsupported(_) => libc::ENOSYS,
            Error::Corrupt(_) => libc::EIO,
            Error::TooLarge(_) => libc::EFBIG,
            Error::Store(e) => e.errno(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
