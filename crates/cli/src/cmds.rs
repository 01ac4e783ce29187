//! One function per command. Each validates all of its arguments before it opens the store,
//! so a bad argument changes nothing; then it calls the image library and prints as rbd does.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rbdm_image::{features, CreateOptions, Image, ImageSpec, Layout, PoolSpec, Rbd};

use crate::args::*;
use crate::doc::Doc;
use crate::listing::parent_string;
use crate::obj;
use crate::output::{byte_u, ctime, err, Align, CmdResult, Fail, Progress, Table};

/// Whether a spec may, must or must not name a snapshot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Snap {
    No,
    Maybe,
    Must,
}

/// What every command needs: the store (opened on first use, after validation) and the
/// global options.
pub struct Ctx {
    store_uri: String,
    pool: Option<String>,
    namespace: Option<String>,
    dest_pool: Option<String>,
    dest_namespace: Option<String>,
    /// `--format json` or `--format xml`: print a `Doc` (see `emit`) instead of plain text.
    pub json: bool,
    /// The `Doc` is printed as XML.
    xml: bool,
    pub pretty: bool,
    pub progress: bool,
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
            json: matches!(cli.format, Some(Format::Json | Format::Xml)),
            xml: cli.format == Some(Format::Xml),
            pretty: cli.pretty_format,
            progress: !cli.no_progress,
            rbd: OnceCell::new(),
        }
    }

    pub fn rbd(&self) -> CmdResult<&Rbd> {
        if let Some(rbd) = self.rbd.get() {
            return Ok(rbd);
        }
        let store = rbdm_store::open(&self.store_uri)
            .map_err(|e| Fail::store(&e, format!("error opening store {}", self.store_uri)))?;
        Ok(self.rbd.get_or_init(|| Rbd::new(store)))
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

    pub fn progress(&self, label: &str) -> Progress {
        Progress::new(label, self.progress)
    }

    /// Prints `doc` in the chosen format, its XML root element named `root` (rbd's name for
    /// the outermost section).
    pub fn emit(&self, root: &str, doc: &Doc) {
        crate::output::print_doc(doc, root, self.xml, self.pretty);
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

fn close(image: Image) -> CmdResult {
    image.close().map_err(err("error closing image"))
}

// ---- layout and features

/// Builds create options from the layout flags, validating every one of them (rbd's rules:
/// power-of-two object size 4K..32M, stripe unit a factor of the object size, both or neither
/// of stripe unit and count, known features with their dependencies). `base` is a layout to
/// start from (a format-2 import's header), whose stripe unit is narrowed to fit a smaller
/// `--object-size` instead of refusing it.
pub fn create_options(
    a: &LayoutArgs,
    size: u64,
    base: Option<Layout>,
    base_features: Option<u64>,
) -> CmdResult<CreateOptions> {
    match a.image_format {
        None | Some(2) => {}
        Some(1) => {
            return Err(Fail::invalid(
                "image format 1 is not supported, only format 2",
            ))
        }
        Some(n) => return Err(Fail::invalid(format!("unknown image format {n}"))),
    }
    let layout = layout_from_args(a, base)?;
    let features = match (a.features.is_empty(), base_features) {
        (false, _) => Some(a.features.iter().fold(0, |acc, f| acc | f)),
        (true, Some(f)) => Some(
            f & !(features::STRIPINGV2
                | features::DATA_POOL
                | features::OPERATIONS
                | features::MIGRATING),
        ),
        (true, None) => None,
    };
    if let Some(f) = features {
        check_feature_deps(f)?;
    }
    if let Some(pool) = &a.data_pool {
        if pool.is_empty() || pool.contains('/') || pool.contains('@') {
            return Err(Fail::invalid(format!("invalid data pool name '{pool}'")));
        }
    }
    Ok(CreateOptions {
        size,
        layout,
        features,
        data_pool: a.data_pool.clone(),
    })
}

fn layout_from_args(a: &LayoutArgs, base: Option<Layout>) -> CmdResult<Option<Layout>> {
    if a.stripe_unit.is_some() != a.stripe_count.is_some() && base.is_none() {
        return Err(Fail::invalid(
            "must specify both (or neither) of stripe-unit and stripe-count",
        ));
    }
    let object_size = match (a.order, a.object_size) {
        (Some(order), _) => {
            if !(rbdm_extent::layout::MIN_ORDER..=rbdm_extent::layout::MAX_ORDER).contains(&order) {
                return Err(Fail::invalid(format!(
                    "order {order} must be in the range [12, 25]"
                )));
            }
            Some(1u64 << order)
        }
        (None, size) => size,
    };
    if object_size.is_none() && a.stripe_unit.is_none() && a.stripe_count.is_none() {
        return Ok(base);
    }
    let base = base.unwrap_or_default();
    let object_size = object_size.unwrap_or(base.object_size);
    if !object_size.is_power_of_two() || !(4096..=32 << 20).contains(&object_size) {
        return Err(Fail::invalid(format!(
            "object size {} is not a power of two between 4 KiB and 32 MiB",
            byte_u(object_size)
        )));
    }
    let (unit, count) = match (a.stripe_unit, a.stripe_count) {
        (None, None) if base.is_striped() => (base.stripe_unit.min(object_size), base.stripe_count),
        (None, None) => (object_size, 1),
        (unit, count) => (
            unit.unwrap_or(base.stripe_unit.min(object_size)),
            count.unwrap_or(base.stripe_count),
        ),
    };
    if count == 0 {
        return Err(Fail::invalid("stripe count must be at least 1"));
    }
    if unit == 0 || unit > object_size || object_size % unit != 0 {
        return Err(Fail::invalid(format!(
            "stripe unit {} is not a factor of the object size {}",
            byte_u(unit),
            byte_u(object_size)
        )));
    }
    Layout::new(object_size, unit, count)
        .map(Some)
        .map_err(|e| Fail::invalid(e.to_string()))
}

fn feature_name(bit: u64) -> &'static str {
    features::NAMES
        .iter()
        .find(|(_, b)| *b == bit)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

fn check_feature_deps(f: u64) -> CmdResult {
    let deps = [
        (features::OBJECT_MAP, features::EXCLUSIVE_LOCK),
        (features::FAST_DIFF, features::OBJECT_MAP),
        (features::JOURNALING, features::EXCLUSIVE_LOCK),
    ];
    for (feature, needs) in deps {
        if f & feature != 0 && f & needs == 0 {
            return Err(Fail::invalid(format!(
                "image feature {} requires {}",
                feature_name(feature),
                feature_name(needs)
            )));
        }
    }
    Ok(())
}

pub fn feature_names(mask: u64) -> Vec<&'static str> {
    features::NAMES
        .iter()
        .filter(|(_, bit)| mask & bit != 0)
        .map(|(n, _)| *n)
        .collect()
}

// ---- images

pub fn create(ctx: &Ctx, a: &CreateArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let opts = create_options(&a.layout, a.size.unwrap_or(0), None, None)?;
    check_namespace(ctx, &spec.pool_spec())?;
    if let Some(pool) = &opts.data_pool {
        check_pool(ctx, pool)?;
    }
    ctx.rbd()?
        .create(&spec.pool_spec(), &spec.image, &opts)
        .map_err(err("create error"))
}

pub fn rm(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let rbd = ctx.rbd()?;
    let mut pc = ctx.progress("Removing image");
    let r = rbd.remove(&spec, &mut pc.callback());
    finish(&mut pc, r).map_err(err("delete error"))
}

fn finish<T>(pc: &mut Progress, r: rbdm_image::Result<T>) -> rbdm_image::Result<T> {
    match &r {
        Ok(_) => pc.finish(),
        Err(_) => pc.fail(),
    }
    r
}

pub fn resize(ctx: &Ctx, a: &ResizeArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let size = a.size.unwrap_or(0);
    let image = open(ctx, &spec, false)?;
    if size < image.size() && !a.allow_shrink {
        let _ = image.close();
        return Err(Fail::invalid(
            "shrinking an image is only allowed with the --allow-shrink flag",
        ));
    }
    let mut pc = ctx.progress("Resizing image");
    let r = image.resize(size, a.allow_shrink, &mut pc.callback());
    finish(&mut pc, r).map_err(err("resize error"))?;
    close(image)
}

/// A destination spec that names no pool stays in the source's pool and namespace.
fn dest_spec(ctx: &Ctx, src: &ImageSpec, dest: &str, snap: Snap) -> CmdResult<ImageSpec> {
    if dest.split('@').next().unwrap_or_default().contains('/') {
        return ctx.image_spec(dest, snap);
    }
    let mut spec = ImageSpec::parse(dest, &src.pool).map_err(|e| Fail::invalid(e.to_string()))?;
    spec.namespace = src.namespace.clone();
    check_snap(&spec, snap)?;
    Ok(spec)
}

pub fn rename(ctx: &Ctx, a: &TwoSpecs) -> CmdResult {
    let src = ctx.image_spec(&a.src, Snap::No)?;
    let dest = dest_spec(ctx, &src, &a.dest, Snap::No)?;
    if src.pool_spec() != dest.pool_spec() {
        return Err(Fail::invalid("mv/rename across pools not supported"));
    }
    ctx.rbd()?
        .rename(&src.pool_spec(), &src.image, &dest.image)
        .map_err(err("rename error"))
}

// ---- snapshots

pub fn snap(ctx: &Ctx, cmd: &SnapCmd) -> CmdResult {
    match cmd {
        SnapCmd::Create(a) => snap_create(ctx, a),
        SnapCmd::Ls(a) => snap_ls(ctx, a),
        SnapCmd::Rm(a) => snap_rm(ctx, a),
        SnapCmd::Protect(a) => snap_protect(ctx, a),
        SnapCmd::Unprotect(a) => snap_unprotect(ctx, a),
        SnapCmd::Rollback(a) => snap_rollback(ctx, a),
        SnapCmd::Purge(a) => snap_purge(ctx, a),
        SnapCmd::Rename(a) => snap_rename(ctx, a),
    }
}

/// Opens the head of a `image@snap` spec for writing, returning the snapshot name too.
fn open_for_snap(ctx: &Ctx, s: &str) -> CmdResult<(Image, String)> {
    let spec = ctx.image_spec(s, Snap::Must)?;
    let snap = spec.snap.clone().unwrap_or_default();
    Ok((open(ctx, &spec.with_snap(None), false)?, snap))
}

pub fn snap_create(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let (image, snap) = open_for_snap(ctx, &a.spec)?;
    image
        .snap_create(&snap)
        .map_err(err("failed to create snapshot"))?;
    close(image)
}

pub fn snap_ls(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, true)?;
    let snaps = image.snap_list().map_err(err("failed to list snapshots"))?;
    let _ = image.close();
    if ctx.json {
        let v = snaps.iter().map(|s| {
            obj! {"id" => s.id, "name" => &s.name, "size" => s.size,
            "protected" => if s.protected { "true" } else { "false" },
            "timestamp" => ctime(s.timestamp)}
        });
        ctx.emit("snapshots", &Doc::list("snapshot", v));
        return Ok(());
    }
    let mut t = Table::new(&[
        ("SNAPID", Align::Left, Align::Right),
        ("NAME", Align::Left, Align::Left),
        ("SIZE", Align::Left, Align::Right),
        ("PROTECTED", Align::Left, Align::Left),
        ("TIMESTAMP", Align::Left, Align::Left),
    ]);
    for s in &snaps {
        let prot = if s.protected { "yes" } else { "" };
        t.row(vec![
            s.id.to_string(),
            s.name.clone(),
            byte_u(s.size),
            prot.into(),
            ctime(s.timestamp),
        ]);
    }
    if !t.is_empty() {
        print!("{t}");
    }
    Ok(())
}

