//! `migration prepare`: links a destination to its source, as intents that survive a kill.
//!
//! Order of the steps (each durable before the next; see `recover.rs` for how a rerun reads
//! them): the source's record (`preparing`, naming the destination) → the source into the
//! trash → the destination created with its own record (`preparing`, naming the source by
//! id) and the source's snapshots → the destination's record `prepared` → the source's record
//! `prepared`. A kill before the last step is rolled back (or, after the destination's
//! `prepared`, forward) by the next command on either name.

use rbdm_image::migration::{MigrationRecord, MigrationRole, MigrationState, PeerImage};
use rbdm_image::{CreateOptions, Image, ImageSpec, Rbd, TrashSource};
use serde_json::json;

use crate::finish::{self, swap_state};
use crate::recover::{self, PREPARE_OP};
use crate::{Error, PrepareOptions, Result};

/// Creates `dst` with the record `rec` (so it is never there without one) and the source's
/// snapshots (names, sizes, protection, source ids), oldest first; returns its id and the
/// snapshot map (source id, destination id).
fn create_destination(
    rbd: &Rbd,
    dst: &ImageSpec,
    opts: &CreateOptions,
    snaps: &[(String, u64, bool, u64)],
    head_size: u64,
    rec: &MigrationRecord,
) -> Result<(String, Vec<(u64, u64)>)> {
    let first = snaps.first().map(|s| s.1).unwrap_or(head_size);
    let id = rbd.create_with(
        &dst.pool_spec(),
        &dst.image,
        &CreateOptions {
            size: first,
            ..opts.clone()
        },
        |h| MigrationRecord::to_header(Some(rec), h),
    )?;
    let img = rbd.open_by_id(&dst.pool_spec(), &id, None, false)?;
    let mut points = Vec::new();
    for (name, size, _, src_id) in snaps {
        if img.size() != *size {
            img.resize(*size, true, &mut |_, _| {})?;
        }
        points.push((*src_id, img.snap_create(name)?));
    }
    if img.size() != head_size {
        img.resize(head_size, true, &mut |_, _| {})?;
    }
    Ok((id, points))
}

/// Rolls back an unfinished prepare on either of these names, so a rerun starts clean.
fn settle_names(rbd: &Rbd, names: &[&ImageSpec]) -> Result<()> {
    for spec in names {
        if let Some(mut pair) = recover::find(rbd, spec)? {
            if pair.any(MigrationState::Preparing) {
                recover::settle_prepare(rbd, &mut pair)?;
            }
        }
    }
    Ok(())
}

/// `migration prepare SRC DST`: a same-store migration. `dst` may name the source itself
/// (a layout change in place): the source leaves the directory for the trash first.
pub fn prepare(rbd: &Rbd, src: &ImageSpec, dst: &ImageSpec, opts: &PrepareOptions) -> Result<()> {
    settle_names(rbd, &[src, dst])?;
    let source = rbd.open(src, true)?;
    let _running = source.op_lock(PREPARE_OP, true)?;
    check_preparable(rbd, &source, src, dst)?;
    let plan = Plan::of(rbd, &source, src, dst, opts)?;
    // The intent first: from here every command on either name finds this migration.
    source.swap_migration_record(|r| match r {
        None => Ok(Some(plan.rec.clone())),
        Some(_) => Err(rbdm_image::Error::Busy(migrating(src))),
    })?;
    let made = link(rbd, &source, src, dst, &plan);
    // A handle of ours on the source must not be in the way of putting it back.
    drop(source);
    made.map_err(|e| undo_prepare(rbd, &[src, dst], e))
}

/// Refuses a source that is migrating or open read-write elsewhere, or a destination name
/// that is taken (unless it is the source's own, in place).
fn check_preparable(rbd: &Rbd, source: &Image, src: &ImageSpec, dst: &ImageSpec) -> Result<()> {
    if source.migration_record()?.is_some() {
        return Err(Error::Busy(migrating(src)));
    }
    if !source.lockers()?.is_empty() {
        return Err(Error::Busy(format!(
            "image '{}' is open read-write by another client",
            src.image
        )));
    }
    let in_place = src.pool == dst.pool && src.namespace == dst.namespace && src.image == dst.image;
    if !in_place && rbd.open(dst, true).is_ok() {
        return Err(exists(dst));
    }
    Ok(rbd.check_namespace(&dst.pool_spec())?)
}

