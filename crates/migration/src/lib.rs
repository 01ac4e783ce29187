//! Live migration: `prepare`, `execute`, `commit`, `abort` and `status`, as Ceph's
//! `rbd migration` does them, on the state kept in the images' headers.
//!
//! What it is for: the state machine (prepared → executing → executed → committed, or aborted
//! from any state before commit), linking source and destination, and opening a
//! destination's source for the image crate ([`rbd`] gives an `Rbd` carrying that opener). A same-store
//! migration reads its source as a `native` source-spec, so both kinds share one copy path.
//! What it is not: the copy itself (`rbdm-copy`), formats and streams (`plugins/`), printing.
#![forbid(unsafe_code)]

use std::sync::Arc;

mod ceph_form;
mod execute;
mod finish;
mod identity;
mod prepare;
mod recover;

pub use execute::{execute, ExecuteOptions};
pub use finish::{abort, commit};
pub use prepare::{prepare, prepare_import};

use rbdm_image::migration::{
    MigrationRecord, MigrationRole, MigrationSource, MigrationState, PeerImage,
};
use rbdm_image::{CreateOptions, Image, ImageSpec, Rbd};
use rbdm_registry::{OpenContext, Point, SourceError, SourceImage};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] rbdm_image::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Copy(#[from] rbdm_copy::CopyError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotFound(String),
    /// A destination's source cannot be opened (as librbd, which opens it with the image).
    #[error("cannot open the migration source of image '{image}'")]
    SourceUnavailable { image: String, source: SourceError },
    /// A command failed and undoing what it had made failed too: the records still say what
    /// is left, and the next command on either image finishes the undo.
    #[error(
        "{}; undoing it failed too (the next command on either image retries): {}",
        rbdm_store::report(.error.as_ref()),
        rbdm_store::report(.undo.as_ref())
    )]
    NotUndone { error: Box<Error>, undo: Box<Error> },
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
            Error::SourceUnavailable { source, .. } => source.errno(),
            Error::NotUndone { error, .. } => error.errno(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// RBD on `store` whose migration destinations read through to their sources (the images it
/// opens, and those they open, keep its opener). The plugins that read sources must be
/// linked into the program (`rbdm_plugins::link()`).
pub fn rbd(store: rbdm_store::StoreRef) -> Rbd {
    Rbd::new(store).with_opener(open_for_image)
}

/// A destination's source, opened from the spec in its migration record.
struct Source {
    image: Arc<dyn SourceImage>,
    rec: MigrationRecord,
    stats: rbdm_copy::Stats,
    /// Copy-ups of this process, by object number modulo their count: a client's threads
    /// writing into one object wait for the first one's copy instead of each reading the
    /// object's source to plan one of their own (the store lock orders the copy, not that).
    copying: [std::sync::Mutex<()>; COPY_STRIPES],
}

const COPY_STRIPES: usize = 64;

fn point(p: Option<usize>) -> Point {
    p.map(Point::Snap).unwrap_or(Point::Head)
}

fn to_image_error(e: &dyn std::error::Error, errno: i32) -> rbdm_image::Error {
    let e = rbdm_store::report(e);
    match errno {
        libc::ENOENT => rbdm_image::Error::NoSource(e),
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
        // Every client write into the object asks. Once copied it stays copied (the copy marks
        // it done last, under its lock), so a stat and an xattr read answer, instead of
        // listing the object's history in the source again (which reads it for a raw file).
        let h = image.header()?;
        let loc = image.data_loc(&h, object_no);
        if holds_head_data(image, &loc)? {
            return Ok(());
        }
        let _one = self.copying[(object_no % COPY_STRIPES as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if holds_head_data(image, &loc)? {
            return Ok(());
        }
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
    let image = open_recorded(rbd, rec).map_err(|e| to_image_error(&e, e.errno()))?;
    Ok(Arc::new(Source {
        image: image.into(),
        rec: rec.clone(),
        stats: Default::default(),
        copying: std::array::from_fn(|_| std::sync::Mutex::new(())),
    }))
}

/// Whether a destination object holds the image's head: it exists and its copy is not
/// midway (a killed copy leaves an older point's bytes at head, marked with that point; a
/// client's write always finishes the copy first). Only a missing object means "no data";
/// any other failure to read the marker (I/O, database, pool) is returned, not taken as an
/// empty object, so a client's copy-up never decides from an error that nothing is there.
pub(crate) fn holds_head_data(dst: &Image, loc: &rbdm_store::Locator) -> rbdm_image::Result<bool> {
    match dst.store().get_xattr(loc, rbdm_copy::MARKER) {
        Ok(v) => Ok(v == rbdm_copy::DONE),
        Err(rbdm_store::Error::NoObject { .. }) => Ok(false),
        Err(rbdm_store::Error::NoKey { .. }) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Opens a destination's source from its record: the spec, checked against what it was at
/// prepare before and after the open (so the open file is the prepared one).
fn open_recorded(rbd: &Rbd, rec: &MigrationRecord) -> Result<Box<dyn SourceImage>, SourceError> {
    identity::check(&rec.source_spec, &rec.source_identity)?;
    let image = open_source_spec(rbd, &rec.source_spec)?;
    identity::check(&rec.source_spec, &rec.source_identity)?;
    Ok(image)
}

/// Parses and opens a source-spec; text that is not JSON is `EBADMSG`, an invalid spec
/// `EINVAL`, as librbd reports them.
pub fn open_source_spec(rbd: &Rbd, text: &str) -> Result<Box<dyn SourceImage>, SourceError> {
    let json: Value = serde_json::from_str(text)
        .map_err(|e| SourceError::Malformed(format!("invalid JSON: {e}")))?;
    rbdm_registry::open_source(&json, &OpenContext::new(|| Ok(rbd.clone())))
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

/// What `rbdm status` shows of a migration.
pub struct Status {
    pub source: String,
    pub destination: String,
    pub state: String,
    pub import_only: bool,
}

/// The migration `spec` takes part in, if any.
pub fn status(rbd: &Rbd, spec: &ImageSpec) -> Result<Option<Status>> {
    // A prepare that was killed is settled first, so what is shown is what is.
    if let Some(mut pair) = recover::find(rbd, spec)? {
        if pair.any(MigrationState::Preparing) {
            match recover::settle_prepare(rbd, &mut pair) {
                Ok(_) | Err(Error::Busy(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let img = rbd.open(spec, true)?;
    let Some(rec) = record_with_source(rbd, spec, &img)? else {
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

/// The record, once its source opens where librbd would open it: with the image, while the
/// copy is not done (prepared, executing). A source that cannot be opened fails the command
/// with its errno (ECONNREFUSED for an nbd server that is down). Once executed, nothing
/// reads it. A failure is the answer only if the record still says so: a commit racing this
/// may have removed a source the record no longer needs.
fn record_with_source(rbd: &Rbd, spec: &ImageSpec, img: &Image) -> Result<Option<MigrationRecord>> {
    let mut rec = record_of(img)?;
    loop {
        let Some(r) = rec.as_ref().filter(|r| {
            r.role == MigrationRole::Destination
                && matches!(
                    r.state,
                    MigrationState::Prepared | MigrationState::Executing
                )
        }) else {
            return Ok(rec);
        };
        let Err(source) = open_recorded(rbd, r) else {
            return Ok(rec);
        };
        let now = record_of(img)?;
        if now.as_ref().map(|n| n.state) == Some(r.state) {
            return Err(Error::SourceUnavailable {
                image: spec.image.clone(),
                source,
            });
        }
        rec = now;
    }
}

fn ns_prefix(ns: &str) -> String {
    if ns.is_empty() {
        String::new()
    } else {
        format!("{ns}/")
    }
}
