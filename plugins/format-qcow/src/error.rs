//! Why a qcow image cannot be opened or read, and how that maps onto the registry's errors.
use rbdm_registry::SourceError;

/// Why a qcow image cannot be opened or read. Messages name the field or structure and the
/// byte offset in the file where that is known.
#[derive(Debug, thiserror::Error)]
pub enum QcowError {
    /// The bytes are not a valid qcow image (bad magic, out-of-range field, table beyond EOF).
    #[error("{0}")]
    Corrupt(String),
    /// A valid image using something this reader refuses (encryption, external data file,
    /// unknown incompatible feature).
    #[error("{0}")]
    Unsupported(String),
    /// A backing chain that loops or is too deep.
    #[error("{0}")]
    Backing(String),
    /// The caller asked for something that does not exist (a snapshot index).
    #[error("{0}")]
    Invalid(String),
    /// The stream underneath failed.
    #[error(transparent)]
    Stream(#[from] SourceError),
}

impl From<QcowError> for SourceError {
    fn from(e: QcowError) -> Self {
        match e {
            QcowError::Corrupt(m) => SourceError::Corrupt(m),
            QcowError::Unsupported(m) => SourceError::Unsupported(m),
            QcowError::Backing(m) | QcowError::Invalid(m) => SourceError::Invalid(m),
            QcowError::Stream(e) => e,
        }
    }
}

pub type Result<T, E = QcowError> = std::result::Result<T, E>;

pub(crate) fn corrupt<T>(msg: impl Into<String>) -> Result<T> {
    Err(QcowError::Corrupt(msg.into()))
}
