//! Advisory image locks, as `rbd lock add|ls|rm` manage them: named by a lock id (a cookie),
//! exclusive or shared under a tag, and kept until removed — they outlive the process that
//! took them (operators use them to fence clients), unlike the image's managed exclusive lock,
//! which dies with its holder.
//!
//! They live in the header object's omap (`advisory_lock.<id>`), so they go with the image; a
//! counter key (`advisory_lock`) compared and bumped by every change makes "check that no one
//! holds it, then take it" one atomic step. `lock ls` shows the managed lock too (id
//! `auto <n>`, tag `internal`), as Ceph's does, since both are `rbd_lock` there.

use rbdm_store::{Error as StoreError, SnapContext, WriteOp};

use crate::{Error, Image, Result};

/// Every key of ours starts with this (the header loader skips them).
pub const PREFIX: &str = "advisory_lock";
/// The tag Ceph gives the managed exclusive lock.
pub const INTERNAL_TAG: &str = "internal";

/// One holder of an image lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLock {
    /// The lock id (`rbd lock add IMAGE ID`), or `auto <n>` for the managed lock.
    pub id: String,
    /// The shared lock's tag; empty when exclusive (`internal` for the managed lock).
    pub tag: String,
    pub exclusive: bool,
    pub client_id: u64,
    /// `host:0/pid`, as rbdm words a client's address.
    pub address: String,
    /// Whether this is the image's managed exclusive lock (held while a client writes).
    pub managed: bool,
}

impl ImageLock {
    /// `client.<id>`, as `rbd lock ls` names the locker.
    pub fn locker(&self) -> String {
        format!("client.{}", self.client_id)
    }
}

fn key(id: &str) -> String {
    format!("{PREFIX}.{id}")
}

fn encode(l: &ImageLock) -> Vec<u8> {
    // NUL-separated: ids and tags come from argv, which cannot hold a NUL.
    let exclusive = if l.exclusive { "1" } else { "0" };
    [exclusive, &l.client_id.to_string(), &l.address, &l.tag]
        .join("\0")
        .into_bytes()
}

fn decode(id: &str, v: &[u8]) -> Result<ImageLock> {
    let bad = || Error::Corrupt(format!("advisory lock '{id}': bad record"));
    let text = std::str::from_utf8(v).map_err(|_| bad())?;
    let mut f = text.splitn(4, '\0');
    let exclusive = f.next().ok_or_else(bad)? == "1";
    let client_id = f.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let address = f.next().ok_or_else(bad)?.to_string();
    let tag = f.next().ok_or_else(bad)?.to_string();
    Ok(ImageLock {
        id: id.to_string(),
        tag,
        exclusive,
        client_id,
        address,
        managed: false,
    })
}

/// `locker` as rbd takes it: `client.<n>`.
pub fn parse_locker(locker: &str) -> Result<u64> {
    locker
        .strip_prefix("client.")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("unable to parse client '{locker}'")))
}

impl Image {
    /// The managed lock's holders, then the advisory locks (by id).
    pub fn image_locks(&self) -> Result<Vec<ImageLock>> {
        let mut out = self.managed_locks()?;
        out.extend(self.advisory_locks()?.1);
        Ok(out)
    }

    /// The managed exclusive lock's holders, as image locks.
    fn managed_locks(&self) -> Result<Vec<ImageLock>> {
        Ok(self
            .lockers()?
            .into_iter()
            .map(|l| ImageLock {
                id: l.cookie,
                tag: INTERNAL_TAG.to_string(),
                exclusive: l.exclusive,
                client_id: l.client.id,
                address: format!("{}:0/{}", l.client.host, l.client.pid),
                managed: true,
            })
            .collect())
    }

    /// Refuses changes while an advisory lock is held (writes, snapshot creation, metadata,
    /// removal): librbd does not take its exclusive lock over one it did not make, so its
    /// maintenance operations fail with EROFS and its writers wait for good; we refuse both,
    /// `ReadOnly`, naming the lock to remove. A race with a concurrent `lock_add` is not closed.
    /// As librbd, only an image with the exclusive-lock feature is fenced.
    pub(crate) fn check_fence(&self) -> Result<()> {
        if self.header()?.features & crate::features::EXCLUSIVE_LOCK == 0 {
            return Ok(());
        }
        // The first lock is enough to refuse: one page of one key, one decode.
        let prefix = format!("{PREFIX}.");
        let first = self.store().omap_get(&self.header_loc(), "", &prefix, 1)?;
        match first.first() {
            None => Ok(()),
            Some((k, v)) => {
                let l = decode(&k[prefix.len()..], v)?;
                Err(Error::ReadOnly(format!(
                    "image '{}' is fenced by lock '{}' of {} (lock rm releases it)",
                    self.name(),
                    l.id,
                    l.locker()
                )))
            }
        }
    }