pub fn snap_rm(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let (image, snap) = open_for_snap(ctx, &a.spec)?;
    match image.snap_remove(&snap) {
        Ok(()) => close(image),
        Err(e) if e.errno() == libc::EBUSY => {
            let _ = image.close();
            Err(Fail::new(
                libc::EBUSY,
                format!("snapshot '{snap}' is protected from removal."),
            ))
        }
        Err(e) => {
            let _ = image.close();
            Err(Fail::image(&e, "failed to remove snapshot"))
        }
    }
}

pub fn snap_protect(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let (image, snap) = open_for_snap(ctx, &a.spec)?;
    image
        .snap_protect(&snap)
        .map_err(err("protecting snap failed"))?;
    close(image)
}

pub fn snap_unprotect(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let (image, snap) = open_for_snap(ctx, &a.spec)?;
    image
        .snap_unprotect(&snap)
        .map_err(err("unprotecting snap failed"))?;
    close(image)
}

pub fn snap_rollback(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let (image, snap) = open_for_snap(ctx, &a.spec)?;
    let mut pc = ctx.progress("Rolling back to snapshot");
    let r = image.snap_rollback(&snap, &mut pc.callback());
    finish(&mut pc, r).map_err(err("rollback failed"))?;
    close(image)
}

pub fn snap_purge(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, false)?;
    let snaps = image.snap_list().map_err(err("removing snaps failed"))?;
    if let Some(s) = snaps.iter().find(|s| s.protected) {
        let _ = image.close();
        return Err(Fail::new(
            libc::EBUSY,
            format!("snapshot '{}' is protected from removal.", s.name),
        ));
    }
    if snaps.is_empty() {
        return close(image);
    }
    let mut pc = ctx.progress("Removing all snapshots");
    let r = image.snap_purge();
    finish(&mut pc, r).map_err(err("removing snaps failed"))?;
    close(image)
}

