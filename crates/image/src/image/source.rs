//! The migration source a destination image reads through to.

use std::sync::Arc;

use super::{lock, Image};
use crate::header::Header;
use crate::migration::{self, MigrationRecord, MigrationRole, MigrationSource};
use crate::Result;

impl Image {
    /// The source to read through to, when this image is a migration destination.
    pub(super) fn migration_source(
        &self,
        h: &Header,
    ) -> Result<Option<(MigrationRecord, Arc<dyn MigrationSource>)>> {
        let Some(rec) = MigrationRecord::from_header(h)? else {
            return Ok(None);
        };
        if rec.role != MigrationRole::Destination {
            return Ok(None);
        }
        let mut slot = lock(&self.migration);
        if let Some(src) = slot.as_ref() {
            return Ok(Some((rec, src.clone())));
        }
        let src = migration::open_source(&self.rbd, &rec)?;
        *slot = Some(src.clone());
        Ok(Some((rec, src)))
    }

    /// The source point this handle's reads map to.
    pub(super) fn migration_point(&self, rec: &MigrationRecord) -> Option<usize> {
        rec.point_of(self.snap_id)
    }
}