    /// The counter's value and the advisory locks.
    fn advisory_locks(&self) -> Result<(Option<Vec<u8>>, Vec<ImageLock>)> {
        let loc = self.header_loc();
        let gen = self.store().omap_get_keys(&loc, &[PREFIX])?.remove(PREFIX);
        let prefix = format!("{PREFIX}.");
        let mut locks = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.store().omap_get(&loc, &after, &prefix, 256)?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            for (k, v) in &page {
                locks.push(decode(&k[prefix.len()..], v)?);
            }
        }
        Ok((gen, locks))
    }

    /// Applies `op` if no one changed the advisory locks since `gen` was read.
    fn commit_locks(&self, gen: Option<Vec<u8>>, op: WriteOp) -> Result<bool> {
        let next = gen
            .as_deref()
            .and_then(|g| std::str::from_utf8(g).ok())
            .and_then(|g| g.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        let op = op
            .assert_exists()
            .omap_cmp(PREFIX, gen.as_deref())
            .omap_set([(PREFIX.to_string(), next.to_string().into_bytes())]);
        match self
            .store()
            .operate(&self.header_loc(), &op, &SnapContext::default())
        {
            Ok(()) => Ok(true),
            Err(StoreError::Canceled(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// `rbd lock add [--shared TAG] IMAGE ID`: `Busy` if anyone holds an exclusive lock (the
    /// managed one too), or any lock when this one is exclusive, or shared locks under
    /// another tag (`BusyTag`-worded, see `LockRefused`).
    pub fn lock_add(&self, id: &str, shared_tag: Option<&str>) -> Result<()> {
        if id.is_empty() {
            return Err(Error::Invalid("lock id is empty".into()));
        }
        if shared_tag == Some("") {
            return Err(Error::Invalid("shared lock tag is empty".into()));
        }
        loop {
            let (gen, locks) = self.advisory_locks()?;
            let mut all = locks;
            all.extend(self.managed_locks()?);
            check_compatible(&all, shared_tag)?;
            let me = self.store().client();
            let lock = ImageLock {
                id: id.to_string(),
                tag: shared_tag.unwrap_or_default().to_string(),
                exclusive: shared_tag.is_none(),
                client_id: me.id,
                address: format!("{}:0/{}", me.host, me.pid),
                managed: false,
            };
            let op = WriteOp::new().omap_set([(key(id), encode(&lock))]);
            if self.commit_locks(gen, op)? {
                return Ok(());
            }
        }
    }

    /// `rbd lock rm IMAGE ID LOCKER`: removes an advisory lock, or breaks the managed lock
    /// (`auto <n>`) of a client. `NoLock` when no such lock is held by that locker.
    pub fn lock_remove(&self, id: &str, locker: &str) -> Result<()> {
        let client_id = parse_locker(locker)?;
        loop {
            let (gen, locks) = self.advisory_locks()?;
            if !locks.iter().any(|l| l.id == id && l.client_id == client_id) {
                return self.break_managed(id, client_id);
            }
            let op = WriteOp::new().omap_rm([key(id)]);
            if self.commit_locks(gen, op)? {
                return Ok(());
            }
        }
    }

    fn break_managed(&self, id: &str, client_id: u64) -> Result<()> {
        let held = self
            .lockers()?
            .iter()
            .any(|l| l.cookie == id && l.client.id == client_id);
        if !held {
            return Err(Error::no_lock(id, client_id));
        }
        match self
            .store()
            .break_lock(&self.header_loc(), "rbd_lock", client_id, id)
        {
            Err(StoreError::NoLocker { .. }) => Err(Error::no_lock(id, client_id)),
            r => Ok(r?),
        }
    }
}

/// Why `lock add` is refused, in rbd's words (see `is_other_tag`).
const OTHER_TAG: &str = "lock is already held by someone else with a different tag";
const HELD: &str = "lock is already held by someone else";

/// Whether a `Busy` error of `lock_add` means "shared under another tag".
pub fn is_other_tag(e: &Error) -> bool {
    matches!(e, Error::Busy(m) if m == OTHER_TAG)
}

fn check_compatible(held: &[ImageLock], shared_tag: Option<&str>) -> Result<()> {
    if held.is_empty() {
        return Ok(());
    }
    let Some(tag) = shared_tag else {
        return Err(Error::Busy(HELD.into()));
    };
    if held.iter().any(|l| l.exclusive) {
        return Err(Error::Busy(HELD.into()));
    }
    if held.iter().any(|l| l.tag != tag) {
        return Err(Error::Busy(OTHER_TAG.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(id: &str, tag: &str) -> ImageLock {
        ImageLock {
            id: id.into(),
            tag: tag.into(),
            exclusive: tag.is_empty(),
            client_id: 7,
            address: "h:0/1".into(),
            managed: false,
        }
    }

    #[test]
    fn records_roundtrip() {
        let l = lock("my lock", "t\n1");
        assert_eq!(decode("my lock", &encode(&l)).unwrap(), l);
        assert!(decode("x", b"1\0nope\0a\0").is_err());
    }

    #[test]
    fn compatibility_as_ceph() {
        assert!(check_compatible(&[], None).is_ok());
        assert!(check_compatible(&[lock("a", "")], Some("t")).is_err());
        assert!(check_compatible(&[lock("a", "t")], Some("t")).is_ok());
        assert!(is_other_tag(
            &check_compatible(&[lock("a", "t")], Some("u")).unwrap_err()
        ));
        assert!(check_compatible(&[lock("a", "t")], None).is_err());
    }

    #[test]
    fn lockers_parse() {
        assert_eq!(parse_locker("client.4305").unwrap(), 4305);
        assert!(parse_locker("notaclient").is_err());
        assert!(parse_locker("client.x").is_err());
    }
}