pub fn snap_rename(ctx: &Ctx, a: &TwoSpecs) -> CmdResult {
    let src = ctx.image_spec(&a.src, Snap::Must)?;
    let dest = if a.dest.contains('@') {
        dest_spec(ctx, &src, &a.dest, Snap::Must)?
    } else {
        src.with_snap(Some(&a.dest))
    };
    if src.pool_spec() != dest.pool_spec() {
        return Err(Fail::invalid(
            "source and destination pool must be the same",
        ));
    }
    if src.image != dest.image {
        return Err(Fail::invalid(
            "source and destination image name must be the same",
        ));
    }
    let image = open(ctx, &src.with_snap(None), false)?;
    let (from, to) = (src.snap.unwrap_or_default(), dest.snap.unwrap_or_default());
    image
        .snap_rename(&from, &to)
        .map_err(err("renaming snap failed"))?;
    close(image)
}

// ---- clones

pub fn clone(ctx: &Ctx, a: &CloneArgs) -> CmdResult {
    let parent = ctx.image_spec(&a.parent, Snap::Must)?;
    let child = ctx.dest_image_spec(&a.child, Snap::No)?;
    let mut opts = create_options(&a.layout, 0, None, None)?;
    check_namespace(ctx, &child.pool_spec())?;
    if let Some(pool) = &opts.data_pool {
        check_pool(ctx, pool)?;
    }
    let source = open(ctx, &parent, true)?;
    opts.size = source.size();
    let _ = source.close();
    ctx.rbd()?
        .clone_image(&parent, &child, &opts)
        .map_err(err("clone error"))
}

