//! `migration prepare`: links a destination to its source, as intents that survive a kill.
//!
//! Order of the steps (each durable before the next; see `recover.rs` for how a rerun reads
//! them): the source's record (`preparing`, naming the destination) → the source into the
//! trash → the destination created with its own record (`preparing`, naming the source by
//! id) and the source's snapshots → the destination's record `prepared` → the source's record
//! `prepared`. A kill before the last step is rolled back (or, after the destination's
//! `prepared`, forward) by the next command on either name.

use rbdm_image::migration::{MigrationRecord, MigrationRole, MigrationState, PeerImage};
use rbdm_image::{CreateOptions, Image, ImageSpec, Rbd};
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
    if source.migration_record()?.is_some() {
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
    let snaps: Vec<(String, u64, bool, u64)> = source
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
    let pool_of = |p: &str| rbd.store().pool_id(p).map_err(rbdm_image::Error::from);
    let (pool_id, dst_pool) = (pool_of(&src.pool)?, pool_of(&dst.pool)?);
    let spec = json!({"type": "native", "pool_id": pool_id, "pool_namespace": src.namespace,
                      "image_name": src.image, "image_id": info.id});
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
        flatten: opts.flatten,
        snap_seqs: Vec::new(),
        overlap: 0,
        copied_upto: 0,
        // A same-store source is an image: its snapshots cannot change under the copy.
        source_identity: String::new(),
    };
    // The intent first: from here every command on either name finds this migration.
    source.swap_migration_record(|r| match r {
        None => Ok(Some(rec.clone())),
        Some(_) => Err(rbdm_image::Error::Busy(format!(
            "image '{}' is already being migrated",
            src.image
        ))),
    })?;
    let drec = MigrationRecord {
        role: MigrationRole::Destination,
        peer: Some(PeerImage {
            pool_id,
            namespace: src.namespace.clone(),
            name: src.image.clone(),
            id: info.id.clone(),
        }),
        overlap: info.size,
        ..rec.clone()
    };
    let made = (|| -> Result<()> {
        rbd.trash_move_as(src, 0, "MIGRATION")?;
        let (dst_id, points) = create_destination(rbd, dst, &create, &snaps, info.size, &drec)?;
        let mut srec = rec.clone();
        if let Some(p) = srec.peer.as_mut() {
            p.id = dst_id.clone();
        }
        source.set_migration_record(Some(&srec))?;
        let dimg = rbd.open_by_id(&dst.pool_spec(), &dst_id, None, false)?;
        if !opts.flatten {
            keep_parent(rbd, &src_header, &dimg, dst)?;
        }
        for (name, _, protected, _) in &snaps {
            if *protected {
                dimg.snap_protect(name)?;
            }
        }
        let prepared = |s: MigrationState| {
            (s != MigrationState::Preparing)
                .then(|| format!("prepare of '{}' was undone", dst.image))
        };
        dimg.swap_migration_record(|r| {
            let r = r.filter(|r| prepared(r.state).is_none()).ok_or_else(|| {
                rbdm_image::Error::Invalid(format!("prepare of '{}' was undone", dst.image))
            })?;
            Ok(Some(MigrationRecord {
                state: MigrationState::Prepared,
                snap_seqs: points.clone(),
                ..r
            }))
        })?;
        swap_state(&source, MigrationState::Prepared, prepared)?;
        Ok(())
    })();
    if let Err(e) = made {
        // Undo what was done, found as a later command would find it.
        drop(source);
        if let Some(mut pair) = recover::find(rbd, src)?.or(recover::find(rbd, dst)?) {
            if pair.any(MigrationState::Preparing) {
                let _ = finish::undo(rbd, &mut pair, false, &mut |_, _| {});
            }
        }
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
    check_import(spec_text)?;
    // Pinned before the open and checked after it, so what is recorded is what was opened.
    let source_identity = crate::identity::record(spec_text)?;
    let source = crate::open_source_spec(rbd, spec_text)?;
    crate::identity::check(spec_text, &source_identity)?;
    settle_names(rbd, &[dst])?;
    if rbd.open(dst, true).is_ok() {
        return Err(Error::Image(rbdm_image::Error::Exists(format!(
            "image '{}' already exists",
            dst.image
        ))));
    }
    let ids = crate::ceph_form::snap_ids(rbd, spec_text, source.snapshots().len())?;
    let snaps: Vec<(String, u64, bool, u64)> = source
        .snapshots()
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
    let made = (|| -> Result<()> {
        let (id, points) = create_destination(rbd, dst, &opts, &snaps, source.size(), &rec)?;
        let img = rbd.open_by_id(&dst.pool_spec(), &id, None, false)?;
        let _running = img.op_lock(PREPARE_OP, true)?;
        img.swap_migration_record(|r| match r {
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
    })();
    if let Err(e) = made {
        if let Some(mut pair) = recover::find(rbd, dst)? {
            if pair.any(MigrationState::Preparing) {
                let _ = finish::undo(rbd, &mut pair, false, &mut |_, _| {});
            }
        }
        return Err(e);
    }
    Ok(())
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
