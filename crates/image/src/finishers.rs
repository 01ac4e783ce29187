//! What each multi-step operation records in its intent, and the branch that finishes it
//! after a kill (see [`crate::intent`] for the mechanism): forward when a step became visible,
//! back when none did. Every branch may run twice.

use rbdm_store::{SnapContext, SnapId, WriteOp};

use crate::encoding::{Dec, Enc};
use crate::header::{self, decode_parent, encode_parent, ParentLink};
use crate::intent::{Anchor, Intent};
use crate::{Error, Image, PoolSpec, Rbd, Result};

/// Snapshot removal: the header forgets the snapshot, then the store frees its clones.
pub(crate) const SNAP_REMOVE: &str = "snap_remove";
/// Snapshot creation: a store snap id and its object map exist before the header names it.
pub(crate) const SNAP_CREATE: &str = "snap_create";
/// Flatten: the header drops its parent links, then the parents' children lists follow.
pub(crate) const FLATTEN: &str = "flatten";
/// Resize: objects past a new end go (and a tail is zeroed) before the size changes.
pub(crate) const RESIZE: &str = "resize";
/// Rollback: the size changes, then every object is rewritten from the snapshot.
pub(crate) const ROLLBACK: &str = "rollback";
/// A copy-up for snapshots that saw more of the parent than the head: the object is written
/// with what they see, then the head's part beyond its overlap is zeroed.
pub(crate) const COPY_UP: &str = "copy_up";
/// Create or clone (on the directory): the header (and child link) before the name.
pub(crate) const CREATE: &str = "create";
/// Trash move (on the directory): the trash entry, then the name goes.
pub(crate) const TRASH_MOVE: &str = "trash_move";
/// Trash restore (on the directory): the name comes back, then the trash entry goes.
pub(crate) const TRASH_RESTORE: &str = "trash_restore";

/// Two numbers, the common shape of an image op's record.
pub(crate) fn two(a: u64, b: u64) -> Vec<u8> {
    Enc::new().u64(a).u64(b).finish()
}

fn read_two(i: &Intent) -> Result<(u64, u64)> {
    let what = format!("{} intent", i.op);
    let mut d = Dec::new(&i.data, &what);
    Ok((d.u64()?, d.u64()?))
}

/// Parent links an op may have stopped (or started) referencing.
pub(crate) fn links(links: &[ParentLink]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(links.len() as u32);
    for l in links {
        e.bytes(&encode_parent(l));
    }
    e.finish()
}

fn read_links(buf: &[u8], what: &str) -> Result<Vec<ParentLink>> {
    let mut d = Dec::new(buf, what);
    let n = d.u32()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let raw = d.bytes()?;
        out.push(decode_parent(&mut Dec::new(raw, what))?);
    }
    Ok(out)
}

/// A create: the name and the parent link (if a clone).
pub(crate) fn create_data(name: &str, parent: Option<&ParentLink>) -> Vec<u8> {
    let mut e = Enc::new();
    e.str(name);
    e.bytes(&links(&parent.into_iter().cloned().collect::<Vec<_>>()));
    e.finish()
}

/// In-object ranges to zero (a copy-up's second write).
pub(crate) fn ranges(r: &[(u64, u64)]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(r.len() as u32);
    for (o, l) in r {
        e.u64(*o).u64(*l);
    }
    e.finish()
}

fn read_ranges(i: &Intent) -> Result<Vec<(u64, u64)>> {
    let mut d = Dec::new(&i.data, "copy_up intent");
    let n = d.u32()?;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push((d.u64()?, d.u64()?));
    }
    Ok(out)
}

fn arg_u64(i: &Intent) -> Result<u64> {
    i.arg
        .parse()
        .map_err(|_| Error::Corrupt(format!("{} intent names '{}'", i.op, i.arg)))
}

impl Image {
    /// Finishes one image intent whose owner is dead (the caller holds its claim).
    pub(crate) fn finish_one(&self, i: &Intent) -> Result<()> {
        match i.op.as_str() {
            SNAP_REMOVE => {
                let (id, size) = read_two(i)?;
                if self.header()?.snaps.contains_key(&id) {
                    // Killed before the header changed: nothing visible happened.
                    return Ok(());
                }
                self.snap_remove_rest(id, size)
            }
            SNAP_CREATE => self.finish_snap_create(arg_u64(i)?),
            FLATTEN => self.sync_child_links(&read_links(&i.data, "flatten intent")?),
            RESIZE => {
                let (old, new) = read_two(i)?;
                self.resize_steps(old, new, &mut |_, _| {})
            }
            ROLLBACK => {
                let (snap, old) = read_two(i)?;
                match self.header()?.snaps.get(&snap).cloned() {
                    Some(sm) => self.rollback_steps(&sm, old, None, &mut |_, _| {}),
                    None => Ok(()),
                }
            }
            COPY_UP => self.zero_in_object(arg_u64(i)?, &read_ranges(i)?),
            op => Err(Error::Unsupported(format!(
                "image '{}' has an unfinished operation '{op}' this program does not know",
                self.name()
            ))),
        }
    }