pub fn flatten(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, false)?;
    let mut pc = ctx.progress("Image flatten");
    let r = image.flatten(&mut pc.callback());
    finish(&mut pc, r).map_err(err("flatten error"))?;
    close(image)
}

pub fn children(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::Maybe)?;
    let image = open(ctx, &spec, true)?;
    let kids = image.children().map_err(err("listing children failed"))?;
    let _ = image.close();
    if ctx.json {
        let v = kids.iter().map(|c| {
            let mut o =
                obj! {"pool" => &c.pool, "pool_namespace" => &c.namespace, "image" => &c.image_name};
            if c.in_trash {
                o.set("trash", true);
                o.set("id", &c.image_id);
            }
            o
        });
        ctx.emit("children", &Doc::list("child", v));
        return Ok(());
    }
    for c in &kids {
        let ns = if c.namespace.is_empty() {
            String::new()
        } else {
            format!("{}/", c.namespace)
        };
        let trash = if c.in_trash {
            format!(" (trash {})", c.image_id)
        } else {
            String::new()
        };
        println!("{}/{ns}{}{trash}", c.pool, c.image_name);
    }
    Ok(())
}

// ---- trash

pub fn trash(ctx: &Ctx, cmd: &TrashCmd) -> CmdResult {
    match cmd {
        TrashCmd::Mv(a) => trash_mv(ctx, a),
        TrashCmd::Ls(a) => trash_ls(ctx, a),
        TrashCmd::Restore(a) => trash_restore(ctx, a),
        TrashCmd::Rm(a) => trash_rm(ctx, a),
    }
}

pub fn trash_mv(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    ctx.rbd()?
        .trash_move(&spec, 0)
        .map_err(err("deferred delete error"))?;
    Ok(())
}

pub fn trash_ls(ctx: &Ctx, a: &TrashLsArgs) -> CmdResult {
    let ps = ctx.pool_spec(a.pool_spec.as_deref())?;
    check_namespace(ctx, &ps)?;
    let entries = ctx
        .rbd()?
        .trash_list(&ps, a.all)
        .map_err(err("trash list"))?;
    let status = |e: &rbdm_image::TrashEntry| {
        if e.deferment_end <= now() {
            format!("expired at {}", ctime(e.deferment_end))
        } else {
            format!("protected until {}", ctime(e.deferment_end))
        }
    };
    if !a.long {
        if ctx.json {
            let v = entries
                .iter()
                .map(|e| obj! {"id" => &e.id, "name" => &e.name});
            ctx.emit("trash", &Doc::list("image", v));
        } else {
            for e in &entries {
                println!("{} {}", e.id, e.name);
            }
        }
        return Ok(());
    }
    let mut t = Table::new(&[
        ("ID", Align::Left, Align::Left),
        ("NAME", Align::Left, Align::Left),
        ("SOURCE", Align::Left, Align::Left),
        ("DELETED_AT", Align::Left, Align::Left),
        ("STATUS", Align::Left, Align::Left),
        ("PARENT", Align::Left, Align::Left),
    ]);
    let mut out = Doc::empty_list();
    for e in &entries {
        let parent = ctx
            .rbd()?
            .open_by_id(&ps, &e.id, None, true)
            .ok()
            .and_then(|img| {
                let p = img.info().ok().and_then(|i| i.parent);
                let _ = img.close();
                p
            })
            .map(|p| parent_string(&p))
            .unwrap_or_default();
        let mut o = obj! {"id" => &e.id, "name" => &e.name, "source" => &e.source,
        "deleted_at" => ctime(e.deleted_at), "status" => status(e)};
        // rbd leaves the key out for an image with no parent.
        if !parent.is_empty() {
            o.set("parent", &parent);
        }
        out.push("image", o);
        t.row(vec![
            e.id.clone(),
            e.name.clone(),
            e.source.clone(),
            ctime(e.deleted_at),
            status(e),
            parent,
        ]);
    }
    if ctx.json {
        ctx.emit("trash", &out);
    } else if !t.is_empty() {
        print!("{t}");
    }
    Ok(())
}

