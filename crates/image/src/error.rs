//! The image layer's error type and the errno each kind maps to, as `rbd` reports it.
use rbdm_store::Error as StoreError;

/// Image-level errors; `errno()` is what the CLI reports, as `rbd` does.
///
/// What is missing has its own variant (all ENOENT, see `is_not_found`), so a caller can
/// tell a missing pool from a missing image without reading the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No image `name`; `pool` is the pool/namespace when the message names it.
    #[error("image '{name}' does not exist{}", in_pool(.pool))]
    NoImage { pool: Option<String>, name: String },
    /// The header of an open image is gone.
    #[error("image '{0}' was removed")]
    ImageRemoved(String),
    #[error("snapshot '{image}@{snap}' does not exist")]
    NoSnap { image: String, snap: String },
    /// The snapshot an image is open at is gone.
    #[error("snapshot {id} of '{image}' was removed")]
    SnapRemoved { image: String, id: u64 },
    /// A moved image's destination lacks a snapshot its clones are linked to.
    #[error("destination '{image}' has no snapshot '{snap}' for the clones to follow")]
    NoSnapToFollow { image: String, snap: String },
    #[error("pool '{0}' does not exist")]
    NoPool(String),
    /// Namespace `0` (as `pool/namespace`) was not created.
    #[error("namespace '{0}' does not exist")]
    NoNamespace(String),
    #[error("image '{image}' has no metadata key '{key}'")]
    NoMetadata { image: String, key: String },
    #[error("config-key '{0}' does not exist")]
    NoConfigKey(String),
    /// Image `id` has no trash entry in `pool` (a pool/namespace).
    #[error("image id '{id}' is not in the trash of {pool}")]
    NoTrashEntry { pool: String, id: String },
    #[error("no lock '{id}' held by client.{client}")]
    NoLock { id: String, client: u64 },
    /// What a migration source reads from is missing, in the source's words.
    #[error("migration source: {0}")]
    NoSource(String),
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

/// The " in POOL" of a missing image's message, when it names the pool.
fn in_pool(pool: &Option<String>) -> String {
    pool.as_ref()
        .map(|p| format!(" in {p}"))
        .unwrap_or_default()
}

impl Error {
    /// No image `name` in `pool` (a pool/namespace, as the message names it).
    pub fn no_image(pool: impl ToString, name: &str) -> Error {
        Error::NoImage {
            pool: Some(pool.to_string()),
            name: name.into(),
        }
    }

    /// No image `name`, without naming its pool.
    pub fn no_image_here(name: &str) -> Error {
        Error::NoImage {
            pool: None,
            name: name.into(),
        }
    }

    pub fn no_snap(image: &str, snap: &str) -> Error {
        Error::NoSnap {
            image: image.into(),
            snap: snap.into(),
        }
    }

    pub fn no_snap_to_follow(image: &str, snap: &str) -> Error {
        Error::NoSnapToFollow {
            image: image.into(),
            snap: snap.into(),
        }
    }

    /// Image `id` has no trash entry in `pool` (a pool/namespace).
    pub fn no_trash_entry(pool: impl ToString, id: &str) -> Error {
        Error::NoTrashEntry {
            pool: pool.to_string(),
            id: id.into(),
        }
    }

    pub fn no_lock(id: &str, client: u64) -> Error {
        Error::NoLock {
            id: id.into(),
            client,
        }
    }

    /// Whether something is missing, whatever it is (the store's own errors aside).
    pub fn is_not_found(&self) -> bool {
        !matches!(self, Error::Store(_)) && self.errno() == libc::ENOENT
    }

    /// Whether the image is gone: never named, or its header removed.
    pub fn is_no_image(&self) -> bool {
        matches!(self, Error::NoImage { .. } | Error::ImageRemoved(_))
    }

    pub fn errno(&self) -> i32 {
        match self {
            Error::NoImage { .. }
            | Error::ImageRemoved(_)
            | Error::NoSnap { .. }
            | Error::SnapRemoved { .. }
            | Error::NoSnapToFollow { .. }
            | Error::NoPool(_)
            | Error::NoNamespace(_)
            | Error::NoMetadata { .. }
            | Error::NoConfigKey(_)
            | Error::NoTrashEntry { .. }
            | Error::NoLock { .. }
            | Error::NoSource(_) => libc::ENOENT,
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
