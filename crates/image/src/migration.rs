//! What an image knows of a live migration: the record kept in its header (which side it is,
//! the peer, the state, how far the copy got; `record.rs`) and the hook through which a migration
//! destination reads and copies up from its source.
//!
//! The image crate does not know how to open a source (that needs the plugin registry, which
//! sits above it): an [`Rbd`] carries a [`MigrationOpener`] (`Rbd::with_opener`; the
//! migration crate builds such an `Rbd`), and a destination image opens its source through
//! its `Rbd`'s opener on first need. Nothing is process-wide: two `Rbd`s in one process
//! (two stores, or one store opened with and without an opener) each keep their own.

use std::sync::Arc;

mod legacy;
mod record;

pub use record::{MigrationRecord, MigrationRole, MigrationState, PeerImage, RBDM_KEY, SPEC_KEY};

use crate::{Error, Image, Rbd, Result};

/// A destination's view of its source.
pub trait MigrationSource: Send + Sync {
    /// Source bytes at a point (`Some(i)`: source snapshot `i`; `None`: head), image offsets;
    /// past that point's size they read as zeros.
    fn read(&self, point: Option<usize>, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Extents holding data at that point.
    fn allocated(&self, point: Option<usize>, offset: u64, len: u64) -> Result<Vec<(u64, u64)>>;
    /// Creates destination object `object_no` from the source with its snapshot history,
    /// unless it was copied already. `for_write`: a client write follows, so the object must
    /// exist afterwards (marked copied) even where the source holds nothing.
    fn copy_object(&self, image: &Image, object_no: u64, for_write: bool) -> Result<()>;
}

/// Opens a destination's source from its record, in the store of the `Rbd` given.
pub type MigrationOpener = fn(&Rbd, &MigrationRecord) -> Result<Arc<dyn MigrationSource>>;

pub(crate) fn open_source(rbd: &Rbd, rec: &MigrationRecord) -> Result<Arc<dyn MigrationSource>> {
    let opener = rbd.opener().ok_or_else(|| {
        Error::Unsupported(
            "image is the destination of a migration and this program cannot read its source"
                .into(),
        )
    })?;
    opener(rbd, rec)
}