/// `[pool/[namespace/]]image-id`.
fn trash_spec(ctx: &Ctx, s: &str) -> CmdResult<(PoolSpec, String)> {
    let spec = ctx.image_spec(s, Snap::No)?;
    let id = spec.image.clone();
    Ok((spec.pool_spec(), id))
}

pub fn trash_restore(ctx: &Ctx, a: &TrashRestoreArgs) -> CmdResult {
    let (ps, id) = trash_spec(ctx, &a.spec)?;
    if let Some(name) = &a.image {
        if name.is_empty() || name.contains('/') || name.contains('@') {
            return Err(Fail::invalid(format!("invalid image name '{name}'")));
        }
    }
    ctx.rbd()?
        .trash_restore(&ps, &id, a.image.as_deref())
        .map_err(err("restore error"))
}

pub fn trash_rm(ctx: &Ctx, a: &TrashRmArgs) -> CmdResult {
    let (ps, id) = trash_spec(ctx, &a.spec)?;
    let rbd = ctx.rbd()?;
    let mut pc = ctx.progress("Removing image");
    let r = rbd.trash_remove(&ps, &id, a.force, &mut pc.callback());
    finish(&mut pc, r).map_err(err("remove error"))
}

// ---- accounting

pub fn du(ctx: &Ctx, a: &DuArgs) -> CmdResult {
    let (ps, only, snap) = match &a.spec {
        Some(s) => {
            let spec = ctx.image_spec(s, Snap::Maybe)?;
            (
                spec.pool_spec(),
                Some(spec.image.clone()),
                spec.snap.clone(),
            )
        }
        None => (ctx.pool_spec(None)?, None, None),
    };
    check_namespace(ctx, &ps)?;
    let names = ctx.rbd()?.list(&ps).map_err(err("du failed"))?;
    if let Some(name) = &only {
        if !names.contains(name) {
            return Err(Fail::new(
                libc::ENOENT,
                format!("du failed: specified image {name} is not found."),
            ));
        }
    }
    let mut t = Table::new(&[
        ("NAME", Align::Left, Align::Left),
        ("PROVISIONED", Align::Left, Align::Right),
        ("USED", Align::Left, Align::Right),
    ]);
    let mut out = Doc::empty_list();
    let (mut rows, mut total_prov, mut total_used) = (0, 0u64, 0u64);
    for name in names
        .iter()
        .filter(|n| only.as_ref().is_none_or(|o| o == *n))
    {
        let image = match ctx.rbd()?.open(&ps.image(name), true) {
            Ok(image) => image,
            Err(e) if e.errno() == libc::ENOENT => continue,
            Err(e) => return Err(Fail::image(&e, format!("error opening {name}"))),
        };
        let entries = image.du().map_err(err("du failed"))?;
        let id = image.info().map(|i| i.id).unwrap_or_default();
        let snap_ids = image.snap_list().map_err(err("du failed"))?;
        let _ = image.close();
        check_du_snaps(&entries, snap.as_deref(), a.from_snap.as_deref())?;
        let mut started = a.from_snap.is_none();
        for e in &entries {
            if !started {
                started = e.snap.as_deref() == a.from_snap.as_deref();
                continue;
            }
            let label = match &e.snap {
                Some(s) => format!("{name}@{s}"),
                None => name.clone(),
            };
            t.row(vec![label, byte_u(e.provisioned), byte_u(e.used)]);
            let mut o = obj! {"name" => name, "id" => &id};
            if let Some(s) = &e.snap {
                o.set("snapshot", s);
                if let Some(info) = snap_ids.iter().find(|i| &i.name == s) {
                    o.set("snapshot_id", info.id);
                }
            }
            o.set("provisioned_size", e.provisioned);
            o.set("used_size", e.used);
            out.push("image", o);
            rows += 1;
            total_used += e.used;
            if e.snap.is_none() || snap.is_some() {
                total_prov += e.provisioned;
            }
            if snap.is_some() && e.snap == snap {
                break;
            }
        }
    }
    if ctx.json {
        let mut v = obj! {"images" => out};
        if only.is_none() {
            v.set("total_provisioned_size", total_prov);
            v.set("total_used_size", total_used);
        }
        ctx.emit("stats", &v);
        return Ok(());
    }
    if rows > 1 {
        t.row(vec![
            "<TOTAL>".into(),
            byte_u(total_prov),
            byte_u(total_used),
        ]);
    }
    if !names.is_empty() {
        print!("{t}");
    }
    Ok(())
}

fn check_du_snaps(
    entries: &[rbdm_image::DuEntry],
    snap: Option<&str>,
    from: Option<&str>,
) -> CmdResult {
    for name in [snap, from].into_iter().flatten() {
        if !entries.iter().any(|e| e.snap.as_deref() == Some(name)) {
            return Err(Fail::new(
                libc::ENOENT,
                format!("du failed: specified snapshot {name} is not found."),
            ));
        }
    }
    Ok(())
}

