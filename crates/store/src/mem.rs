//! The in-memory backend: every handle of one `MemStore` family shares a `Mutex<State>`.
//! For tests and models; nothing survives the process.
//!
//! Each handle is its own client (for locks and watchers): `MemStore::handle` opens another
//! one on the same backing, and dropping a handle makes its client dead, as a process exit
//! does for the `dir` backend.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::admit::{admit_lock, Holder};
use crate::plan::{self, DataStep, MetaStep, View};
use crate::snaps::{self, Version};
use crate::{
    ClientInfo, Error, Locator, LockInfo, ObjectStat, ObjectStore, PoolId, Result, SnapContext,
    SnapId, SnapSet, Watcher, WriteOp, HEAD,
};

pub struct MemStore {
    shared: Arc<Mutex<State>>,
    client: ClientInfo,
}

#[derive(Default)]
struct State {
    next_pool: PoolId,
    pools: BTreeMap<PoolId, Pool>,
    next_client: u64,
    /// Live clients only.
    clients: BTreeMap<u64, ClientInfo>,
    locks: BTreeMap<(Locator, String), Vec<LockRec>>,
    next_cookie: u64,
    watchers: BTreeMap<u64, (Locator, u64)>,
}

struct Pool {
    name: String,
    snap_seq: SnapId,
    removed_snaps: BTreeSet<SnapId>,
    /// Source of object versions, so a removed and recreated object never repeats one.
    version: u64,
    objects: BTreeMap<(String, String), Obj>,
}

#[derive(Default)]
struct Obj {
    ss: SnapSet,
    head: Option<Head>,
    clones: BTreeMap<SnapId, Stored>,
}

#[derive(Clone)]
struct Stored {
    data: Sparse,
    version: u64,
    mtime: u64,
}

struct Head {
    stored: Stored,
    xattrs: BTreeMap<String, Vec<u8>>,
    omap: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone)]
struct LockRec {
    client: u64,
    cookie: String,
    description: String,
    exclusive: bool,
}

impl MemStore {
    /// A new, empty store with a pool `rbd`, as a fresh `dir` store has.
    pub fn new() -> Self {
        let mut state = State {
            next_pool: 1,
            ..State::default()
        };
        state.pools.insert(1, Pool::new("rbd"));
        state.next_pool = 2;
        Self::register(Arc::new(Mutex::new(state)))
    }

    /// Another handle (another client) on the same backing.
    pub fn handle(&self) -> MemStore {
        Self::register(self.shared.clone())
    }

    fn register(shared: Arc<Mutex<State>>) -> MemStore {
        let client = {
            let mut st = lock_state(&shared);
            st.next_client += 1;
            let client = ClientInfo {
                id: st.next_client,
                host: crate::host::hostname(),
                pid: std::process::id(),
                since: crate::host::now_secs(),
            };
            st.clients.insert(client.id, client.clone());
            client
        };
        MemStore { shared, client }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock_state(&self.shared)
    }
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MemStore {
    fn drop(&mut self) {
        let id = self.client.id;
        let mut st = self.state();
        st.clients.remove(&id);
        st.watchers.retain(|_, (_, c)| *c != id);
    }
}

/// A panic elsewhere cannot leave the state half-changed (ops are planned first, then applied
/// without failure points), so a poisoned lock is still usable.
fn lock_state(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    fn new(name: &str) -> Pool {
        Pool {
            name: name.to_string(),
            snap_seq: 0,
            removed_snaps: BTreeSet::new(),
            version: 0,
            objects: BTreeMap::new(),
        }
    }
}

fn key(loc: &Locator) -> (String, String) {
    (loc.namespace.clone(), loc.name.clone())
}

impl State {
    fn pool(&self, id: PoolId) -> Result<&Pool> {
        self.pools
            .get(&id)
            .ok_or_else(|| Error::NoPool(id.to_string()))
    }

    fn obj(&self, loc: &Locator) -> Result<&Obj> {
        self.pool(loc.pool)?
            .objects
            .get(&key(loc))
            .ok_or_else(|| Error::no_object(loc, HEAD))
    }

    fn head(&self, loc: &Locator) -> Result<&Head> {
        self.obj(loc)?
            .head
            .as_ref()
            .ok_or_else(|| Error::no_object(loc, HEAD))
    }

