//! The command context: the store (opened on first use, after a command has validated its
//! arguments) and the global options, with the spec parsing and checks every command shares.

use std::cell::OnceCell;

use rbdm_image::{Image, ImageSpec, PoolSpec, Rbd};

use crate::args::{Cli, Format};
use crate::doc::Doc;
use crate::output::{err, CmdResult, Fail, Progress};

/// Whether a spec may, must or must not name a snapshot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Snap {
    No,
    Maybe,
    Must,
}

/// What every command needs: the store and the global options.
pub struct Ctx {
    store_uri: String,
    pool: Option<String>,
    namespace: Option<String>,
    dest_pool: Option<String>,
    dest_namespace: Option<String>,
    format: Format,
    pretty: bool,
    show_progress: bool,
    rbd: OnceCell<Rbd>,
}

impl Ctx {
    pub fn new(cli: &Cli, store_uri: String) -> Self {
        Ctx {
            store_uri,
            pool: cli.pool.clone(),
            namespace: cli.namespace.clone(),
            dest_pool: cli.dest_pool.clone(),
            dest_namespace: cli.dest_namespace.clone(),
            format: cli.format.unwrap_or(Format::Plain),
            pretty: cli.pretty_format,
            show_progress: !cli.no_progress,
            rbd: OnceCell::new(),
        }
    }

    /// `--format json` or `--format xml`: the command prints a `Doc` (see `emit`) instead of
    /// plain text.
    pub fn formatted(&self) -> bool {
        self.format != Format::Plain
    }

    pub fn rbd(&self) -> CmdResult<&Rbd> {
        if let Some(rbd) = self.rbd.get() {
            return Ok(rbd);
        }
        let store = rbdm_store::open(&self.store_uri)
            .map_err(|e| Fail::store(&e, format!("error opening store {}", self.store_uri)))?;
        Ok(self.rbd.get_or_init(|| rbdm_migration::rbd(store)))
    }

    pub fn default_pool(&self) -> &str {
        self.pool
            .as_deref()
            .unwrap_or(rbdm_image::spec::DEFAULT_POOL)
    }

    /// Parses `[pool/[namespace/]]image[@snap]`, filling pool and namespace from -p and
    /// --namespace when the spec does not name them.
    pub fn image_spec(&self, s: &str, snap: Snap) -> CmdResult<ImageSpec> {
        parse_spec(s, self.default_pool(), self.namespace.as_deref(), snap)
    }

    /// `pool[/namespace]`, or the -p/--namespace defaults when absent.
    pub fn pool_spec(&self, s: Option<&str>) -> CmdResult<PoolSpec> {
        let mut spec = match s {
            Some(s) => PoolSpec::parse(s).map_err(|e| Fail::invalid(e.to_string()))?,
            None => PoolSpec::new(self.default_pool(), ""),
        };
        if !s.is_some_and(|s| s.contains('/')) {
            if let Some(ns) = &self.namespace {
                spec.namespace = ns.clone();
            }
        }
        Ok(spec)
    }

    /// The second image of a two-image command that creates it elsewhere (clone, and
    /// migration prepare's destination): as rbd's `ARGUMENT_MODIFIER_DEST`, -p and
    /// --namespace do not apply to it; --dest-pool and --dest-namespace do, else the default
    /// pool.
    pub fn dest_image_spec(&self, s: &str, snap: Snap) -> CmdResult<ImageSpec> {
        let pool = self
            .dest_pool
            .as_deref()
            .unwrap_or(rbdm_image::spec::DEFAULT_POOL);
        parse_spec(s, pool, self.dest_namespace.as_deref(), snap)
    }

    /// The new name of a rename within a pool: a spec that names no pool stays in the
    /// source's pool and namespace.
    pub fn renamed_spec(&self, src: &ImageSpec, dest: &str, snap: Snap) -> CmdResult<ImageSpec> {
        if dest.split('@').next().unwrap_or_default().contains('/') {
            return self.image_spec(dest, snap);
        }
        let mut spec =
            ImageSpec::parse(dest, &src.pool).map_err(|e| Fail::invalid(e.to_string()))?;
        spec.namespace = src.namespace.clone();
        check_snap(&spec, snap)?;
        Ok(spec)
    }

    pub fn progress(&self, label: &str) -> Progress {
        Progress::new(label, self.show_progress)
    }

    /// Prints `doc` in the chosen format, its XML root element named `root` (rbd's name for
    /// the outermost section).
    pub fn emit(&self, root: &str, doc: &Doc) {
        crate::output::print_doc(doc, root, self.format == Format::Xml, self.pretty);
    }
}

/// `[pool/[namespace/]]image[@snap]`, with `pool` and `namespace` where the spec names none.
fn parse_spec(s: &str, pool: &str, namespace: Option<&str>, snap: Snap) -> CmdResult<ImageSpec> {
    let mut spec = ImageSpec::parse(s, pool).map_err(|e| Fail::invalid(e.to_string()))?;
    let path = s.split('@').next().unwrap_or_default();
    if path.matches('/').count() < 2 {
        if let Some(ns) = namespace {
            spec.namespace = ns.to_string();
        }
    }
    check_snap(&spec, snap)?;
    Ok(spec)
}

fn check_snap(spec: &ImageSpec, snap: Snap) -> CmdResult {
    match (snap, &spec.snap) {
        (Snap::No, Some(_)) => Err(Fail::invalid(
            "snapshot name specified for a command that doesn't use it",
        )),
        (Snap::Must, None) => Err(Fail::invalid("snapshot name was not specified")),
        _ => Ok(()),
    }
}

/// rbd reports a missing pool before it tries anything in it.
pub fn check_pool(ctx: &Ctx, pool: &str) -> CmdResult {
    let pools = ctx.rbd()?.pool_list().map_err(err("error listing pools"))?;
    if pools.iter().any(|p| p == pool) {
        return Ok(());
    }
    Err(Fail::errno(
        libc::ENOENT,
        format!("error opening pool '{pool}'"),
        "",
    ))
}

pub fn check_namespace(ctx: &Ctx, spec: &PoolSpec) -> CmdResult {
    check_pool(ctx, &spec.pool)?;
    if spec.namespace.is_empty() {
        return Ok(());
    }
    let list = ctx
        .rbd()?
        .namespace_list(&spec.pool)
        .map_err(err("error listing namespaces"))?;
    if list.contains(&spec.namespace) {
        return Ok(());
    }
    Err(Fail::errno(
        libc::ENOENT,
        format!("error opening namespace '{spec}'"),
        "",
    ))
}

pub fn open(ctx: &Ctx, spec: &ImageSpec, read_only: bool) -> CmdResult<Image> {
    let name = match &spec.snap {
        Some(snap) => format!("{}@{snap}", spec.image),
        None => spec.image.clone(),
    };
    ctx.rbd()?
        .open(spec, read_only)
        .map_err(err(format!("error opening image {name}")))
}

pub fn close(image: Image) -> CmdResult {
    image.close().map_err(err("error closing image"))
}