pub fn diff(ctx: &Ctx, a: &DiffArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::Maybe)?;
    let image = open(ctx, &spec, true)?;
    let extents = image
        .diff(a.from_snap.as_deref(), a.whole_object)
        .map_err(err("diff error"))?;
    let _ = image.close();
    if ctx.json {
        let v = extents.iter().map(|e| {
            obj! {"offset" => e.offset, "length" => e.len,
            "exists" => if e.exists { "true" } else { "false" }}
        });
        ctx.emit("extents", &Doc::list("extent", v));
        return Ok(());
    }
    let mut t = Table::new(&[
        ("Offset", Align::Left, Align::Left),
        ("Length", Align::Left, Align::Left),
        ("Type", Align::Left, Align::Left),
    ]);
    for e in &extents {
        t.row(vec![
            e.offset.to_string(),
            e.len.to_string(),
            if e.exists { "data" } else { "zero" }.into(),
        ]);
    }
    print!("{t}");
    Ok(())
}

// ---- metadata

pub fn image_meta(ctx: &Ctx, cmd: &MetaCmd) -> CmdResult {
    match cmd {
        MetaCmd::Set(a) => {
            let image = open(ctx, &ctx.image_spec(&a.spec, Snap::No)?, false)?;
            image
                .metadata_set(&a.key, &a.value)
                .map_err(err("setting metadata failed"))?;
            close(image)
        }
        MetaCmd::Get(a) => {
            let image = open(ctx, &ctx.image_spec(&a.spec, Snap::No)?, true)?;
            let v = image
                .metadata_get(&a.key)
                .map_err(err(format!("failed to get metadata {} of image", a.key)))?;
            let _ = image.close();
            println!("{v}");
            Ok(())
        }
        MetaCmd::Rm(a) => {
            let image = open(ctx, &ctx.image_spec(&a.spec, Snap::No)?, false)?;
            image
                .metadata_remove(&a.key)
                .map_err(err("removing metadata failed"))?;
            close(image)
        }
        MetaCmd::Ls(a) => meta_ls(ctx, a),
    }
}

fn meta_ls(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let image = open(ctx, &ctx.image_spec(&a.spec, Snap::No)?, true)?;
    let pairs = image
        .metadata_list()
        .map_err(err("listing metadata failed"))?;
    let _ = image.close();
    if ctx.json {
        // rbd names each XML element after its key.
        let doc = Doc::Obj(pairs.into_iter().map(|(k, v)| (k, Doc::Str(v))).collect());
        ctx.emit("metadatas", &doc);
        return Ok(());
    }
    if pairs.is_empty() {
        println!("There are 0 metadata on this image.");
        return Ok(());
    }
    let one = pairs.len() == 1;
    println!(
        "There {} {} {} on this image:\n",
        if one { "is" } else { "are" },
        pairs.len(),
        if one { "metadatum" } else { "metadata" }
    );
    let mut t = Table::new(&[
        ("Key", Align::Left, Align::Left),
        ("Value", Align::Left, Align::Left),
    ]);
    for (k, v) in pairs {
        t.row(vec![k, v]);
    }
    print!("{t}");
    Ok(())
}

pub fn status(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, true)?;
    let me = ctx.rbd()?.store().client().id;
    let watchers = image.watchers().map_err(err("show status failed"))?;
    let _ = image.close();
    // Our own read-only open is no one's business.
    let watchers: Vec<_> = watchers.into_iter().filter(|w| w.client.id != me).collect();
    let addr = |w: &rbdm_image::Watcher| format!("{}:0/{}", w.client.host, w.client.pid);
    let migration = rbdm_migration::status(ctx.rbd()?, &spec)
        .map_err(|e| Fail::errno(e.errno(), "show status failed", &e.to_string()))?;
    if ctx.json {
        let v = watchers
            .iter()
            .map(|w| obj! {"address" => addr(w), "client" => w.client.id, "cookie" => w.cookie});
        let mut out = obj! {"watchers" => Doc::list("watcher", v)};
        if let Some(m) = &migration {
            out.set("migration", crate::status::migration_doc(m));
        }
        ctx.emit("status", &out);
        return Ok(());
    }
    if watchers.is_empty() {
        println!("Watchers: none");
    } else {
        println!("Watchers:");
        for w in &watchers {
            println!(
                "\twatcher={} client.{} cookie={}",
                addr(w),
                w.client.id,
                w.cookie
            );
        }
    }
    if let Some(m) = migration {
        println!("Migration:");
        println!("\tsource: {}", m.source);
        println!("\tdestination: {}", m.destination);
        println!("\tstate: {}", m.state);
    }
    Ok(())
}

// ---- pools, namespaces, config-key

