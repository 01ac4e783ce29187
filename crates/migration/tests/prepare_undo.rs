//! A prepare whose store fails a write midway: what it made is undone, or, when the undo
//! fails too, the error says so (and carries the prepare's error), and the next command
//! settles what is left as after a kill. Swept over every write a prepare makes.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rbdm_image::{CreateOptions, ImageSpec, Layout, PoolSpec, Rbd};
use rbdm_store::{
    ClientInfo, Error, Locator, LockInfo, ObjectStat, ObjectStore, PoolId, Result, ScrubReport,
    SnapContext, SnapId, SnapSet, StoreRef, Watcher, WriteOp,
};

const OBJ: u64 = 1 << 16;

/// A store that fails writes (`operate`) once a budget of them is spent.
struct Faulty {
    inner: StoreRef,
    /// Writes left before they fail; negative: no limit.
    left: AtomicI64,
    /// Whether a failed write also spends the budget for good (every later write fails).
    stays_broken: bool,
}

impl Faulty {
    fn fail_after(&self, writes: i64) {
        self.left.store(writes, Ordering::SeqCst);
    }
    fn heal(&self) {
        self.left.store(-1, Ordering::SeqCst);
    }
}

impl ObjectStore for Faulty {
    fn create_pool(&self, name: &str) -> Result<PoolId> {
        self.inner.create_pool(name)
    }
    fn remove_pool(&self, name: &str) -> Result<()> {
        self.inner.remove_pool(name)
    }
    fn list_pools(&self) -> Result<Vec<(PoolId, String)>> {
        self.inner.list_pools()
    }
    fn pool_id(&self, name: &str) -> Result<PoolId> {
        self.inner.pool_id(name)
    }
    fn pool_name(&self, id: PoolId) -> Result<String> {
        self.inner.pool_name(id)
    }
    fn list_objects(&self, pool: PoolId, namespace: Option<&str>) -> Result<Vec<Locator>> {
        self.inner.list_objects(pool, namespace)
    }
    fn list_all_objects(&self, pool: PoolId, namespace: Option<&str>) -> Result<Vec<Locator>> {
        self.inner.list_all_objects(pool, namespace)
    }
    fn snap_create(&self, pool: PoolId) -> Result<SnapId> {
        self.inner.snap_create(pool)
    }
    fn snap_remove(&self, pool: PoolId, snap: SnapId) -> Result<()> {
        self.inner.snap_remove(pool, snap)
    }
    fn operate(&self, loc: &Locator, op: &WriteOp, snapc: &SnapContext) -> Result<()> {
        let left = self.left.load(Ordering::SeqCst);
        if left == 0 {
            if !self.stays_broken {
                self.heal();
            }
            return Err(Error::Io {
                context: format!("injected failure writing {loc:?}"),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        if left > 0 {
            self.left.store(left - 1, Ordering::SeqCst);
        }
        self.inner.operate(loc, op, snapc)
    }
    fn read(&self, loc: &Locator, snap: SnapId, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.read(loc, snap, offset, len)
    }
    fn read_into(&self, loc: &Locator, snap: SnapId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.inner.read_into(loc, snap, offset, buf)
    }
    fn sparse_read(
        &self,
        loc: &Locator,
        snap: SnapId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        self.inner.sparse_read(loc, snap, offset, len)
    }
    fn map_extents(
        &self,
        loc: &Locator,
        snap: SnapId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64)>> {
        self.inner.map_extents(loc, snap, offset, len)
    }
    fn stat(&self, loc: &Locator, snap: SnapId) -> Result<ObjectStat> {
        self.inner.stat(loc, snap)
    }
    fn list_snaps(&self, loc: &Locator) -> Result<SnapSet> {
        self.inner.list_snaps(loc)
    }
    fn get_xattr(&self, loc: &Locator, name: &str) -> Result<Vec<u8>> {
        self.inner.get_xattr(loc, name)
    }
    fn get_xattrs(&self, loc: &Locator) -> Result<BTreeMap<String, Vec<u8>>> {
        self.inner.get_xattrs(loc)
    }
    fn omap_get(
        &self,
        loc: &Locator,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner.omap_get(loc, start_after, prefix, max)
    }
    fn omap_get_keys(&self, loc: &Locator, keys: &[&str]) -> Result<BTreeMap<String, Vec<u8>>> {
        self.inner.omap_get_keys(loc, keys)
    }
    fn client(&self) -> ClientInfo {
        self.inner.client()
    }
    fn lock(
        &self,
        loc: &Locator,
        name: &str,
        cookie: &str,
        description: &str,
        exclusive: bool,
    ) -> Result<()> {
        self.inner.lock(loc, name, cookie, description, exclusive)
    }
    fn unlock(&self, loc: &Locator, name: &str, cookie: &str) -> Result<()> {
        self.inner.unlock(loc, name, cookie)
    }
    fn break_lock(&self, loc: &Locator, name: &str, client_id: u64, cookie: &str) -> Result<()> {
        self.inner.break_lock(loc, name, client_id, cookie)
    }
    fn list_lockers(&self, loc: &Locator, name: &str) -> Result<Vec<LockInfo>> {
        self.inner.list_lockers(loc, name)
    }
    fn watch(&self, loc: &Locator) -> Result<u64> {
        self.inner.watch(loc)
    }
    fn unwatch(&self, loc: &Locator, cookie: u64) -> Result<()> {
        self.inner.unwatch(loc, cookie)
    }
    fn list_watchers(&self, loc: &Locator) -> Result<Vec<Watcher>> {
        self.inner.list_watchers(loc)
    }
    fn scrub(&self, pool: Option<PoolId>) -> Result<ScrubReport> {
        self.inner.scrub(pool)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn flush_all(&self) -> Result<()> {
        self.inner.flush_all()
    }
}

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s, "rbd").unwrap()
}

/// A store with `src` (two snapshots, one protected) behind a `Faulty`; returns the faulty
/// store, an `Rbd` on it and one on the store underneath, and the source's head bytes.
fn setup(stays_broken: bool) -> (Arc<Faulty>, Rbd, Rbd, Vec<u8>) {
    let inner = rbdm_store::open("mem://").unwrap();
    let faulty = Arc::new(Faulty {
        inner: inner.clone(),
        left: AtomicI64::new(-1),
        stays_broken,
    });
    let rbd = rbdm_migration::rbd(faulty.clone());
    let opts = CreateOptions {
        layout: Some(Layout::new(OBJ, OBJ, 1).unwrap()),
        ..CreateOptions::with_size(3 * OBJ)
    };
    rbd.create(&PoolSpec::new("rbd", ""), "src", &opts).unwrap();
    let img = rbd.open(&spec("src"), false).unwrap();
    img.write(0, &vec![1u8; OBJ as usize]).unwrap();
    img.snap_create("s1").unwrap();
    img.snap_protect("s1").unwrap();
    img.write(OBJ, &vec![2u8; OBJ as usize]).unwrap();
    img.snap_create("s2").unwrap();
    img.write(2 * OBJ, &[3u8; 100]).unwrap();
    let mut head = vec![0u8; img.size() as usize];
    img.read(0, &mut head).unwrap();
    img.close().unwrap();
    (faulty, rbd, rbdm_migration::rbd(inner), head)
}

/// Whether a prepare left anything: the source in the trash or carrying a record.
fn left_something(rbd: &Rbd) -> bool {
    match rbd.open(&spec("src"), true) {
        Ok(img) => img.migration_record().unwrap().is_some(),
        Err(_) => true,
    }
}

/// The source is as it was, with no migration and no destination.
fn check_source_back(rbd: &Rbd, head: &[u8], writes: i64) {
    let img = rbd.open(&spec("src"), true).unwrap();
    assert!(img.migration_record().unwrap().is_none(), "write {writes}");
    let mut now = vec![0u8; head.len()];
    img.read(0, &mut now).unwrap();
    assert!(now == head, "write {writes}: the source's bytes changed");
    let snaps: Vec<String> = img
        .snap_list()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(snaps, ["s1", "s2"], "write {writes}");
    assert!(
        rbd.open(&spec("dst"), true).is_err(),
        "write {writes}: dst is left"
    );
}

/// Runs a prepare that may write `writes` times; `None` once it needs no more than that.
fn prepare_failing_after(faulty: &Faulty, rbd: &Rbd, writes: i64) -> Option<rbdm_migration::Error> {
    faulty.fail_after(writes);
    let prep = rbdm_migration::PrepareOptions::default();
    let r = rbdm_migration::prepare(rbd, &spec("src"), &spec("dst"), &prep);
    faulty.heal();
    r.err()
}

#[test]
fn a_prepare_failing_at_any_write_is_undone() {
    rbdm_plugins::link();
    for writes in 0.. {
        let (faulty, rbd, _, head) = setup(false);
        let Some(e) = prepare_failing_after(&faulty, &rbd, writes) else {
            assert!(writes > 5, "a prepare makes more than {writes} writes");
            return;
        };
        assert!(e.to_string().contains("injected"), "write {writes}: {e}");
        assert!(
            !matches!(e, rbdm_migration::Error::NotUndone { .. }),
            "write {writes}: the undo failed: {e}"
        );
        check_source_back(&rbd, &head, writes);
    }
}

#[test]
fn a_failed_undo_says_so_and_the_next_command_settles_it() {
    rbdm_plugins::link();
    let mut not_undone = 0;
    for writes in 0.. {
        let (faulty, rbd, healthy, head) = setup(true);
        let Some(e) = prepare_failing_after(&faulty, &rbd, writes) else {
            assert!(
                not_undone > 0,
                "no failure after the first write needed an undo"
            );
            return;
        };
        assert_eq!(e.errno(), libc::EIO, "write {writes}: {e}");
        let left = left_something(&healthy);
        match &e {
            rbdm_migration::Error::NotUndone { error, .. } => {
                assert!(left, "write {writes}: an undo failed over nothing: {e}");
                assert!(
                    error.to_string().contains("injected"),
                    "write {writes}: {e}"
                );
                not_undone += 1;
            }
            _ => assert!(!left, "write {writes}: left half made without a word: {e}"),
        }
        // The next command settles what is left: back, or forward when only the source's
        // last step was missing (then the migration is prepared, and an abort undoes it).
        let _ = rbdm_migration::status(&rbd, &spec("src"));
        if left_something(&healthy) {
            let st = rbdm_migration::status(&rbd, &spec("dst")).unwrap();
            assert_eq!(
                st.map(|s| s.state).as_deref(),
                Some("prepared"),
                "write {writes}"
            );
            rbdm_migration::abort(&rbd, &spec("dst"), &mut |_, _| {}).unwrap();
        }
        check_source_back(&rbd, &head, writes);
    }
}

#[test]
fn an_import_failing_at_any_write_is_undone() {
    rbdm_plugins::link();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("src.raw");
    std::fs::write(&file, vec![7u8; 2 * OBJ as usize]).unwrap();
    let text = format!(
        r#"{{"type":"raw","stream":{{"type":"file","file_path":"{}"}}}}"#,
        file.display()
    );
    for writes in 0.. {
        let (faulty, rbd, healthy, _) = setup(false);
        faulty.fail_after(writes);
        let r = rbdm_migration::prepare_import(&rbd, &text, &spec("dst"), None);
        faulty.heal();
        let Err(e) = r else {
            assert!(writes > 2, "an import makes more than {writes} writes");
            return;
        };
        assert!(e.to_string().contains("injected"), "write {writes}: {e}");
        assert!(
            !matches!(e, rbdm_migration::Error::NotUndone { .. }),
            "write {writes}: the undo failed: {e}"
        );
        assert!(
            healthy.open(&spec("dst"), true).is_err(),
            "write {writes}: dst is left"
        );
        // Not even a header without a name: only the source's is there.
        let store = healthy.store();
        let headers = store
            .list_objects(store.pool_id("rbd").unwrap(), None)
            .unwrap()
            .into_iter()
            .filter(|l| l.name.starts_with("rbd_header."))
            .count();
        assert_eq!(headers, 1, "write {writes}: a destination's header is left");
    }
}
