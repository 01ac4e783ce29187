//! Intents: how a multi-step operation on an image survives a SIGKILL at any point.
//!
//! The rule (DESIGN.md, invariant 6): before its first visible step, an operation records
//! durably what it is about to do, and any later command on that image finds an unfinished
//! intent and rolls it forward or back, so that what `info`, `ls` and `status` show is true.
//! Ceph writes its migration steps to be re-runnable (the comment above `relink_children` in
//! librbd's `Migration.cc`); an intent goes one step further and names the steps, so the
//! rerun does not have to guess which of them happened.
//!
//! Two kinds of intent share this idea:
//! - A **migration** keeps its intent in the migration record of both headers (role, peer,
//!   state). Its states are steps (`preparing`, `prepared`, `executing`, `executed`,
//!   `committing`, `aborting`), changed only by [`Image::swap_migration_record`], a
//!   compare-and-swap: a writer that finds a state it did not expect stops instead of
//!   overwriting it. The migration crate rolls unfinished ones forward or back.
//! - Any other operation keeps an **intent key** `rbdm_intent.<op>.<arg>` on the header object
//!   (beside the header's own keys, so header updates leave it alone), whose value is the
//!   step reached and what the op needs to finish. [`Image::finish_intents`] (run on every
//!   writable open) finishes them.
//!
//! How an op uses intent keys (snapshot removal does, see [`Image::snap_remove`]):
//! 1. `intent_begin(op, arg, data)` before the first change anyone else can see;
//! 2. each step written so that running it twice is harmless;
//! 3. `intent_end(op, arg)` after the last step;
//! 4. a branch in [`Image::finish_intents`] that looks at what the store shows and either
//!    runs the remaining steps (forward) or drops the intent when no step became visible
//!    (back). The finisher must be safe to run while nothing else touches the image, which
//!    the writable open guarantees (clients take the exclusive lock to write).

use rbdm_store::{Error as StoreError, SnapContext, WriteOp};

use crate::encoding::{Dec, Enc};
use crate::migration::MigrationRecord;
use crate::{Error, Image, Result};

const PREFIX: &str = "rbdm_intent.";

/// An unfinished operation found on an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub op: String,
    pub arg: String,
    /// What the op recorded to finish with (its own encoding).
    pub data: Vec<u8>,
}

fn key(op: &str, arg: &str) -> String {
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

impl Image {
    /// Records that `op` on `arg` starts; `Busy` if the same one is unfinished.
    pub fn intent_begin(&self, op: &str, arg: &str, data: &[u8]) -> Result<()> {
        let k = key(op, arg);
        let w = WriteOp::new()
            .assert_exists()
            .omap_cmp(&k, None)
            .omap_set([(k.clone(), encode(data))]);
        match self
            .store()
            .operate(&self.header_loc(), &w, &SnapContext::default())
        {
            Err(StoreError::Canceled(_)) => Err(Error::Busy(format!(
                "image '{}': an earlier {op} of {arg} is unfinished",
                self.name()
            ))),
            r => Ok(r?),
        }
    }

    /// Records that `op` on `arg` is done (idempotent).
    pub fn intent_end(&self, op: &str, arg: &str) -> Result<()> {
        let w = WriteOp::new().omap_rm([key(op, arg)]);
        match self
            .store()
            .operate(&self.header_loc(), &w, &SnapContext::default())
        {
            Err(StoreError::NotFound(_)) => Ok(()),
            r => Ok(r?),
        }
    }

    /// The unfinished operations recorded on this image.
    pub fn intents(&self) -> Result<Vec<Intent>> {
        let page = self
            .store()
            .omap_get(&self.header_loc(), "", PREFIX, 1024)?;
        page.iter().map(|(k, v)| decode(k, v)).collect()
    }

    /// Rolls every unfinished intent forward or back (see the module doc). Unknown ops are an
    /// error naming them: a newer program left them, and guessing could lose data.
    pub fn finish_intents(&self) -> Result<()> {
        for i in self.intents()? {
            match i.op.as_str() {
                SNAP_REMOVE => self.finish_snap_remove(&i)?,
                op => {
                    return Err(Error::Unsupported(format!(
                        "image '{}' has an unfinished operation '{op}' this program does not know",
                        self.name()
                    )))
                }
            }
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
            let now = h
                .migration
                .as_deref()
                .map(MigrationRecord::decode)
                .transpose()?;
            let next = change(now)?;
            h.migration = next.as_ref().map(MigrationRecord::encode);
            Ok(next)
        })
    }
}

/// Snapshot removal: the header forgets the snapshot, then the store frees its clones.
pub(crate) const SNAP_REMOVE: &str = "snap_remove";

/// What a snapshot removal records: the snapshot's id and size (for its object map).
pub(crate) fn snap_remove_data(id: u64, size: u64) -> Vec<u8> {
    Enc::new().u64(id).u64(size).finish()
}

impl Image {
    fn finish_snap_remove(&self, i: &Intent) -> Result<()> {
        let mut d = Dec::new(&i.data, "snap_remove intent");
        let (id, size) = (d.u64()?, d.u64()?);
        if self.header()?.snaps.contains_key(&id) {
            // Killed before the header changed: nothing visible happened, roll back.
            return self.intent_end(SNAP_REMOVE, &i.arg);
        }
        self.snap_remove_rest(id, size)?;
        self.intent_end(SNAP_REMOVE, &i.arg)
    }
}

/// An operation's mark on an image, seen by other processes (see [`Image::op_running`]) until
/// it is dropped or its process dies (the store breaks a dead client's locks).
pub struct OpLock {
    store: rbdm_store::StoreRef,
    loc: rbdm_store::Locator,
    name: String,
    cookie: String,
}

impl Drop for OpLock {
    fn drop(&mut self) {
        let _ = self.store.unlock(&self.loc, &self.name, &self.cookie);
    }
}

impl Image {
    /// Marks `op` as running on this image; `Busy` if it (or, when `exclusive`, any holder of
    /// `op`) runs already in another live process. Shared holders exclude only exclusive ones.
    pub fn op_lock(&self, op: &str, exclusive: bool) -> Result<OpLock> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cookie = format!("{}.{n}", std::process::id());
        let loc = self.header_loc();
        match self
            .store()
            .lock(&loc, op, &cookie, "rbdm operation", exclusive)
        {
            Err(StoreError::Busy(_)) => Err(Error::Busy(format!(
                "image '{}': {op} is running in another process",
                self.name()
            ))),
            r => r.map_err(Error::from),
        }?;
        Ok(OpLock {
            store: self.store().clone(),
            loc,
            name: op.into(),
            cookie,
        })
    }

    /// Whether a live process holds `op` on this image.
    pub fn op_running(&self, op: &str) -> Result<bool> {
        match self.store().list_lockers(&self.header_loc(), op) {
            Ok(l) => Ok(!l.is_empty()),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            rbd.fsck(None).unwrap().len(),
            1,
            "the clone is owned by nothing"
        );
        let again = rbd.open(&spec, false).unwrap();
        assert!(again.intents().unwrap().is_empty());
        assert!(rbd.fsck(None).unwrap().is_empty());
    }
}