fn migrating(src: &ImageSpec) -> String {
    format!("image '{}' is already being migrated", src.image)
}

fn exists(dst: &ImageSpec) -> Error {
    Error::Image(rbdm_image::Error::Exists(format!(
        "image '{}' already exists",
        dst.image
    )))
}

/// What a same-store prepare makes, worked out from the source before anything is written.
struct Plan {
    src_header: std::sync::Arc<rbdm_image::header::Header>,
    /// Name, size, protection and id of each source snapshot, oldest first.
    snaps: Vec<(String, u64, bool, u64)>,
    head_size: u64,
    create: CreateOptions,
    /// The source's record (`preparing`, naming the destination without its id yet).
    rec: MigrationRecord,
    /// The destination's: the same, naming the source by id.
    drec: MigrationRecord,
}

impl Plan {
    fn of(
        rbd: &Rbd,
        source: &Image,
        src: &ImageSpec,
        dst: &ImageSpec,
        opts: &PrepareOptions,
    ) -> Result<Plan> {
        let info = source.info()?;
        let snaps = source
            .snap_list()?
            .into_iter()
            .map(|s| (s.name, s.size, s.protected, s.id))
            .collect();
        let create = opts.create.clone().unwrap_or_else(|| CreateOptions {
            size: info.size,
            layout: Some(info.layout),
            features: Some(info.features),
            data_pool: info.data_pool.clone(),
        });
        let (rec, drec) = records(rbd, &info.id, info.size, src, dst, opts.flatten)?;
        Ok(Plan {
            src_header: source.header()?,
            snaps,
            head_size: info.size,
            create,
            rec,
            drec,
        })
    }
}

/// The source's record and the destination's, both `preparing`; the source is read as a
/// `native` spec naming it by pool id and image id; the destination's overlap is the
/// source's size at prepare, as librbd records it.
fn records(
    rbd: &Rbd,
    src_id: &str,
    src_size: u64,
    src: &ImageSpec,
    dst: &ImageSpec,
    flatten: bool,
) -> Result<(MigrationRecord, MigrationRecord)> {
    let pool_of = |p: &str| rbd.store().pool_id(p).map_err(rbdm_image::Error::from);
    let (pool_id, dst_pool) = (pool_of(&src.pool)?, pool_of(&dst.pool)?);
    let spec = json!({"type": "native", "pool_id": pool_id, "pool_namespace": src.namespace,
                      "image_name": src.image, "image_id": src_id});
    let rec = MigrationRecord {
        role: MigrationRole::Source,
        state: MigrationState::Preparing,
        state_description: String::new(),
        peer: Some(PeerImage {
            pool_id: dst_pool,
            namespace: dst.namespace.clone(),
            name: dst.image.clone(),
            id: String::new(),
        }),
        source_spec: spec.to_string(),
        import_only: false,
        flatten,
        snap_seqs: Vec::new(),
        overlap: 0,
        copied_upto: 0,
        // A same-store source is an image: its snapshots cannot change under the copy.
        source_identity: String::new(),
    };
    let drec = MigrationRecord {
        role: MigrationRole::Destination,
        peer: Some(PeerImage {
            pool_id,
            namespace: src.namespace.clone(),
            name: src.image.clone(),
            id: src_id.to_string(),
        }),
        overlap: src_size,
        ..rec.clone()
    };
    Ok((rec, drec))
}

/// The steps after the source's intent: the source into the trash, the destination made
/// (record, snapshots, parent links, protection), then both records `prepared`.
fn link(rbd: &Rbd, source: &Image, src: &ImageSpec, dst: &ImageSpec, plan: &Plan) -> Result<()> {
    rbd.trash_move_as(src, 0, TrashSource::Migration)?;
    let (dst_id, points) = create_destination(
        rbd,
        dst,
        &plan.create,
        &plan.snaps,
        plan.head_size,
        &plan.drec,
    )?;
    let mut srec = plan.rec.clone();
    if let Some(p) = srec.peer.as_mut() {
        p.id = dst_id.clone();
    }
    source.set_migration_record(Some(&srec))?;
    let dimg = rbd.open_by_id(&dst.pool_spec(), &dst_id, None, false)?;
    if !plan.rec.flatten {
        keep_parent(rbd, &plan.src_header, &dimg, dst)?;
    }
    for (name, _, protected, _) in &plan.snaps {
        if *protected {
            dimg.snap_protect(name)?;
        }
    }
    mark_prepared(&dimg, dst, points)?;
    let undone = |s: MigrationState| {
        (s != MigrationState::Preparing).then(|| format!("prepare of '{}' was undone", dst.image))
    };
    swap_state(source, MigrationState::Prepared, undone)?;
    Ok(())
}