fn check_pool_name(name: &str) -> CmdResult {
    if name.is_empty() || name.contains('/') || name.contains('@') {
        return Err(Fail::invalid(format!("invalid pool name '{name}'")));
    }
    Ok(())
}

pub fn pool(ctx: &Ctx, cmd: &PoolCmd) -> CmdResult {
    match cmd {
        PoolCmd::Create(a) => {
            check_pool_name(&a.name)?;
            ctx.rbd()?
                .pool_create(&a.name)
                .map_err(err(format!("error creating pool '{}'", a.name)))
        }
        PoolCmd::Ls => {
            let pools = ctx.rbd()?.pool_list().map_err(err("error listing pools"))?;
            if ctx.json {
                ctx.emit("pools", &pools_doc(ctx, &pools)?);
            } else {
                for p in pools {
                    println!("{p}");
                }
            }
            Ok(())
        }
        PoolCmd::Rm(a) => {
            check_pool_name(&a.name)?;
            check_pool(ctx, &a.name)?;
            ctx.rbd()?
                .pool_remove(&a.name, a.force)
                .map_err(err(format!("error removing pool '{}'", a.name)))
        }
    }
}

/// Each pool's id and name, under the names `ceph osd pool ls detail` gives them
/// (`<pools><pool><pool_id>1</pool_id><pool_name>rbd</pool_name>…`), since scripts take the
/// id from there for a native source-spec's `pool_id`.
fn pools_doc(ctx: &Ctx, pools: &[String]) -> CmdResult<Doc> {
    let store = ctx.rbd()?.store();
    let mut out = Doc::empty_list();
    for name in pools {
        let id = store
            .pool_id(name)
            .map_err(|e| Fail::store(&e, format!("error opening pool '{name}'")))?;
        out.push("pool", obj! {"pool_id" => id, "pool_name" => name});
    }
    Ok(out)
}

fn ns_spec(ctx: &Ctx, a: &NsSpecArg) -> CmdResult<PoolSpec> {
    let spec = ctx.pool_spec(a.spec.as_deref())?;
    if spec.namespace.is_empty() {
        return Err(Fail::invalid("namespace name was not specified"));
    }
    Ok(spec)
}

pub fn namespace(ctx: &Ctx, cmd: &NsCmd) -> CmdResult {
    match cmd {
        NsCmd::Create(a) => {
            let spec = ns_spec(ctx, a)?;
            check_pool(ctx, &spec.pool)?;
            ctx.rbd()?
                .namespace_create(&spec.pool, &spec.namespace)
                .map_err(err("failed to create namespace"))
        }
        NsCmd::Rm(a) => {
            let spec = ns_spec(ctx, a)?;
            check_pool(ctx, &spec.pool)?;
            ctx.rbd()?
                .namespace_remove(&spec.pool, &spec.namespace)
                .map_err(err("failed to remove namespace"))
        }
        NsCmd::Ls(a) => {
            let pool = a
                .pool
                .clone()
                .unwrap_or_else(|| ctx.default_pool().to_string());
            check_pool_name(&pool)?;
            check_pool(ctx, &pool)?;
            let list = ctx
                .rbd()?
                .namespace_list(&pool)
                .map_err(err("listing namespaces failed"))?;
            if ctx.json {
                let v = list.iter().map(|n| obj! {"name" => n});
                ctx.emit("namespaces", &Doc::list("namespace", v));
                return Ok(());
            }
            let mut t = Table::new(&[("NAME", Align::Left, Align::Left)]);
            for n in list {
                t.row(vec![n]);
            }
            if !t.is_empty() {
                print!("{t}");
            }
            Ok(())
        }
    }
}

pub fn config_key(ctx: &Ctx, cmd: &ConfigKeyCmd) -> CmdResult {
    match cmd {
        ConfigKeyCmd::Set(a) => {
            let value = match (&a.value, &a.in_file) {
                (_, Some(path)) => std::fs::read(path)
                    .map_err(|e| Fail::io(&e, format!("error reading {path}")))?,
                (Some(v), None) => v.clone().into_bytes(),
                (None, None) => return Err(Fail::invalid("a value or --in-file is required")),
            };
            ctx.rbd()?
                .config_key_set(&a.key, &value)
                .map_err(err(format!("error setting key '{}'", a.key)))
        }
        ConfigKeyCmd::Get(a) => {
            let v = ctx
                .rbd()?
                .config_key_get(&a.key)
                .map_err(err(format!("error getting key '{}'", a.key)))?;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&v);
            let _ = out.write_all(b"\n");
            Ok(())
        }
        ConfigKeyCmd::Rm(a) => ctx
            .rbd()?
            .config_key_remove(&a.key)
            .map_err(err(format!("error removing key '{}'", a.key))),
        ConfigKeyCmd::Ls => {
            let keys = ctx
                .rbd()?
                .config_key_list()
                .map_err(err("error listing keys"))?;
            if ctx.json {
                ctx.emit("keys", &Doc::list("key", &keys));
            } else {
                for k in keys {
                    println!("{k}");
                }
            }
            Ok(())
        }
    }
}

