//! Finding a migration from either of its images, and settling what a killed `prepare` left.
//!
//! A migration's intent is its pair of records (see `rbdm_image::intent`): the source's,
//! written first, names the destination; the destination's, written when it is created, names
//! the source by id. So whichever name the user types next (the source's, now in the trash,
//! or the destination's, which may not exist yet) leads to both, and a `preparing` state is
//! rolled forward (the destination was complete) or back (anything less).

use rbdm_image::migration::{MigrationRecord, MigrationRole, MigrationState, PeerImage};
use rbdm_image::{Image, ImageSpec, PoolSpec, Rbd, TrashSource};

use crate::{Error, Result};

/// Held by `prepare` on the source (or, import-only, the destination) while it runs.
pub(crate) const PREPARE_OP: &str = "rbdm_migration_prepare";
/// Held shared by each `execute` on the destination; `abort` waits until none holds it.
pub(crate) const EXECUTE_OP: &str = "rbdm_migration_execute";

/// One image of a migration: where it is and what its record says.
pub(crate) struct Side {
    pub pool: PoolSpec,
    pub id: String,
    /// Its name in the directory, or in the trash entry.
    pub name: String,
    pub rec: MigrationRecord,
}

impl Side {
    /// Opens it writable (a source in the trash too).
    pub fn open(&self, rbd: &Rbd) -> Result<Image> {
        Ok(rbd.open_by_id(&self.pool, &self.id, None, false)?)
    }
}

/// Both images of a migration as far as they exist (a same-store one has both; an import
/// only a destination; either may be gone after a kill).
pub(crate) struct Pair {
    pub src: Option<Side>,
    pub dst: Option<Side>,
}

impl Pair {
    /// Either side is in `s`.
    pub fn any(&self, s: MigrationState) -> bool {
        [&self.src, &self.dst]
            .into_iter()
            .flatten()
            .any(|x| x.rec.state == s)
    }
}

pub(crate) fn pool_spec(rbd: &Rbd, pool_id: i64, ns: &str) -> Result<PoolSpec> {
    let pool = rbd
        .store()
        .pool_name(pool_id)
        .map_err(rbdm_image::Error::from)?;
    Ok(PoolSpec::new(&pool, ns))
}

