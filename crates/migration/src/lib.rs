//! Live migration: `prepare`, `execute`, `commit`, `abort` and `status`, as Ceph's
//! `rbd migration` does them, on the state kept in the images' headers.
//!
//! What it is for: the state machine (prepared → executing → executed → committed, or aborted
//! from any state before commit), linking source and destination, and opening a
//! destination's source for the image crate ([`link`] installs the opener). A same-store
//! migration reads its source as a `native` source-spec, so both kinds share one copy path.
//! What it is not: the copy itself (`rbdm-copy`), formats and streams (`plugins/`), printing.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rbdm_image::migration::{
    MigrationRecord, MigrationRole, MigrationSource, MigrationState, PeerImage,
};
use rbdm_image::{CreateOptions, Image, ImageSpec, PoolSpec, Rbd};
use rbdm_registry::{OpenContext, Point, SourceError, SourceImage};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Image(#[from] rbdm_image::Error),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Copy(#[from] rbdm_copy::CopyError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotFound(String),
}

impl Error {
    pub fn errno(&self) -> i32 {
        match self {
            Error::Image(e) => e.errno(),
            Error::Source(e) => e.errno(),
            Error::Copy(e) => e.errno(),
            Error::Invalid(_) => libc::EINVAL,
            Error::Busy(_) => libc::EBUSY,
            Error::NotFound(_) => libc::ENOENT,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Installs the opener through which destination images read their sources. Call once at
/// start (the CLI does), next to `rbdm_plugins::link()`.
pub fn link() {
    rbdm_image::migration::set_migration_opener(open_for_image);
}

/// A destination's source, opened from the spec in its migration record.
struct Source {
    image: Arc<dyn SourceImage>,
    rec: MigrationRecord,
    stats: rbdm_copy::Stats,
}

fn point(p: Option<usize>) -> Point {
    p.map(Point::Snap).unwrap_or(Point::Head)
}

fn to_image_error(e: impl std::fmt::Display, errno: i32) -> rbdm_image::Error {
    match errno {
        libc::ENOENT => rbdm_image::Error::NotFound(format!("migration source: {e}")),
        libc::EINVAL | libc::EBADMSG => {
            rbdm_image::Error::Invalid(format!("migration source: {e}"))
        }
        _ => rbdm_image::Error::Corrupt(format!("migration source: {e}")),
    }
}

impl MigrationSource for Source {
    fn read(&self, p: Option<usize>, offset: u64, buf: &mut [u8]) -> rbdm_image::Result<()> {
        self.image
            .read(point(p), offset, buf)
            .map_err(|e| to_image_error(&e, e.errno()))
    }
    fn allocated(
        &self,
        p: Option<usize>,
        offset: u64,
        len: u64,
    ) -> rbdm_image::Result<Vec<(u64, u64)>> {
        rbdm_copy::allocated_at(&*self.image, point(p), offset, len)
            .map_err(|e| to_image_error(&e, e.errno()))
    }
    fn copy_object(
        &self,
        image: &Image,
        object_no: u64,
        for_write: bool,
    ) -> rbdm_image::Result<()> {
        rbdm_copy::copy_object(
            image,
            &*self.image,
            &self.rec,
            object_no,
            for_write,
            &self.stats,
        )
        .map_err(|e| to_image_error(&e, e.errno()))
    }
}

fn open_for_image(
    rbd: &Rbd,
    rec: &MigrationRecord,
) -> rbdm_image::Result<Arc<dyn MigrationSource>> {
    let image =
        open_source_spec(rbd, &rec.source_spec).map_err(|e| to_image_error(&e, e.errno()))?;
    Ok(Arc::new(Source {
        image: image.into(),
        rec: rec.clone(),
        stats: Default::default(),
    }))
}

/// Parses and opens a source-spec; malformed JSON is `EBADMSG`, as Ceph reports it.
pub fn open_source_spec(rbd: &Rbd, text: &str) -> Result<Box<dyn SourceImage>, SourceError> {
    let json: Value = serde_json::from_str(text)
        .map_err(|e| SourceError::BadSpec(format!("invalid JSON: {e}")))?;
    let lookup = |key: &str| -> Result<String, SourceError> {
        rbd.config_key_get(key)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .map_err(|e| SourceError::NotFound(format!("config://{key}: {e}")))
    };
    let ctx = OpenContext {
        config_key: &lookup,
        store: Some(rbd.store().clone()),
    };
    rbdm_registry::open_source(&json, &ctx)
}

/// Layout, features and data pool for the destination; anything unset follows the source.
#[derive(Clone, Debug, Default)]
pub struct PrepareOptions {
    pub create: Option<CreateOptions>,
    pub flatten: bool,
}

fn record_of(image: &Image) -> Result<Option<MigrationRecord>> {
    Ok(image.migration_record()?)
}

/// Creates `dst` empty with the source's snapshots (sizes and names), oldest first; returns
/// the snapshot map for the record.
fn create_destination(
    rbd: &Rbd,
    dst: &ImageSpec,
    opts: &CreateOptions,
    snaps: &[(String, u64, bool)],
    head_size: u64,
) -> Result<Vec<(u64, u32)>> {
    let first = snaps.first().map(|s| s.1).unwrap_or(head_size);
    rbd.create(
        &dst.pool_spec(),
        &dst.image,
        &CreateOptions {
            size: first,
            ..opts.clone()
        },
    )?;
    let made = (|| -> Result<Vec<(u64, u32)>> {
        let img = rbd.open(dst, false)?;
        let mut points = Vec::new();
        for (i, (name, size, _)) in snaps.iter().enumerate() {
            if img.size() != *size {
                img.resize(*size, true, &mut |_, _| {})?;
            }
            points.push((img.snap_create(name)?, i as u32));
        }
        if img.size() != head_size {
            img.resize(head_size, true, &mut |_, _| {})?;
        }
        Ok(points)
    })();
    if made.is_err() {
        remove_image(rbd, dst);
    }
    made
}

/// Best effort: removes an image with its snapshots (cleanup after a failure).
fn remove_image(rbd: &Rbd, spec: &ImageSpec) {
    if let Ok(img) = rbd.open(spec, false) {
        let _ = rbdm_copy::forget_progress(&img);
        let _ = img.set_migration_record(None);
        for s in img.snap_list().unwrap_or_default() {
            let _ = img.snap_unprotect(&s.name);
        }
        let _ = img.snap_purge();
    }
    let _ = rbd.remove(spec, &mut |_, _| {});
}

/// `migration prepare SRC DST`: a same-store migration. `dst` may name the source itself
/// (a layout change in place): the source leaves the directory for the trash first.
pub fn prepare(rbd: &Rbd, src: &ImageSpec, dst: &ImageSpec, opts: &PrepareOptions) -> Result<()> {
    let source = rbd.open(src, true)?;
    if record_of(&source)?.is_some() {
        return Err(Error::Busy(format!(
            "image '{}' is already being migrated",
            src.image
        )));
    }
    if !source.lockers()?.is_empty() {
        return Err(Error::Busy(format!(
            "image '{}' is open read-write by another client",
            src.image
        )));
    }
    let in_place = src.pool == dst.pool && src.namespace == dst.namespace && src.image == dst.image;
    if !in_place && rbd.open(dst, true).is_ok() {
        return Err(Error::Image(rbdm_image::Error::Exists(format!(
            "image '{}' already exists",
            dst.image
        ))));
    }
    rbd.check_namespace(&dst.pool_spec())?;
    let info = source.info()?;
    let src_header = source.header()?;
    let snaps: Vec<(String, u64, bool)> = source
        .snap_list()?
        .into_iter()
        .map(|s| (s.name, s.size, s.protected))
        .collect();
    let create = opts.create.clone().unwrap_or_else(|| CreateOptions {
        size: info.size,
        layout: Some(info.layout),
        features: Some(info.features),
        data_pool: info.data_pool.clone(),
    });
    let pool_id = rbd
        .store()
        .pool_id(&src.pool)
        .map_err(rbdm_image::Error::from)?;
    let dst_pool = rbd
        .store()
        .pool_id(&dst.pool)
        .map_err(rbdm_image::Error::from)?;
    let spec = json!({"type": "native", "pool_id": pool_id, "pool_namespace": src.namespace,
                      "image_name": src.image, "image_id": info.id});
    let mut rec = MigrationRecord {
        role: MigrationRole::Source,
        state: MigrationState::Prepared,
        state_description: String::new(),
        peer: Some(PeerImage {
            pool_id: dst_pool,
            namespace: dst.namespace.clone(),
            name: dst.image.clone(),
            id: String::new(),
        }),
        source_spec: spec.to_string(),
        import_only: false,
        flatten: opts.flatten,
        snap_points: Vec::new(),
        copied_upto: 0,
    };
    // The source first: read-only and out of the directory, so nothing writes it from now on.
    source.set_migration_record(Some(&rec))?;
    drop(source);
    let undo_source = |rbd: &Rbd| {
        let pspec = src.pool_spec();
        if let Ok(Some(t)) = rbd
            .trash_list(&pspec, true)
            .map(|l| l.into_iter().find(|t| t.id == info.id))
        {
            let _ = rbd.trash_restore_any(&pspec, &t, None);
        }
        if let Ok(s) = rbd.open_by_id(&pspec, &info.id, None, true) {
            let _ = s.set_migration_record(None);
        }
    };
    if let Err(e) = rbd.trash_move_as(src, 0, "MIGRATION") {
        undo_source(rbd);
        return Err(e.into());
    }
    let made = (|| -> Result<()> {
        let points = create_destination(rbd, dst, &create, &snaps, info.size)?;
        let dimg = rbd.open(dst, false)?;
        if !opts.flatten {
            keep_parent(rbd, &src_header, &dimg, dst)?;
        }
        let drec = MigrationRecord {
            role: MigrationRole::Destination,
            peer: Some(PeerImage {
                pool_id,
                namespace: src.namespace.clone(),
                name: src.image.clone(),
                id: info.id.clone(),
            }),
            snap_points: points,
            ..rec.clone()
        };
        dimg.set_migration_record(Some(&drec))?;
        for (name, _, protected) in &snaps {
            if *protected {
                dimg.snap_protect(name)?;
            }
        }
        rec.peer = Some(PeerImage {
            pool_id: dst_pool,
            namespace: dst.namespace.clone(),
            name: dst.image.clone(),
            id: dimg.id().into(),
        });
        let s = rbd.open_by_id(&src.pool_spec(), &info.id, None, true)?;
        s.set_migration_record(Some(&rec))?;
        Ok(())
    })();
    if let Err(e) = made {
        if rbd
            .open(dst, true)
            .map(|i| i.id() != info.id)
            .unwrap_or(false)
        {
            remove_image(rbd, dst);
        }
        undo_source(rbd);
        return Err(e);
    }
    Ok(())
}

/// Gives the destination the source's parent links (head and each snapshot, by name), so a
/// migrated clone stays a clone; the copy then only materialises what the source changed.
fn keep_parent(
    rbd: &Rbd,
    src: &rbdm_image::header::Header,
    dimg: &Image,
    dst: &ImageSpec,
) -> Result<()> {
    let Some(link) = src.parent.clone() else {
        return Ok(());
    };
    let by_name: std::collections::HashMap<String, Option<rbdm_image::header::ParentLink>> = src
        .snaps
        .values()
        .map(|s| (s.name.clone(), s.parent.clone()))
        .collect();
    dimg.update_header(|h| {
        h.parent = Some(link.clone());
        for s in h.snaps.values_mut() {
            s.parent = by_name.get(&s.name).cloned().flatten();
        }
        Ok(())
    })?;
    rbd.child_register(&link, &dst.pool_spec(), dimg.id())?;
    Ok(())
}

/// `migration prepare --import-only --source-spec JSON DST`.
pub fn prepare_import(
    rbd: &Rbd,
    spec_text: &str,
    dst: &ImageSpec,
    create: Option<&CreateOptions>,
) -> Result<()> {
    let source = open_source_spec(rbd, spec_text)?;
    if rbd.open(dst, true).is_ok() {
        return Err(Error::Image(rbdm_image::Error::Exists(format!(
            "image '{}' already exists",
            dst.image
        ))));
    }
    let snaps: Vec<(String, u64, bool)> = source
        .snapshots()
        .into_iter()
        .map(|s| (s.name, s.size, false))
        .collect();
    let opts = create
        .cloned()
        .unwrap_or_else(|| CreateOptions::with_size(source.size()));
    let points = create_destination(rbd, dst, &opts, &snaps, source.size())?;
    let rec = MigrationRecord {
        role: MigrationRole::Destination,
        state: MigrationState::Prepared,
        state_description: String::new(),
        peer: None,
        source_spec: spec_text.to_string(),
        import_only: true,
        flatten: true,
        snap_points: points,
        copied_upto: 0,
    };
    let set = rbd
        .open(dst, false)
        .and_then(|img| img.set_migration_record(Some(&rec)));
    if let Err(e) = set {
        remove_image(rbd, dst);
        return Err(e.into());
    }
    Ok(())
}

/// The destination of a migration and its record; `Invalid` if `spec` is not one.
fn destination(rbd: &Rbd, spec: &ImageSpec) -> Result<(Image, MigrationRecord)> {
    let img = rbd.open(spec, false)?;
    match record_of(&img)? {
        Some(r) if r.role == MigrationRole::Destination => Ok((img, r)),
        _ => Err(Error::Invalid(format!(
            "image '{}' is not being migrated (no migration in progress)",
            spec.image
        ))),
    }
}

pub struct ExecuteOptions {
    pub concurrency: usize,
    pub bandwidth_limit: Option<u64>,
}

/// `migration execute`: copies what is left; `progress(done, total)` in objects.
pub fn execute(
    rbd: &Rbd,
    spec: &ImageSpec,
    opts: &ExecuteOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let (img, mut rec) = destination(rbd, spec)?;
    match rec.state {
        MigrationState::Executed => {
            return Err(Error::Invalid(format!(
                "migration of '{}' is already executed",
                spec.image
            )))
        }
        MigrationState::Aborting => {
            return Err(Error::Invalid(format!(
                "migration of '{}' is being aborted",
                spec.image
            )))
        }
        _ => {}
    }
    let resumed = rec.state == MigrationState::Executing;
    rec.state = MigrationState::Executing;
    img.set_migration_record(Some(&rec))?;
    let source = open_source_spec(rbd, &rec.source_spec)?;
    let run_opts = rbdm_copy::RunOptions {
        concurrency: opts.concurrency,
        bandwidth_limit: opts.bandwidth_limit,
        start: rec.copied_upto,
        resumed,
    };
    let total = std::sync::atomic::AtomicU64::new(1);
    let checkpoint = |mark: u64| {
        let t = total.load(std::sync::atomic::Ordering::Relaxed).max(1);
        let mut r = rec.clone();
        r.copied_upto = r.copied_upto.max(mark);
        r.state_description = format!("{}% complete", (mark.min(t) * 100) / t);
        let _ = img.set_migration_record(Some(&r));
    };
    let report = |done: u64, t: u64| {
        total.store(t, std::sync::atomic::Ordering::Relaxed);
        progress(done, t);
    };
    let stop = AtomicBool::new(false);
    rbdm_copy::run(&img, &*source, &rec, &run_opts, &report, &checkpoint, &stop)?;
    // `executed` lets commit delete the source: every copy must be on disk before it says so,
    // also those of an earlier, killed run and clients' copy-ups in other processes.
    img.flush_all()?;
    let mut done = record_of(&img)?.unwrap_or(rec);
    done.state = MigrationState::Executed;
    done.state_description.clear();
    img.set_migration_record(Some(&done))?;
    Ok(())
}

/// `migration commit`: only once executed. `force` re-points the source's clone children.
pub fn commit(rbd: &Rbd, spec: &ImageSpec, force: bool) -> Result<()> {
    let (img, rec) = destination(rbd, spec)?;
    if rec.state != MigrationState::Executed {
        return Err(Error::Invalid(format!(
            "migration of '{}' is not executed (state: {}); run 'rbdm migration execute' first",
            spec.image,
            rec.state.name()
        )));
    }
    if let (false, Some(peer)) = (rec.import_only, &rec.peer) {
        let (pspec, src) = open_peer(rbd, peer)?;
        let children = src.children()?;
        if !children.is_empty() && !force {
            return Err(Error::Busy(format!(
                "source image '{}' has {} clone child(ren); use --force to re-point them to '{}'",
                peer.name,
                children.len(),
                spec.image
            )));
        }
        if !children.is_empty() {
            rbd.reparent_children(&src, &img)?;
        }
        src.set_migration_record(None)?;
        for s in src.snap_list()? {
            if s.protected {
                src.snap_unprotect(&s.name)?;
            }
        }
        src.snap_purge()?;
        drop(src);
        let entry = rbd
            .trash_list(&pspec, true)?
            .into_iter()
            .find(|t| t.id == peer.id);
        if let Some(t) = entry {
            rbd.trash_purge_entry(&pspec, &t, &mut |_, _| {})?;
        }
    }
    // Before the record goes: a commit cut short here is run again and finds it gone.
    rbdm_copy::forget_progress(&img)?;
    // Maps were not kept while objects arrived from other processes: none is better than a
    // stale one if this commit is cut short (readers rebuild an absent map from the objects).
    img.drop_object_maps()?;
    img.set_migration_record(None)?;
    img.rebuild_object_maps()?;
    Ok(())
}

/// The source of a same-store migration, writable (it sits in the trash under its id), with
/// the pool spec it lives in.
fn open_peer(rbd: &Rbd, peer: &PeerImage) -> Result<(PoolSpec, Image)> {
    let pool = rbd
        .store()
        .pool_name(peer.pool_id)
        .map_err(rbdm_image::Error::from)?;
    let pspec = PoolSpec::new(&pool, &peer.namespace);
    let src = rbd.open_by_id(&pspec, &peer.id, None, false)?;
    Ok((pspec, src))
}

/// `migration abort`: from any state before commit. Same-store: what clients wrote to the
/// destination goes back into the source first, then the source is restored.
pub fn abort(rbd: &Rbd, spec: &ImageSpec, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
    let (img, mut rec) = destination(rbd, spec)?;
    rec.state = MigrationState::Aborting;
    img.set_migration_record(Some(&rec))?;
    let mut restore = None;
    if let (false, Some(peer)) = (rec.import_only, &rec.peer) {
        let (pspec, src) = open_peer(rbd, peer)?;
        src.set_migration_record(None)?;
        write_back(&img, &src, progress)?;
        restore = Some((pspec, peer.id.clone()));
    }
    img.set_migration_record(None)?;
    drop(img);
    // The destination goes first: it may hold the source's name (a migration in place).
    remove_image(rbd, spec);
    if let Ok(left) = rbd.open(spec, true) {
        if restore.as_ref().is_none_or(|(_, id)| left.id() != id) {
            return Err(Error::Busy(format!(
                "could not remove destination image '{}' (still open?)",
                spec.image
            )));
        }
    }
    if let Some((pspec, id)) = restore {
        if let Some(t) = rbd
            .trash_list(&pspec, true)?
            .into_iter()
            .find(|t| t.id == id)
        {
            rbd.trash_restore_any(&pspec, &t, None)?;
        }
    }
    Ok(())
}

/// Copies into `src` every range of `dst`'s head that differs from it: the clients' writes.
fn write_back(dst: &Image, src: &Image, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
    let h = dst.header()?;
    let size = h.size.min(src.size());
    let count = h.layout.object_count(size);
    const CHUNK: usize = 4096;
    for object_no in 0..count {
        progress(object_no, count);
        if dst
            .store()
            .stat(&dst.data_loc(&h, object_no), rbdm_store::HEAD)
            .is_err()
        {
            continue;
        }
        for (off, len) in h.layout.object_extents_in_image(object_no, size) {
            let mut a = vec![0u8; len as usize];
            let mut b = vec![0u8; len as usize];
            dst.read(off, &mut a)?;
            src.read(off, &mut b)?;
            for (i, (x, y)) in a.chunks(CHUNK).zip(b.chunks(CHUNK)).enumerate() {
                if x != y {
                    let at = off + (i * CHUNK) as u64;
                    if x.iter().all(|&v| v == 0) {
                        src.write_zeroes(at, x.len() as u64)?;
                    } else {
                        src.write(at, x)?;
                    }
                }
            }
        }
    }
    progress(count, count);
    src.flush()?;
    Ok(())
}

/// What `rbdm status` shows of a migration.
pub struct Status {
    pub source: String,
    pub destination: String,
    pub state: String,
    pub import_only: bool,
}

/// The migration `spec` takes part in, if any.
pub fn status(rbd: &Rbd, spec: &ImageSpec) -> Result<Option<Status>> {
    let img = rbd.open(spec, true)?;
    let Some(rec) = record_of(&img)? else {
        return Ok(None);
    };
    let here = format!(
        "{}/{}{} ({})",
        spec.pool,
        ns_prefix(&spec.namespace),
        spec.image,
        img.id()
    );
    let peer = |p: &PeerImage| -> String {
        let pool = rbd
            .store()
            .pool_name(p.pool_id)
            .unwrap_or_else(|_| p.pool_id.to_string());
        format!("{pool}/{}{} ({})", ns_prefix(&p.namespace), p.name, p.id)
    };
    let state = match (rec.state, rec.state_description.is_empty()) {
        (s, true) => s.name().to_string(),
        (s, false) => format!("{} ({})", s.name(), rec.state_description),
    };
    let (source, destination) = match (rec.role, &rec.peer) {
        (MigrationRole::Destination, Some(p)) if !rec.import_only => (peer(p), here),
        (MigrationRole::Destination, _) => {
            let masked = serde_json::from_str::<Value>(&rec.source_spec)
                .map(|v| rbdm_spec::mask_secrets(&v).to_string())
                .unwrap_or_else(|_| "(unreadable source-spec)".into());
            (masked, here)
        }
        (MigrationRole::Source, Some(p)) => (here, peer(p)),
        (MigrationRole::Source, None) => (here, String::new()),
    };
    Ok(Some(Status {
        source,
        destination,
        state,
        import_only: rec.import_only,
    }))
}

fn ns_prefix(ns: &str) -> String {
    if ns.is_empty() {
        String::new()
    } else {
        format!("{ns}/")
    }
}
