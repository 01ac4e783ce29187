//! Intents: how a multi-step operation survives a SIGKILL at any point.
//!
//! The rule (DESIGN.md, invariant 6): before its first visible step, an operation records
//! durably what it is about to do, and any later command that meets an unfinished intent
//! rolls it forward or back, so that what `info`, `ls`, `trash ls` and `status` show is true.
//! Ceph writes its migration steps to be re-runnable (the comment above `relink_children` in
//! librbd's `Migration.cc`); an intent goes one step further and names the steps, so the
//! rerun does not have to guess which of them happened.
//!
//! Two kinds of intent share this idea:
//! - A **migration** keeps its intent in the migration record of both headers (role, peer,
//!   state). Its states are steps (`preparing`, `prepared`, `executing`, `executed`,
//!   `committing`, `aborting`; kept as Ceph's `MigrationSpec`, `committing` as `executed`
//!   plus a flag in rbdm's own key, see `migration/record.rs`), changed only by
//!   [`Image::swap_migration_record`], a compare-and-swap: a writer that finds a state it did
//!   not expect stops instead of overwriting it. The migration crate rolls unfinished ones
//!   forward or back.
//! - Any other operation keeps an **intent key** `rbdm_intent.<op>.<arg>` on an anchor
//!   object, whose value is what the op needs to finish: the image header for operations on
//!   one image (flatten, resize, snapshot create/remove/rollback, a copy-up that writes
//!   twice), the pool's `rbd_directory` for operations that name images (create and clone,
//!   trash move and restore). `rm` is a trash move (source `REMOVING`, as librbd's) followed
//!   by the trash entry's removal, so a killed `rm` leaves a hidden trash entry that `rm` of
//!   the same name (or `trash rm`) finishes.
//!
//! How an op uses intent keys:
//! 1. `begin(op, arg, data)` before the first change anyone else can see; it takes a lock
//!    named after the key on the anchor (the store breaks a dead process's locks) and keeps
//!    it while the op runs: that is how a finisher tells a live op from a dead one;
//! 2. each step written so that running it twice is harmless;
//! 3. `end(op, arg)` after the last step (or the last step removes the key itself, in the
//!    same atomic write);
//! 4. a finisher branch (`finishers.rs`) that looks at what the store shows and either runs
//!    the remaining steps (forward) or drops the intent when no step became visible (back).
//!
//! Who finishes (the decision for readers): every open of an image by a user (`Rbd::open`,
//! `open_by_id`; read-only ones too, so `info`, `ls -l`, `snap ls`, `export` see the settled
//! state) finishes the image's unfinished intents whose owner is dead, holding the image's
//! exclusive lock meanwhile; if a live client holds that lock the intents are left alone
//! (they are that client's own steps, or wait for it) and the open shows the state as it is.
//! `ls`, `trash ls`, `create`, `clone`, `rm` and the trash commands first finish the pool's
//! naming intents the same way. A reader that cannot write (a full disk) shows the state as
//! it is. Internal reads (a clone's parent, a migration's source) never finish anything.
//! `fsck` reports intents whose owner is dead.

use rbdm_store::{Error as StoreError, Locator, SnapContext, StoreRef, WriteOp};

use crate::encoding::{Dec, Enc};
use crate::migration::MigrationRecord;
use crate::{Error, Image, Result};

pub(crate) const PREFIX: &str = "rbdm_intent.";

/// An unfinished operation found on an image or a pool directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub op: String,
    pub arg: String,
    /// What the op recorded to finish with (its own encoding).
    pub data: Vec<u8>,
}

pub(crate) fn key(op: &str, arg: &str) -> String {
    format!("{PREFIX}{op}.{arg}")
}

fn encode(data: &[u8]) -> Vec<u8> {
    Enc::new()
        .versioned(1, 1, |e| {
            e.bytes(data);
        })
        .finish()
}

fn decode(k: &str, buf: &[u8]) -> Result<Intent> {
    let rest = &k[PREFIX.len()..];
    let (op, arg) = rest
        .split_once('.')
        .ok_or_else(|| Error::Corrupt(format!("intent key '{k}' names no argument")))?;
    let mut d = Dec::new(buf, "intent");
    let (_, mut b) = d.versioned(1)?;
    Ok(Intent {
        op: op.into(),
        arg: arg.into(),
        data: b.bytes()?.to_vec(),
    })
}

/// The object an intent is kept on, and what to call it in errors.
pub(crate) struct Anchor<'a> {
    pub store: &'a StoreRef,
    pub loc: Locator,
    /// The header must exist (an intent must not create it); a directory may not yet.
    pub must_exist: bool,
    pub label: &'a str,
}