/// The image with this id, if its header is there (in the directory or the trash).
fn side_by_id(rbd: &Rbd, pool: &PoolSpec, id: &str) -> Result<Option<Side>> {
    let img = match rbd.open_quiet(pool, None, Some(id), None) {
        Ok(i) => i,
        Err(rbdm_image::Error::NoImage { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    side_of(rbd, pool, &img)
}

/// The side an already open image is: its record, and its name (its trash name if trashed).
fn side_of(rbd: &Rbd, pool: &PoolSpec, img: &Image) -> Result<Option<Side>> {
    let id = img.id();
    let Some(rec) = img.migration_record()? else {
        return Ok(None);
    };
    let name = match rbd.trash_find(pool, id)? {
        Some(t) => t.name,
        None => img.name().to_string(),
    };
    Ok(Some(Side {
        pool: pool.clone(),
        id: id.into(),
        name,
        rec,
    }))
}

/// The image named `spec` in the directory, with its record if it has one.
fn side_by_name(rbd: &Rbd, spec: &ImageSpec) -> Result<Option<Side>> {
    let img = match rbd.open_quiet(&spec.pool_spec(), Some(&spec.image), None, None) {
        Ok(i) => i,
        // A user's spec may name a pool that is not there: it holds no side, and `find`
        // reports the missing pool in the store's words.
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    side_of(rbd, &spec.pool_spec(), &img)
}

/// The destination a source's record names, if it is really that one: same id as recorded,
/// or (before the source learnt the id) a destination record naming this source.
fn dst_of(rbd: &Rbd, src: &Side) -> Result<Option<Side>> {
    let Some(peer) = &src.rec.peer else {
        return Ok(None);
    };
    let spec = ImageSpec {
        pool: pool_spec(rbd, peer.pool_id, &peer.namespace)?.pool,
        namespace: peer.namespace.clone(),
        image: peer.name.clone(),
        snap: None,
    };
    let Some(d) = side_by_name(rbd, &spec)? else {
        return Ok(None);
    };
    let names_src = d.rec.role == MigrationRole::Destination
        && d.rec.peer.as_ref().is_some_and(|p| p.id == src.id);
    Ok(((peer.id.is_empty() || peer.id == d.id) && names_src).then_some(d))
}

fn src_of(rbd: &Rbd, dst: &Side) -> Result<Option<Side>> {
    match (&dst.rec.peer, dst.rec.import_only) {
        (Some(p), false) => {
            let pool = pool_spec(rbd, p.pool_id, &p.namespace)?;
            Ok(side_by_id(rbd, &pool, &p.id)?.filter(|s| s.rec.role == MigrationRole::Source))
        }
        _ => Ok(None),
    }
}

/// A source in some trash whose record names `spec` as its destination, or whose own name
/// (in the trash of `spec`'s pool) is `spec`: how a migration is found when the name the
/// user typed is not (or no longer) a migrating image in the directory.
fn source_in_trash(rbd: &Rbd, spec: &ImageSpec, dst_pool: i64) -> Result<Option<Side>> {
    for pspec in every_namespace(rbd)? {
        for t in rbd.trash_list(&pspec, true)? {
            if t.source != TrashSource::Migration {
                continue;
            }
            let Some(s) = side_by_id(rbd, &pspec, &t.id)? else {
                continue;
            };
            let named_src = pspec.pool == spec.pool
                && pspec.namespace == spec.namespace
                && t.name == spec.image;
            if s.rec.role == MigrationRole::Source && (names_dst(&s, dst_pool, spec) || named_src) {
                return Ok(Some(s));
            }
        }
    }
    Ok(None)
}

/// A source back in its directory whose record still says `aborting` and names `spec` as its
/// destination: an abort killed after it restored the source from the trash and before it
/// cleared the source's record (the last step). Only asked when `spec` names nothing else, so
/// the walk over every image's header is paid on that path alone.
fn restored_source(rbd: &Rbd, spec: &ImageSpec, dst_pool: i64) -> Result<Option<Side>> {
    for pspec in every_namespace(rbd)? {
        for name in rbd.list(&pspec)? {
            let here = ImageSpec {
                pool: pspec.pool.clone(),
                namespace: pspec.namespace.clone(),
                image: name,
                snap: None,
            };
            let Some(s) = side_by_name(rbd, &here)? else {
                continue;
            };
            let aborting = s.rec.state == MigrationState::Aborting;
            if s.rec.role == MigrationRole::Source && aborting && names_dst(&s, dst_pool, spec) {
                return Ok(Some(s));
            }
        }
    }
    Ok(None)
}

/// Every namespace of every pool of the store, each pool's default namespace first.
fn every_namespace(rbd: &Rbd) -> Result<Vec<PoolSpec>> {
    let mut all = Vec::new();
    for pool in rbd.pool_list()? {
        all.push(PoolSpec::new(&pool, ""));
        for ns in rbd.namespace_list(&pool).unwrap_or_default() {
            all.push(PoolSpec::new(&pool, &ns));
        }
    }
    Ok(all)
}

/// Whether a source's record names `spec` as its destination.
fn names_dst(src: &Side, dst_pool: i64, spec: &ImageSpec) -> bool {
    src.rec.peer.as_ref().is_some_and(|p| {
        p.pool_id == dst_pool && p.namespace == spec.namespace && p.name == spec.image
    })
}

/// The migration `spec` (a source or destination name) takes part in, if any.
pub(crate) fn find(rbd: &Rbd, spec: &ImageSpec) -> Result<Option<Pair>> {
    if let Some(here) = side_by_name(rbd, spec)? {
        return Ok(Some(match here.rec.role {
            MigrationRole::Destination => Pair {
                src: src_of(rbd, &here)?,
                dst: Some(here),
            },
            MigrationRole::Source => Pair {
                dst: dst_of(rbd, &here)?,
                src: Some(here),
            },
        }));
    }
    let dst_pool = rbd
        .store()
        .pool_id(&spec.pool)
        .map_err(rbdm_image::Error::from)?;
    let src = match source_in_trash(rbd, spec, dst_pool)? {
        Some(s) => Some(s),
        None => restored_source(rbd, spec, dst_pool)?,
    };
    Ok(match src {
        Some(src) => Some(Pair {
            dst: dst_of(rbd, &src)?,
            src: Some(src),
        }),
        None => None,
    })
}

/// Finishes a `prepare` that was killed: forward when the destination's record was complete
/// (only the source's last step is missing), else back to the source as it was. `Busy` while
/// the prepare still runs. Returns whether the pair is still a migration afterwards.
pub(crate) fn settle_prepare(rbd: &Rbd, pair: &mut Pair) -> Result<bool> {
    if !pair.any(MigrationState::Preparing) {
        return Ok(true);
    }
    let holder = match (&pair.src, &pair.dst) {
        (Some(s), _) => s.open(rbd)?,
        (None, Some(d)) => d.open(rbd)?,
        (None, None) => return Ok(false),
    };
    let _running = holder.op_lock(PREPARE_OP, true).map_err(|_| {
        Error::Busy(format!(
            "image '{}' is being prepared for migration by another process",
            holder.name()
        ))
    })?;
    drop(holder);
    let complete = pair
        .dst
        .as_ref()
        .is_some_and(|d| d.rec.state != MigrationState::Preparing);
    if let (true, Some(src), Some(dst)) = (complete, &mut pair.src, &pair.dst) {
        let peer = src.rec.peer.clone().map(|p| PeerImage {
            id: dst.id.clone(),
            ..p
        });
        let new = src.open(rbd)?.swap_migration_record(|r| match r {
            Some(r) if r.state == MigrationState::Preparing => Ok(Some(MigrationRecord {
                state: MigrationState::Prepared,
                peer: peer.clone(),
                ..r
            })),
            other => Ok(other),
        })?;
        if let Some(r) = new {
            src.rec = r;
        }
        return Ok(true);
    }
    crate::finish::undo(rbd, pair, false, &mut |_, _| {})?;
    Ok(false)
}

/// Destinations of `src` that no directory names: the one whose id `src` recorded, and any
/// header in the destination's namespace whose record names `src` (a create cut short
/// between the header and the directory entry). Scans one namespace, on rollback only.
pub(crate) fn unnamed_destinations(rbd: &Rbd, src: &Side) -> Result<Vec<(PoolSpec, String)>> {
    let Some(p) = &src.rec.peer else {
        return Ok(Vec::new());
    };
    let pspec = pool_spec(rbd, p.pool_id, &p.namespace)?;
    let mut out = Vec::new();
    let prefix = rbdm_image::header::header_name("");
    let headers = rbd
        .store()
        .list_objects(p.pool_id, Some(&p.namespace))
        .map_err(rbdm_image::Error::from)?;
    for loc in headers {
        let Some(id) = loc.name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(d) = side_by_id(rbd, &pspec, id)? else {
            continue;
        };
        let names_src = d.rec.role == MigrationRole::Destination
            && d.rec.peer.as_ref().is_some_and(|q| q.id == src.id);
        if (id == p.id || names_src) && rbd.image_name(&pspec, id)?.is_none() {
            out.push((pspec.clone(), id.to_string()));
        }
    }
    Ok(out)
}