    /// Forward when the header names the snapshot (only the fast-diff reset of the head map
    /// may be missing), back otherwise: the map and the store's snap id go.
    fn finish_snap_create(&self, sid: SnapId) -> Result<()> {
        let h = self.header()?;
        if h.snaps.contains_key(&sid) {
            if h.snaps.keys().next_back() == Some(&sid) {
                self.clean_head_map(&h)?;
            }
            return Ok(());
        }
        self.drop_snap_id(&h, sid)
    }

    /// Registers this image as a child of each link it references (head or snapshot) and
    /// unregisters it from each it does not: the children lists follow the header.
    pub(crate) fn sync_child_links(&self, links: &[ParentLink]) -> Result<()> {
        let h = self.header()?;
        for l in links {
            let used = h.parent.iter().any(|p| p.same_parent(l))
                || h.snaps
                    .values()
                    .any(|s| s.parent.iter().any(|p| p.same_parent(l)));
            if used {
                self.rbd().child_register(l, self.pool_spec(), self.id())?;
            } else {
                self.rbd()
                    .child_unregister(l, self.pool_spec(), self.id())?;
            }
        }
        Ok(())
    }

    /// Zeroes ranges of one object at head, with the head's snap context (so snapshots keep
    /// what was there); an absent object needs nothing.
    fn zero_in_object(&self, object_no: u64, ranges: &[(u64, u64)]) -> Result<()> {
        let h = self.header()?;
        let mut op = WriteOp::new().assert_exists();
        for (o, l) in ranges {
            op = op.zero(*o, *l);
        }
        match self
            .store()
            .operate(&self.data_loc(&h, object_no), &op, &h.snap_context())
        {
            Err(rbdm_store::Error::NoObject { .. }) => Ok(()),
            r => Ok(r?),
        }
    }
}

impl Rbd {
    pub(crate) fn dir_anchor<'a>(&'a self, spec: &'a PoolSpec) -> Result<Anchor<'a>> {
        Ok(Anchor {
            store: self.store(),
            loc: self.loc(spec, crate::rbd::DIRECTORY)?,
            must_exist: false,
            label: &spec.pool,
        })
    }

    /// The naming operations (create, clone, trash moves) unfinished in a pool/namespace.
    pub fn pending(&self, spec: &PoolSpec) -> Result<Vec<Intent>> {
        self.dir_anchor(spec)?.list()
    }

    /// Finishes the naming intents of `spec` whose owner is dead (see the module doc of
    /// [`crate::intent`]).
    pub fn settle_names(&self, spec: &PoolSpec) -> Result<()> {
        let anchor = self.dir_anchor(spec)?;
        for i in anchor.list()? {
            let Some(_claim) = anchor.claim(&i)? else {
                continue;
            };
            match i.op.as_str() {
                CREATE => self.undo_create(spec, &i)?,
                TRASH_MOVE => self.finish_trash_move(spec, &i)?,
                TRASH_RESTORE => self.finish_trash_restore(spec, &i)?,
                op => {
                    return Err(Error::Unsupported(format!(
                        "pool {spec} has an unfinished operation '{op}' this program does not know"
                    )))
                }
            }
            anchor.end(&i.op, &i.arg)?;
        }
        Ok(())
    }

    /// As [`Rbd::settle_names`], for readers: a failure (a full disk) leaves the state as it
    /// is, which the reader then shows.
    pub(crate) fn settle_names_quietly(&self, spec: &PoolSpec) {
        let _ = self.settle_names(spec);
    }

    /// A create whose name was never written is undone: its header and child link go.
    fn undo_create(&self, spec: &PoolSpec, i: &Intent) -> Result<()> {
        let id = &i.arg;
        let mut d = Dec::new(&i.data, "create intent");
        let name = d.str()?;
        let parent = read_links(d.bytes()?, "create intent")?;
        if self.image_id(spec, &name).ok().as_deref() == Some(id.as_str()) {
            return Ok(());
        }
        self.drop_id_object_of(spec, &name, id)?;
        for l in &parent {
            self.child_unregister(l, spec, id)?;
        }
        let hloc = self.loc(spec, &header::header_name(id))?;
        crate::image::ignore_not_found(self.store().operate(
            &hloc,
            &WriteOp::new().remove(),
            &SnapContext::default(),
        ))
    }

