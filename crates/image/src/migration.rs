//! What an image knows of a live migration: the record kept in its header (which side it is,
//! the peer, the state, how far the copy got) and the hook through which a migration
//! destination reads and copies up from its source.
//!
//! The image crate does not know how to open a source (that needs the plugin registry, which
//! sits above it): an [`Rbd`] carries a [`MigrationOpener`] (`Rbd::with_opener`; the
//! migration crate builds such an `Rbd`), and a destination image opens its source through
//! its `Rbd`'s opener on first need. Nothing is process-wide: two `Rbd`s in one process
//! (two stores, or one store opened with and without an opener) each keep their own.

use std::sync::Arc;

use rbdm_store::SnapId;

use crate::encoding::{Dec, Enc};
use crate::{Error, Image, Rbd, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationRole {
    Source,
    Destination,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationState {
    Prepared,
    Executing,
    Executed,
    /// An abort started and must be finished (`migration abort` again).
    Aborting,
    /// A prepare started and did not finish: rolled back by the next command on either image.
    Preparing,
    /// A commit started removing the source and must be finished (`migration commit` again).
    Committing,
}

impl MigrationState {
    pub fn name(self) -> &'static str {
        match self {
            MigrationState::Prepared => "prepared",
            MigrationState::Executing => "executing",
            MigrationState::Executed => "executed",
            MigrationState::Aborting => "aborting",
            MigrationState::Preparing => "preparing",
            MigrationState::Committing => "committing",
        }
    }
}

/// An image in the same store, by id (names change when the source goes to the trash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerImage {
    pub pool_id: i64,
    pub namespace: String,
    pub name: String,
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationRecord {
    pub role: MigrationRole,
    pub state: MigrationState,
    /// e.g. "32% complete" while executing, or the error that stopped it.
    pub state_description: String,
    /// The other image of a same-store migration (for a destination: its source).
    pub peer: Option<PeerImage>,
    /// The source-spec JSON the destination reads (also for same-store, as a `native` spec).
    pub source_spec: String,
    pub import_only: bool,
    pub flatten: bool,
    /// Destination snapshots created at prepare, and the index of the source snapshot each
    /// holds. Snapshots not listed (taken later) hold the source's head.
    pub snap_points: Vec<(SnapId, u32)>,
    /// Every object below this number has been copied.
    pub copied_upto: u64,
    /// What the source was at prepare (JSON written and checked by the migration crate, e.g.
    /// a file's size, times and inode); empty when nothing was recorded. Kept apart from
    /// `source_spec`, which stays the text the user gave.
    pub source_identity: String,
}

impl MigrationRecord {
    pub fn encode(&self) -> Vec<u8> {
        Enc::new()
            .versioned(2, 1, |e| {
                e.u8(match self.role {
                    MigrationRole::Source => 0,
                    MigrationRole::Destination => 1,
                });
                e.u8(match self.state {
                    MigrationState::Prepared => 0,
                    MigrationState::Executing => 1,
                    MigrationState::Executed => 2,
                    MigrationState::Aborting => 3,
                    MigrationState::Preparing => 4,
                    MigrationState::Committing => 5,
                });
                e.str(&self.state_description);
                match &self.peer {
                    Some(p) => e
                        .bool(true)
                        .i64(p.pool_id)
                        .str(&p.namespace)
                        .str(&p.name)
                        .str(&p.id),
                    None => e.bool(false),
                };
                e.str(&self.source_spec)
                    .bool(self.import_only)
                    .bool(self.flatten);
                e.u32(self.snap_points.len() as u32);
                for (s, i) in &self.snap_points {
                    e.u64(*s).u32(*i);
                }
                e.u64(self.copied_upto);
                // Version 2; older readers stop before it.
                e.str(&self.source_identity);
            })
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut d = Dec::new(buf, "migration record");
        let (version, mut b) = d.versioned(2)?;
        let role = match b.u8()? {
            0 => MigrationRole::Source,
            1 => MigrationRole::Destination,
            r => {
                return Err(Error::Corrupt(format!(
                    "migration record: unknown role {r}"
                )))
            }
        };
        let state = match b.u8()? {
            0 => MigrationState::Prepared,
            1 => MigrationState::Executing,
            2 => MigrationState::Executed,
            3 => MigrationState::Aborting,
            4 => MigrationState::Preparing,
            5 => MigrationState::Committing,
            s => {
                return Err(Error::Corrupt(format!(
                    "migration record: unknown state {s}"
                )))
            }
        };
        let state_description = b.str()?;
        let peer = if b.bool()? {
            Some(PeerImage {
                pool_id: b.i64()?,
                namespace: b.str()?,
                name: b.str()?,
                id: b.str()?,
            })
        } else {
            None
        };
        let source_spec = b.str()?;
        let import_only = b.bool()?;
        let flatten = b.bool()?;
        let n = b.u32()?;
        let mut snap_points = Vec::new();
        for _ in 0..n {
            snap_points.push((b.u64()?, b.u32()?));
        }
        let copied_upto = b.u64()?;
        let source_identity = if version >= 2 {
            b.str()?
        } else {
            String::new()
        };
        Ok(MigrationRecord {
            role,
            state,
            state_description,
            peer,
            source_spec,
            import_only,
            flatten,
            snap_points,
            copied_upto,
            source_identity,
        })
    }

    /// The source point a destination snapshot holds: `Some(index)` of a source snapshot,
    /// `None` for the source's head.
    pub fn point_of(&self, snap: Option<SnapId>) -> Option<usize> {
        let s = snap?;
        self.snap_points
            .iter()
            .find(|(id, _)| *id == s)
            .map(|(_, i)| *i as usize)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let r = MigrationRecord {
            role: MigrationRole::Destination,
            state: MigrationState::Executing,
            state_description: "32% complete".into(),
            peer: Some(PeerImage {
                pool_id: 1,
                namespace: "ns".into(),
                name: "a".into(),
                id: "x".into(),
            }),
            source_spec: "{}".into(),
            import_only: false,
            flatten: true,
            snap_points: vec![(4, 0), (6, 1)],
            copied_upto: 99,
            source_identity: r#"{"stream":{}}"#.into(),
        };
        assert_eq!(MigrationRecord::decode(&r.encode()).unwrap(), r);
        assert_eq!(r.point_of(Some(6)), Some(1));
        assert_eq!(r.point_of(Some(7)), None);
        assert!(MigrationRecord::decode(&r.encode()[..10]).is_err());
    }
}