    fn stored_at(&self, loc: &Locator, snap: SnapId) -> Result<&Stored> {
        let obj = self.pool(loc.pool)?.objects.get(&key(loc));
        let obj = obj.ok_or_else(|| Error::no_object(loc, snap))?;
        let found = match snaps::version_at(&obj.ss, snap) {
            Version::Head => obj.head.as_ref().map(|h| &h.stored),
            Version::Clone(id) => obj.clones.get(&id),
            Version::Absent => None,
        };
        found.ok_or_else(|| Error::no_object(loc, snap))
    }

    fn alive(&self, client: u64) -> bool {
        self.clients.contains_key(&client)
    }
}

impl ObjectStore for MemStore {
    fn create_pool(&self, name: &str) -> Result<PoolId> {
        let mut st = self.state();
        if st.pools.values().any(|p| p.name == name) {
            return Err(Error::Exists(format!("pool {name}")));
        }
        let id = st.next_pool;
        st.next_pool += 1;
        st.pools.insert(id, Pool::new(name));
        Ok(id)
    }

    fn remove_pool(&self, name: &str) -> Result<()> {
        let mut st = self.state();
        let id = st
            .pools
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(id, _)| *id);
        let id = id.ok_or_else(|| Error::NoPool(name.to_string()))?;
        st.pools.remove(&id);
        st.locks.retain(|(loc, _), _| loc.pool != id);
        st.watchers.retain(|_, (loc, _)| loc.pool != id);
        Ok(())
    }

    fn list_pools(&self) -> Result<Vec<(PoolId, String)>> {
        Ok(self
            .state()
            .pools
            .iter()
            .map(|(id, p)| (*id, p.name.clone()))
            .collect())
    }

