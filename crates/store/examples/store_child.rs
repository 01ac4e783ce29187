//! A second process for `tests/processes.rs`: it opens a `dir` store and does one job until
//! it is killed or done.
//!
//! store_child ROOT writer SEED   whole-pattern writes forever (prints "ready" after the first)
//! store_child ROOT watch NAME    watch and lock NAME, print "watching COOKIE CLIENT", sleep
//! store_child ROOT count N       N guarded increments of omap key `n` on object "counter"

use std::io::Write;
use std::path::Path;

use rbdm_store::{dir::DirStore, Locator, ObjectStore, SnapContext, SnapId, WriteOp, HEAD};

/// Layout shared with the test: objects `obj0..` of `OBJ` bytes in `CHUNK`-sized chunks; each
/// write fills whole chunks with one byte value and records it in omap `c<chunk>`.
pub const OBJECTS: u64 = 4;
pub const OBJ: u64 = 1 << 20;
pub const CHUNK: u64 = 64 << 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = run(&args) {
        eprintln!("store_child: {e}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [_, root, job, arg] = args else {
        return Err("usage: store_child ROOT writer|watch|count ARG".into());
    };
    let store = DirStore::open(Path::new(root))?;
    match job.as_str() {
        "writer" => writer(&store, arg.parse()?),
        "watch" => watch(&store, arg),
        "count" => {
            let pool = store.pool_id("rbd")?;
            for _ in 0..arg.parse::<u64>()? {
                rbdm_store::conformance::increment(&store, &Locator::new(pool, "", "counter"));
            }
            Ok(())
        }
        other => Err(format!("unknown job {other}").into()),
    }
}

fn watch(store: &DirStore, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let loc = Locator::new(store.pool_id("rbd")?, "", name);
    let cookie = store.watch(&loc)?;
    store.lock(&loc, "rbd_lock", "child", "held by store_child", true)?;
    println!("watching {cookie} {}", store.client().id);
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn writer(store: &DirStore, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let pool = store.pool_id("rbd")?;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    // The snapshots this writer family uses are listed in omap keys of object "snaps", so a
    // restarted writer carries on with the same snap context.
    let snaps_obj = Locator::new(pool, "", "snaps");
    let mut snaps: Vec<SnapId> = match store.omap_get(&snaps_obj, "", "", usize::MAX) {
        Ok(kv) => kv
            .iter()
            .filter_map(|(k, _)| u64::from_str_radix(k, 16).ok())
            .collect(),
        Err(e) if e.is_no_object() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    snaps.sort_unstable_by(|a, b| b.cmp(a));
    let mut announced = false;
    loop {
        let r = rng.next();
        if r.is_multiple_of(40) {
            let id = store.snap_create(pool)?;
            store.operate(
                &snaps_obj,
                &WriteOp::new().omap_set([(format!("{id:016x}"), Vec::new())]),
                &SnapContext::default(),
            )?;
            snaps.insert(0, id);
            if snaps.len() > 3 {
                let Some(old) = snaps.pop() else { continue };
                store.operate(
                    &snaps_obj,
                    &WriteOp::new().omap_rm([format!("{old:016x}")]),
                    &SnapContext::default(),
                )?;
                store.snap_remove(pool, old)?;
            }
            continue;
        }
        let snapc = SnapContext {
            seq: snaps.first().copied().unwrap_or(0),
            snaps: snaps.clone(),
        };
        let loc = Locator::new(pool, "", &format!("obj{}", rng.next() % OBJECTS));
        let value = (rng.next() % 255 + 1) as u8;
        let chunks = OBJ / CHUNK;
        let exists = store.stat(&loc, HEAD).is_ok();
        let (first, end) = if !exists || r.is_multiple_of(3) {
            (0, chunks)
        } else {
            let first = rng.next() % chunks;
            let end = (first + 1 + rng.next() % (chunks - first)).min(if first == 0 {
                chunks - 1
            } else {
                chunks
            });
            (first, end)
        };
        let data = vec![value; ((end - first) * CHUNK) as usize];
        let op = match (first, end == chunks, r % 2) {
            (0, true, 0) => WriteOp::new().write_full(&data),
            _ => WriteOp::new().write(first * CHUNK, &data),
        };
        let op = op.omap_set((first..end).map(|c| (format!("c{c}"), vec![value])));
        store.operate(&loc, &op, &snapc)?;
        if !announced {
            println!("ready");
            std::io::stdout().flush()?;
            announced = true;
        }
    }
}