impl Anchor<'_> {
    /// Records that `op` on `arg` starts; returns the lock that marks it live. `Busy` if the
    /// same op runs in another process or an earlier one is unfinished.
    pub fn begin(&self, op: &str, arg: &str, data: &[u8]) -> Result<OpLock> {
        let k = key(op, arg);
        let held = take_lock(self.store, &self.loc, &k, true).map_err(|e| match e {
            Error::Busy(_) => Error::Busy(format!(
                "{}: {op} of {arg} is running in another process",
                self.label
            )),
            e => e,
        })?;
        let mut w = WriteOp::new();
        if self.must_exist {
            w = w.assert_exists();
        }
        let w = w.omap_cmp(&k, None).omap_set([(k.clone(), encode(data))]);
        match self.store.operate(&self.loc, &w, &SnapContext::default()) {
            Err(StoreError::Canceled(_)) => Err(Error::Busy(format!(
                "{}: an earlier {op} of {arg} is unfinished",
                self.label
            ))),
            r => Ok(r.map(|_| held)?),
        }
    }

    /// Records that `op` on `arg` is done (idempotent).
    pub fn end(&self, op: &str, arg: &str) -> Result<()> {
        let w = WriteOp::new().omap_rm([key(op, arg)]);
        match self.store.operate(&self.loc, &w, &SnapContext::default()) {
            Err(StoreError::NoObject { .. }) => Ok(()),
            r => Ok(r?),
        }
    }

    /// The unfinished operations recorded here.
    pub fn list(&self) -> Result<Vec<Intent>> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = match self.store.omap_get(&self.loc, &after, PREFIX, 256) {
                Err(StoreError::NoObject { .. }) => break,
                r => r?,
            };
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            for (k, v) in &page {
                out.push(decode(k, v)?);
            }
        }
        Ok(out)
    }

    /// The intent's lock, if its owner is dead and the intent is still recorded: whoever
    /// holds it may finish the op. `None` while the owner lives or once the op ended.
    pub fn claim(&self, i: &Intent) -> Result<Option<OpLock>> {
        let k = key(&i.op, &i.arg);
        let held = match take_lock(self.store, &self.loc, &k, true) {
            Ok(l) => l,
            Err(Error::Busy(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Listed before the owner ended it and let go: then there is nothing to finish.
        let still = match self.store.omap_get_keys(&self.loc, &[&k]) {
            Err(StoreError::NoObject { .. }) => false,
            r => r?.contains_key(&k),
        };
        Ok(still.then_some(held))
    }

    /// Whether a live process holds the intent's lock.
    pub fn is_live(&self, i: &Intent) -> Result<bool> {
        match self.store.list_lockers(&self.loc, &key(&i.op, &i.arg)) {
            Ok(l) => Ok(!l.is_empty()),
            Err(StoreError::NoObject { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl Image {
    pub(crate) fn anchor(&self) -> Anchor<'_> {
        Anchor {
            store: self.store(),
            loc: self.header_loc(),
            must_exist: true,
            label: self.name(),
        }
    }

    /// Records that `op` on `arg` starts (see [`Anchor::begin`]); keep the lock until
    /// [`Image::intent_end`].
    pub fn intent_begin(&self, op: &str, arg: &str, data: &[u8]) -> Result<OpLock> {
        self.anchor().begin(op, arg, data)
    }

    /// Records that `op` on `arg` is done (idempotent).
    pub fn intent_end(&self, op: &str, arg: &str) -> Result<()> {
        self.anchor().end(op, arg)
    }

    /// The unfinished operations recorded on this image.
    pub fn intents(&self) -> Result<Vec<Intent>> {
        self.anchor().list()
    }

    /// Rolls every unfinished intent whose owner is dead forward or back (see the module
    /// doc), holding the exclusive lock meanwhile; leaves them while another live client
    /// holds that lock. Unknown ops are an error naming them: a newer program left them,
    /// and guessing could lose data.
    pub fn finish_intents(&self) -> Result<()> {
        let found = self.intents()?;
        if found.is_empty() {
            return Ok(());
        }
        let h = self.header()?;
        match self.acquire_lock(&h) {
            Err(Error::Busy(_)) => return Ok(()),
            r => r?,
        }
        let anchor = self.anchor();
        for i in found {
            let Some(_claim) = anchor.claim(&i)? else {
                continue;
            };
            self.finish_one(&i)?;
            anchor.end(&i.op, &i.arg)?;
        }
        Ok(())
    }

    /// Compare-and-swap of the migration record: `change` sees the record as stored now and
    /// returns the new one, or an error (nothing written) when the state is not one it may
    /// leave. Runs again if another process changed the header in between.
    pub fn swap_migration_record(
        &self,
        mut change: impl FnMut(Option<MigrationRecord>) -> Result<Option<MigrationRecord>>,
    ) -> Result<Option<MigrationRecord>> {
        self.update_header(|h| {
            let next = change(MigrationRecord::from_header(h)?)?;
            MigrationRecord::to_header(next.as_ref(), h);
            Ok(next)
        })
    }
}

/// An operation's mark on an object, seen by other processes (see [`Image::op_running`]) until
/// it is dropped or its process dies (the store breaks a dead client's locks).
pub struct OpLock {
    store: StoreRef,
    loc: Locator,
    name: String,
    cookie: String,
}

impl Drop for OpLock {
    fn drop(&mut self) {
        let _ = self.store.unlock(&self.loc, &self.name, &self.cookie);
    }
}

/// Takes lock `name` on `loc` for this process; `Busy` if a live process holds it (any
/// holder when `exclusive`, an exclusive one otherwise; this process's other holds count).
fn take_lock(store: &StoreRef, loc: &Locator, name: &str, exclusive: bool) -> Result<OpLock> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cookie = format!("{}.{n}", std::process::id());
    match store.lock(loc, name, &cookie, "rbdm operation", exclusive) {
        Err(StoreError::Busy(_)) => Err(Error::Busy(format!("{name} is held"))),
        r => r.map_err(Error::from),
    }?;
    Ok(OpLock {
        store: store.clone(),
        loc: loc.clone(),
        name: name.into(),
        cookie,
    })
}

impl Image {
    /// Marks `op` as running on this image; `Busy` if it (or, when `exclusive`, any holder of
    /// `op`) runs already in another live process. Shared holders exclude only exclusive ones.
    pub fn op_lock(&self, op: &str, exclusive: bool) -> Result<OpLock> {
        take_lock(self.store(), &self.header_loc(), op, exclusive).map_err(|e| match e {
            Error::Busy(_) => Error::Busy(format!(
                "image '{}': {op} is running in another process",
                self.name()
            )),
            e => e,
        })
    }

    /// Whether a live process holds `op` on this image.
    pub fn op_running(&self, op: &str) -> Result<bool> {
        match self.store().list_lockers(&self.header_loc(), op) {
            Ok(l) => Ok(!l.is_empty()),
            Err(StoreError::NoObject { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finishers::{two as snap_remove_data, SNAP_REMOVE};

    #[test]
    fn intent_value_round_trip() {
        let i = decode(
            "rbdm_intent.snap_remove.4",
            &encode(&snap_remove_data(4, 9)),
        )
        .unwrap();
        assert_eq!(i.op, "snap_remove");
        assert_eq!(i.arg, "4");
        assert!(decode("rbdm_intent.x", &encode(b"")).is_err());
    }

    /// A snapshot removal killed after the header forgot the snapshot: the next writable
    /// open frees the clones, which would otherwise stay in the store owned by nothing.
    #[test]
    fn killed_snap_remove_is_finished_by_the_next_open() {
        let store: rbdm_store::StoreRef = std::sync::Arc::new(rbdm_store::mem::MemStore::new());
        let rbd = crate::Rbd::new(store.clone());
        let spec = crate::ImageSpec::parse("a", "rbd").unwrap();
        rbd.create(
            &spec.pool_spec(),
            "a",
            &crate::CreateOptions::with_size(4 << 20),
        )
        .unwrap();
        let img = rbd.open(&spec, false).unwrap();
        img.write(0, &[7u8; 4096]).unwrap();
        let id = img.snap_create("s").unwrap();
        // Removing the head leaves the object as a clone only, held by the snapshot.
        img.discard(0, 4 << 20).unwrap();
        let h = img.header().unwrap();
        let loc = img.data_loc(&h, 0);
        assert_eq!(store.list_snaps(&loc).unwrap().clones.len(), 1);
        // The first two steps of snap_remove, then a kill.
        img.intent_begin(SNAP_REMOVE, &id.to_string(), &snap_remove_data(id, 4 << 20))
            .unwrap();
        img.update_header(|h| {
            h.snaps.remove(&id);
            Ok(())
        })
        .unwrap();
        drop(img);
        // What fsck sees meanwhile: the clone owned by nothing, the removed snapshot's map,
        // and the unfinished removal itself.
        let found: Vec<String> = rbd
            .fsck(None)
            .unwrap()
            .into_iter()
            .map(|f| f.problem)
            .collect();
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found
            .iter()
            .any(|p| p.starts_with("clone of removed snapshots")));
        assert!(found
            .iter()
            .any(|p| p.contains("unfinished operation snap_remove")));
        let again = rbd.open(&spec, false).unwrap();
        assert!(again.intents().unwrap().is_empty());
        assert!(rbd.fsck(None).unwrap().is_empty());
    }
}