/// The destination's record `prepared`, with its snapshot map; refused if a rollback by
/// another command got there first.
fn mark_prepared(dimg: &Image, dst: &ImageSpec, points: Vec<(u64, u64)>) -> Result<()> {
    dimg.swap_migration_record(|r| match r {
        Some(r) if r.state == MigrationState::Preparing => Ok(Some(MigrationRecord {
            state: MigrationState::Prepared,
            snap_seqs: points.clone(),
            ..r
        })),
        _ => Err(rbdm_image::Error::Invalid(format!(
            "prepare of '{}' was undone",
            dst.image
        ))),
    })?;
    Ok(())
}

/// Undoes what a failed prepare made, found as a later command would find it under either
/// name: `finish::undo` removes it in reverse order (the destination, then the source back
/// from the trash, then the source's record, last so a kill midway is finished by the next
/// command). Returns the prepare's error, with the undo's when that failed too.
fn undo_prepare(rbd: &Rbd, names: &[&ImageSpec], error: Error) -> Error {
    let undo = || -> Result<()> {
        for spec in names {
            if let Some(mut pair) = recover::find(rbd, spec)? {
                if pair.any(MigrationState::Preparing) {
                    finish::undo(rbd, &mut pair, false, &mut |_, _| {})?;
                }
                return Ok(());
            }
        }
        Ok(())
    };
    match undo() {
        Ok(()) => error,
        Err(undo) => Error::NotUndone {
            error: Box::new(error),
            undo: Box::new(undo),
        },
    }
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
    check_import(spec_text)?;
    // Pinned before the open and checked after it, so what is recorded is what was opened.
    let source_identity = crate::identity::record(spec_text)?;
    let source = crate::open_source_spec(rbd, spec_text)?;
    crate::identity::check(spec_text, &source_identity)?;
    settle_names(rbd, &[dst])?;
    if rbd.open(dst, true).is_ok() {
        return Err(exists(dst));
    }
    let listed = source.snapshots();
    let ids = crate::ceph_form::snap_ids(rbd, spec_text, listed.len())?;
    let snaps: Vec<(String, u64, bool, u64)> = listed
        .into_iter()
        .zip(ids)
        .map(|(s, id)| (s.name, s.size, false, id))
        .collect();
    let opts = create
        .cloned()
        .unwrap_or_else(|| CreateOptions::with_size(source.size()));
    let rec = MigrationRecord {
        role: MigrationRole::Destination,
        state: MigrationState::Preparing,
        state_description: String::new(),
        peer: None,
        source_spec: crate::ceph_form::spec_text(spec_text),
        import_only: true,
        flatten: true,
        snap_seqs: Vec::new(),
        overlap: source.size(),
        copied_upto: 0,
        source_identity,
    };
    let made = create_destination(rbd, dst, &opts, &snaps, source.size(), &rec).and_then(
        |(id, points)| {
            let img = rbd.open_by_id(&dst.pool_spec(), &id, None, false)?;
            let _running = img.op_lock(PREPARE_OP, true)?;
            mark_prepared(&img, dst, points)
        },
    );
    made.map_err(|e| undo_prepare(rbd, &[dst], e))
}

/// An import's source must not change under it: a `native` spec must name a snapshot
/// (librbd: "snapshot required for import", EINVAL). Text that is not JSON is left to
/// `open_source_spec`, which reports it as librbd does (EBADMSG).
fn check_import(spec_text: &str) -> Result<()> {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(spec_text) else {
        return Ok(());
    };
    match rbdm_spec::SourceSpec::from_json(&json) {
        Ok(spec) => spec
            .check_import()
            .map_err(|e| Error::Invalid(e.to_string())),
        // The plugin's own parser names what is wrong.
        Err(_) => Ok(()),
    }
}