    fn pool_id(&self, name: &str) -> Result<PoolId> {
        let st = self.state();
        let found = st
            .pools
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(id, _)| *id);
        found.ok_or_else(|| Error::NoPool(name.to_string()))
    }

    fn pool_name(&self, id: PoolId) -> Result<String> {
        Ok(self.state().pool(id)?.name.clone())
    }

    fn list_objects(&self, pool: PoolId, namespace: Option<&str>) -> Result<Vec<Locator>> {
        let st = self.state();
        let objects = &st.pool(pool)?.objects;
        Ok(objects
            .iter()
            .filter(|((ns, _), o)| o.head.is_some() && namespace.is_none_or(|want| want == ns))
            .map(|((ns, name), _)| Locator::new(pool, ns, name))
            .collect())
    }

    fn list_all_objects(&self, pool: PoolId, namespace: Option<&str>) -> Result<Vec<Locator>> {
        let st = self.state();
        let objects = &st.pool(pool)?.objects;
        Ok(objects
            .iter()
            .filter(|((ns, _), o)| {
                (o.head.is_some() || !o.clones.is_empty()) && namespace.is_none_or(|w| w == ns)
            })
            .map(|((ns, name), _)| Locator::new(pool, ns, name))
            .collect())
    }

    fn snap_create(&self, pool: PoolId) -> Result<SnapId> {
        let mut st = self.state();
        let p = st
            .pools
            .get_mut(&pool)
            .ok_or_else(|| Error::NoPool(pool.to_string()))?;
        p.snap_seq += 1;
        Ok(p.snap_seq)
    }

    fn snap_remove(&self, pool: PoolId, snap: SnapId) -> Result<()> {
        let mut st = self.state();
        let p = st
            .pools
            .get_mut(&pool)
            .ok_or_else(|| Error::NoPool(pool.to_string()))?;
        if snap == 0 || snap > p.snap_seq {
            return Err(Error::Invalid(format!(
                "pool {pool}: snapshot {snap} was never created"
            )));
        }
        p.removed_snaps.insert(snap);
        p.objects.retain(|_, obj| {
            for id in snaps::remove_snap(&mut obj.ss, snap) {
                obj.clones.remove(&id);
            }
            obj.head.is_some() || !obj.clones.is_empty()
        });
        Ok(())
    }

    fn operate(&self, loc: &Locator, op: &WriteOp, snapc: &SnapContext) -> Result<()> {
        snaps::validate_snapc(snapc)?;
        let mut st = self.state();
        let pool = st
            .pools
            .get_mut(&loc.pool)
            .ok_or_else(|| Error::NoPool(loc.pool.to_string()))?;
        let head = pool.objects.get(&key(loc)).and_then(|o| o.head.as_ref());
        let xattr = |n: &str| Ok(head.and_then(|h| h.xattrs.get(n).cloned()));
        let omap = |k: &str| Ok(head.and_then(|h| h.omap.get(k).cloned()));
        let view = View {
            exists: head.is_some(),
            size: head.map_or(0, |h| h.stored.data.size),
            xattr: &xattr,
            omap: &omap,
        };
        let p = plan::plan(loc, &op.ops, &view)?;
        if !p.mutates {
            return Ok(());
        }
        pool.version += 1;
        let version = pool.version;
        let removed = &pool.removed_snaps;
        let obj = pool.objects.entry(key(loc)).or_default();
        if p.data_touch {
            if let Some(c) = snaps::make_writeable(&mut obj.ss, snapc, |s| removed.contains(&s)) {
                if let Some(h) = &obj.head {
                    obj.clones.insert(c.id, h.stored.clone());
                }
            }
        }
        for &(offset, len) in &p.cuts {
            snaps::cut_overlap(&mut obj.ss, offset, len);
        }
        let old = obj.head.take();
        obj.head = p.exists_after.then(|| {
            let (data, xattrs, omap) = match old {
                Some(h) => (h.stored.data, h.xattrs, h.omap),
                None => Default::default(),
            };
            let mut head = Head {
                stored: Stored {
                    data,
                    version,
                    mtime: crate::host::now_secs(),
                },
                xattrs,
                omap,
            };
            apply(&mut head, &p);
            head
        });
        obj.ss.head_size = obj.head.as_ref().map(|h| h.stored.data.size);
        if obj.head.is_none() {
            let gone_loc = loc.clone();
            st.watchers.retain(|_, (l, _)| *l != gone_loc);
            let pool = st
                .pools
                .get_mut(&loc.pool)
                .ok_or_else(|| Error::NoPool(loc.pool.to_string()))?;
            if pool
                .objects
                .get(&key(loc))
                .is_some_and(|o| o.clones.is_empty())
            {
                pool.objects.remove(&key(loc));
            }
        }
        Ok(())
    }

    fn read(&self, loc: &Locator, snap: SnapId, offset: u64, len: u64) -> Result<Vec<u8>> {
        Ok(self.state().stored_at(loc, snap)?.data.read(offset, len))
    }

    fn read_into(&self, loc: &Locator, snap: SnapId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        Ok(self
            .state()
            .stored_at(loc, snap)?
            .data
            .read_into(offset, buf))
    }

    fn sparse_read(
        &self,
        loc: &Locator,
        snap: SnapId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self.state().stored_at(loc, snap)?.data.extents(offset, len))
    }

    fn map_extents(
        &self,
        loc: &Locator,
        snap: SnapId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let st = self.state();
        let data = &st.stored_at(loc, snap)?.data;
        Ok(data
            .extents(offset, len)
            .into_iter()
            .map(|(o, d)| (o, d.len() as u64))
            .collect())
    }

    fn stat(&self, loc: &Locator, snap: SnapId) -> Result<ObjectStat> {
        let st = self.state();
        let s = st.stored_at(loc, snap)?;
        Ok(ObjectStat {
            size: s.data.size,
            version: s.version,
            mtime: s.mtime,
        })
    }

    fn list_snaps(&self, loc: &Locator) -> Result<SnapSet> {
        Ok(self.state().obj(loc)?.ss.clone())
    }

    fn get_xattr(&self, loc: &Locator, name: &str) -> Result<Vec<u8>> {
        let st = self.state();
        let value = st.head(loc)?.xattrs.get(name).cloned();
        value.ok_or_else(|| Error::no_key(loc, name))
    }

    fn get_xattrs(&self, loc: &Locator) -> Result<BTreeMap<String, Vec<u8>>> {
        Ok(self.state().head(loc)?.xattrs.clone())
    }

    fn omap_get(
        &self,
        loc: &Locator,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let st = self.state();
        let omap = &st.head(loc)?.omap;
        let from = if start_after >= prefix {
            start_after
        } else {
            prefix
        };
        Ok(omap
            .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .filter(|(k, _)| k.as_str() > start_after)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(max)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn omap_get_keys(&self, loc: &Locator, keys: &[&str]) -> Result<BTreeMap<String, Vec<u8>>> {
        let st = self.state();
        let omap = &st.head(loc)?.omap;
        Ok(keys
            .iter()
            .filter_map(|k| omap.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect())
    }

    fn client(&self) -> ClientInfo {
        self.client.clone()
    }

    fn lock(
        &self,
        loc: &Locator,
        name: &str,
        cookie: &str,
        description: &str,
        exclusive: bool,
    ) -> Result<()> {
        let mut st = self.state();
        st.pool(loc.pool)?;
        let live: BTreeSet<u64> = st.clients.keys().copied().collect();
        let holders = st.locks.entry((loc.clone(), name.to_string())).or_default();
        holders.retain(|h| live.contains(&h.client));
        let held = holders.iter().map(|h| Holder {
            client: h.client,
            cookie: &h.cookie,
            exclusive: h.exclusive,
        });
        admit_lock(loc, name, self.client.id, cookie, exclusive, held)?;
        holders.push(LockRec {
            client: self.client.id,
            cookie: cookie.to_string(),
            description: description.to_string(),
            exclusive,
        });
        Ok(())
    }

    fn unlock(&self, loc: &Locator, name: &str, cookie: &str) -> Result<()> {
        let id = self.client.id;
        self.break_lock(loc, name, id, cookie)
    }

    fn break_lock(&self, loc: &Locator, name: &str, client_id: u64, cookie: &str) -> Result<()> {
        let mut st = self.state();
        let holders = st.locks.get_mut(&(loc.clone(), name.to_string()));
        let no_locker = || Error::no_locker(loc, name, client_id, cookie);
        let holders = holders.ok_or_else(no_locker)?;
        let before = holders.len();
        holders.retain(|h| !(h.client == client_id && h.cookie == cookie));
        if holders.len() == before {
            return Err(no_locker());
        }
        Ok(())
    }

    fn list_lockers(&self, loc: &Locator, name: &str) -> Result<Vec<LockInfo>> {
        let st = self.state();
        st.pool(loc.pool)?;
        let holders = st
            .locks
            .get(&(loc.clone(), name.to_string()))
            .cloned()
            .unwrap_or_default();
        Ok(holders
            .into_iter()
            .filter_map(|h| {
                let client = st.clients.get(&h.client)?.clone();
                Some(LockInfo {
                    name: name.to_string(),
                    client,
                    cookie: h.cookie,
                    description: h.description,
                    exclusive: h.exclusive,
                })
            })
            .collect())
    }

    fn watch(&self, loc: &Locator) -> Result<u64> {
        let mut st = self.state();
        st.head(loc)?;
        st.next_cookie += 1;
        let cookie = st.next_cookie;
        st.watchers.insert(cookie, (loc.clone(), self.client.id));
        Ok(cookie)
    }

    fn unwatch(&self, loc: &Locator, cookie: u64) -> Result<()> {
        let mut st = self.state();
        match st.watchers.get(&cookie) {
            Some((l, _)) if l == loc => {
                st.watchers.remove(&cookie);
                Ok(())
            }
            _ => Err(Error::no_watch(loc, cookie)),
        }
    }

    fn list_watchers(&self, loc: &Locator) -> Result<Vec<Watcher>> {
        let st = self.state();
        st.head(loc)?;
        Ok(st
            .watchers
            .iter()
            .filter(|(_, (l, c))| l == loc && st.alive(*c))
            .filter_map(|(cookie, (_, c))| {
                Some(Watcher {
                    client: st.clients.get(c)?.clone(),
                    cookie: *cookie,
                })
            })
            .collect())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

fn apply(head: &mut Head, p: &plan::Plan) {
    let data = &mut head.stored.data;
    if p.reset {
        *data = Sparse::default();
    }
    for step in &p.steps {
        match *step {
            DataStep::Write {
                offset,
                data: bytes,
            } => data.write(offset, bytes),
            DataStep::Zero { offset, len } => data.punch(offset, offset + len),
            DataStep::Truncate(size) => data.truncate(size),
        }
    }
    data.truncate(p.size_after);
    for step in &p.meta {
        match *step {
            MetaStep::SetXattr(name, value) => {
                head.xattrs.insert(name.to_string(), value.to_vec());
            }
            MetaStep::RmXattr(name) => {
                head.xattrs.remove(name);
            }
            MetaStep::OmapSet(kv) => head.omap.extend(kv.iter().cloned()),
            MetaStep::OmapRm(keys) => {
                for k in keys {
                    head.omap.remove(k);
                }
            }
            MetaStep::OmapClear => head.omap.clear(),
            MetaStep::ClearAll => {
                head.omap.clear();
                head.xattrs.clear();
            }
        }
    }
}

/// Sparse bytes: disjoint data extents by offset; everything else up to `size` is a hole.
#[derive(Clone, Default, Debug)]
struct Sparse {
    size: u64,
    ext: BTreeMap<u64, Vec<u8>>,
}

impl Sparse {
    fn punch(&mut self, start: u64, end: u64) {
        let hit: Vec<u64> = self
            .ext
            .range(..end)
            .rev()
            .take_while(|(o, d)| **o + d.len() as u64 > start)
            .map(|(o, _)| *o)
            .collect();
        for off in hit {
            let Some(mut d) = self.ext.remove(&off) else {
                continue;
            };
            let d_end = off + d.len() as u64;
            if d_end > end {
                self.ext.insert(end, d[(end - off) as usize..].to_vec());
            }
            if off < start {
                d.truncate((start - off) as usize);
                self.ext.insert(off, d);
            }
        }
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let end = offset + bytes.len() as u64;
        self.punch(offset, end);
        let mut start = offset;
        let mut merged = bytes.to_vec();
        if let Some((&o, d)) = self.ext.range(..offset).next_back() {
            if o + d.len() as u64 == offset {
                let mut before = self.ext.remove(&o).unwrap_or_default();
                before.extend_from_slice(&merged);
                merged = before;
                start = o;
            }
        }
        if let Some(after) = self.ext.remove(&end) {
            merged.extend_from_slice(&after);
        }
        self.ext.insert(start, merged);
        self.size = self.size.max(end);
    }

    fn truncate(&mut self, size: u64) {
        if size < self.size {
            self.punch(size, u64::MAX);
        }
        self.size = size;
    }

    fn clip(&self, offset: u64, len: u64) -> (u64, u64) {
        let end = offset.saturating_add(len).min(self.size);
        (offset, end.max(offset))
    }

    fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let (start, end) = self.clip(offset, len);
        let mut out = vec![0u8; (end - start) as usize];
        for (off, bytes) in self.extents(start, end - start) {
            let at = (off - start) as usize;
            out[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        out
    }

    /// `read` into the start of `buf`, copying each extent once; returns the bytes filled.
    fn read_into(&self, offset: u64, buf: &mut [u8]) -> usize {
        let (start, end) = self.clip(offset, buf.len() as u64);
        let out = &mut buf[..(end - start) as usize];
        out.fill(0);
        if start >= end {
            return 0;
        }
        let first = self
            .ext
            .range(..=start)
            .next_back()
            .map_or(start, |(o, _)| *o);
        for (&o, d) in self.ext.range(first..end) {
            let (lo, hi) = (o.max(start), (o + d.len() as u64).min(end));
            if lo < hi {
                out[(lo - start) as usize..(hi - start) as usize]
                    .copy_from_slice(&d[(lo - o) as usize..(hi - o) as usize]);
            }
        }
        out.len()
    }

    fn extents(&self, offset: u64, len: u64) -> Vec<(u64, Vec<u8>)> {
        let (start, end) = self.clip(offset, len);
        if start >= end {
            return Vec::new();
        }
        let first = self
            .ext
            .range(..=start)
            .next_back()
            .map_or(start, |(o, _)| *o);
        self.ext
            .range(first..end)
            .filter_map(|(&o, d)| {
                let (lo, hi) = (o.max(start), (o + d.len() as u64).min(end));
                (lo < hi).then(|| (lo, d[(lo - o) as usize..(hi - o) as usize].to_vec()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Sparse;
    use proptest::prelude::*;

    proptest! {
        /// The sparse buffer reads like a plain byte vector under writes, punches and truncates.
        #[test]
        fn sparse_matches_vec(steps in proptest::collection::vec((0u8..3, 0u64..64, 0u64..24, 1u8..255), 0..30)) {
            let mut s = Sparse::default();
            let mut v: Vec<u8> = Vec::new();
            for (kind, off, len, byte) in steps {
                match kind {
                    0 => {
                        s.write(off, &vec![byte; len as usize]);
                        if len > 0 {
                            let end = (off + len) as usize;
                            if v.len() < end { v.resize(end, 0); }
                            v[off as usize..end].fill(byte);
                        }
                    }
                    1 => {
                        let end = ((off + len) as usize).min(v.len());
                        s.punch(off, off + len);
                        if (off as usize) < end { v[off as usize..end].fill(0); }
                    }
                    _ => { s.truncate(off); v.resize(off as usize, 0); }
                }
                prop_assert_eq!(s.size, v.len() as u64);
                prop_assert_eq!(s.read(0, 1000), v.clone());
                for (o, d) in s.extents(3, 50) {
                    prop_assert_eq!(&v[o as usize..o as usize + d.len()], &d[..]);
                }
            }
        }
    }
}