    fn finish_trash_move(&self, spec: &PoolSpec, i: &Intent) -> Result<()> {
        let name = String::from_utf8_lossy(&i.data).into_owned();
        if self.trash_find(spec, &i.arg)?.is_none() {
            return Ok(());
        }
        match self.dir_remove(spec, &name, &i.arg) {
            Ok(()) | Err(Error::NoImage { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn finish_trash_restore(&self, spec: &PoolSpec, i: &Intent) -> Result<()> {
        let name = String::from_utf8_lossy(&i.data).into_owned();
        if self.image_id(spec, &name).ok().as_deref() == Some(i.arg.as_str()) {
            self.trash_forget(spec, &i.arg)?;
        } else {
            self.drop_id_object_of(spec, &name, &i.arg)?;
        }
        Ok(())
    }

    /// Unfinished intents whose owner is dead, on the directory of `spec` and on the headers
    /// of `ids`, as `(what, op)` (for `fsck`).
    pub(crate) fn dead_intents(
        &self,
        spec: &PoolSpec,
        ids: &[String],
    ) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let dir = self.dir_anchor(spec)?;
        for i in dir.list()? {
            if !dir.is_live(&i)? {
                out.push((
                    crate::rbd::DIRECTORY.to_string(),
                    format!("{}.{}", i.op, i.arg),
                ));
            }
        }
        for id in ids {
            let name = header::header_name(id);
            let anchor = Anchor {
                store: self.store(),
                loc: self.loc(spec, &name)?,
                must_exist: true,
                label: id,
            };
            for i in anchor.list()? {
                if !anchor.is_live(&i)? {
                    out.push((name.clone(), format!("{}.{}", i.op, i.arg)));
                }
            }
        }
        Ok(out)
    }

    /// The ids and names that unfinished creates own (for `fsck`).
    pub(crate) fn creating(&self, spec: &PoolSpec) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for i in self.pending(spec)?.into_iter().filter(|i| i.op == CREATE) {
            let name = Dec::new(&i.data, "create intent").str()?;
            out.push((i.arg, name));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CreateOptions, ImageSpec, Layout};
    use rbdm_store::StoreRef;

    const OBJ: u64 = 4096;

    /// A copy-up killed between its two writes: the object holds what the snapshot saw, the
    /// head's part past its overlap is not zeroed yet; the next open zeroes it.
    #[test]
    fn killed_copy_up_is_zeroed_by_the_next_open() {
        let store: StoreRef = std::sync::Arc::new(rbdm_store::mem::MemStore::new());
        let rbd = Rbd::new(store.clone());
        let pool = PoolSpec::new("rbd", "");
        let opts = CreateOptions {
            layout: Some(Layout::new(OBJ, OBJ, 1).unwrap()),
            ..CreateOptions::with_size(4 * OBJ)
        };
        rbd.create(&pool, "p", &opts).unwrap();
        let p = rbd
            .open(&ImageSpec::parse("p", "rbd").unwrap(), false)
            .unwrap();
        p.write(0, &[7u8; 4 * OBJ as usize]).unwrap();
        p.snap_create("s").unwrap();
        p.snap_protect("s").unwrap();
        let (ps, cs) = (
            ImageSpec::parse("p@s", "rbd").unwrap(),
            ImageSpec::parse("c", "rbd").unwrap(),
        );
        rbd.clone_image(&ps, &cs, &opts).unwrap();
        let c = rbd.open(&cs, false).unwrap();
        c.snap_create("cs1").unwrap();
        // The head sees the parent up to 6000 only; cs1 sees all of it.
        let keep = 6000;
        c.resize(keep, true, &mut |_, _| {}).unwrap();
        c.resize(4 * OBJ, false, &mut |_, _| {}).unwrap();
        // Object 1's copy-up, cut after its first write.
        let zero = [(keep - OBJ, 2 * OBJ - keep)];
        drop(c.intent_begin(COPY_UP, "1", &ranges(&zero)).unwrap());
        let h = c.header().unwrap();
        let op = WriteOp::new()
            .create_exclusive()
            .write(0, &[7u8; OBJ as usize]);
        store
            .operate(&c.data_loc(&h, 1), &op, &SnapContext::default())
            .unwrap();
        drop(c);
        let again = rbd.open(&cs, false).unwrap();
        assert!(again.intents().unwrap().is_empty());
        let mut head = vec![1u8; OBJ as usize];
        again.read(OBJ, &mut head).unwrap();
        let split = (keep - OBJ) as usize;
        assert!(head[..split].iter().all(|&b| b == 7), "below the overlap");
        assert!(head[split..].iter().all(|&b| b == 0), "past the overlap");
        let snap = rbd
            .open(&ImageSpec::parse("c@cs1", "rbd").unwrap(), true)
            .unwrap();
        let mut old = vec![1u8; OBJ as usize];
        snap.read(OBJ, &mut old).unwrap();
        assert!(
            old.iter().all(|&b| b == 7),
            "the snapshot keeps the parent's bytes"
        );
    }
}