// ---- bench

/// The byte every write of `rbdm bench` puts at image offset `off`: the index of the IO
/// block, xor 0x5a, so a test can predict an image's contents after a sequential bench.
pub fn bench_byte(off: u64, io_size: u64) -> u8 {
    ((off / io_size) as u8) ^ 0x5a
}

/// A stateless hash, so offsets of a random pattern depend only on the IO number.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct BenchPlan {
    io_size: u64,
    blocks: u64,
    ops: u64,
    rand: bool,
    kind: IoType,
    mix_read: u64,
}

impl BenchPlan {
    fn offset(&self, op: u64) -> u64 {
        let block = if self.rand {
            mix(op) % self.blocks
        } else {
            op % self.blocks
        };
        block * self.io_size
    }
    fn is_read(&self, op: u64) -> bool {
        match self.kind {
            IoType::Read => true,
            IoType::Write => false,
            IoType::Readwrite | IoType::Rw => mix(op ^ 0x5555_5555) % 100 < self.mix_read,
        }
    }
}

pub fn bench(ctx: &Ctx, a: &BenchArgs) -> CmdResult {
    let kind = a.io_type.unwrap_or(IoType::Write);
    if a.io_size == 0 {
        return Err(Fail::invalid("io-size must be greater than zero"));
    }
    if a.io_size > 32 << 20 {
        return Err(Fail::invalid("io-size should be no larger than 32 MiB"));
    }
    // Every thread holds one IO buffer.
    if a.io_size.saturating_mul(a.io_threads) > 1 << 30 {
        return Err(Fail::invalid(
            "io-size times io-threads should be no more than 1 GiB",
        ));
    }
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, false)?;
    let size = image.size();
    if a.io_size > size {
        let _ = image.close();
        return Err(Fail::invalid("io-size should be less than image size"));
    }
    let plan = BenchPlan {
        io_size: a.io_size,
        blocks: size / a.io_size,
        ops: a.io_total / a.io_size,
        rand: a.io_pattern == IoPattern::Rand,
        kind,
        mix_read: a.rw_mix_read as u64,
    };
    let kind_name = match kind {
        IoType::Read => "read",
        IoType::Write => "write",
        IoType::Readwrite | IoType::Rw => "readwrite",
    };
    let pattern = if plan.rand { "random" } else { "sequential" };
    println!(
        "bench  type {kind_name} io_size {} io_threads {} bytes {} pattern {pattern}",
        a.io_size, a.io_threads, a.io_total
    );
    let r = run_bench(&image, &plan, a.io_threads);
    let closed = image.close();
    r.map_err(err("bench failed"))?;
    closed.map_err(err("error closing image"))
}

fn run_bench(image: &Image, plan: &BenchPlan, threads: u64) -> rbdm_image::Result<()> {
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<rbdm_image::Error>> = Mutex::new(None);
    let start = Instant::now();
    println!("  SEC       OPS   OPS/SEC   BYTES/SEC");
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; plan.io_size as usize];
                while !stop.load(Ordering::Relaxed) {
                    let op = next.fetch_add(1, Ordering::Relaxed);
                    if op >= plan.ops {
                        break;
                    }
                    let off = plan.offset(op);
                    let r = if plan.is_read(op) {
                        image.read(off, &mut buf)
                    } else {
                        buf.fill(bench_byte(off, plan.io_size));
                        image.write(off, &buf)
                    };
                    if let Err(e) = r {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = failure.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        report_bench(plan, &done, &stop, start);
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    image.flush()?;
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let ops = done.load(Ordering::Relaxed);
    let bytes = ops * plan.io_size;
    println!(
        "elapsed: {}   ops: {ops}   ops/sec: {:.2}   bytes/sec: {}/s",
        elapsed as u64,
        ops as f64 / elapsed,
        byte_u((bytes as f64 / elapsed) as u64)
    );
    Ok(())
}

/// Prints a line a second while the workers run, as rbd bench does.
fn report_bench(plan: &BenchPlan, done: &AtomicU64, stop: &AtomicBool, start: Instant) {
    let mut last_ops = 0;
    let mut sec = 0u64;
    loop {
        let deadline = start + Duration::from_secs(sec + 1);
        while Instant::now() < deadline {
            if stop.load(Ordering::Relaxed) || done.load(Ordering::Relaxed) >= plan.ops {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sec += 1;
        let ops = done.load(Ordering::Relaxed);
        let rate = ops.saturating_sub(last_ops);
        last_ops = ops;
        println!(
            "{sec:5}  {ops:8}  {:8.2}  {:>8}/s",
            rate as f64,
            byte_u(rate * plan.io_size)
        );
    }
}
