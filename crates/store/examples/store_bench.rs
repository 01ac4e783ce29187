//! Sequential full-object writes through the `dir` backend, for comparing with `dd bs=4M`.
//! Usage: store_bench DIR [MiB=1024] [object MiB=4] [--flush]
//! Then 4 KiB writes at scattered offsets of those objects (the journal path).

use std::time::Instant;

use rbdm_store::{dir::DirStore, Locator, ObjectStore, SnapContext, WriteOp};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let root = args
        .get(1)
        .ok_or("usage: store_bench DIR [MiB] [object MiB] [--flush]")?;
    let total: u64 = args.get(2).map_or(Ok(1024), |s| s.parse())?;
    let obj_mib: u64 = args.get(3).map_or(Ok(4), |s| s.parse())?;
    let flush = args.iter().any(|a| a == "--flush");
    let store = DirStore::open(std::path::Path::new(root))?;
    let pool = store.pool_id("rbd")?;
    let buf: Vec<u8> = (0..obj_mib << 20).map(|i| (i % 253) as u8 + 1).collect();
    let snapc = SnapContext::default();
    for round in ["create", "overwrite"] {
        let start = Instant::now();
        for i in 0..total / obj_mib {
            let loc = Locator::new(pool, "", &format!("rbd_data.bench.{i:016x}"));
            store.operate(&loc, &WriteOp::new().write(0, &buf), &snapc)?;
        }
        if flush {
            store.flush()?;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{round}: {total} MiB in {secs:.3} s = {:.0} MiB/s",
            total as f64 / secs
        );
    }
    // Small in-place writes go through the journal: one transaction to log, one to clear.
    let small = vec![7u8; 4096];
    let objects = total / obj_mib;
    let count = 5000u64;
    let start = Instant::now();
    for i in 0..count {
        let n = i.wrapping_mul(2_654_435_761) % objects;
        let offset = (i.wrapping_mul(40_503) % ((obj_mib << 20) / 4096)) * 4096;
        let loc = Locator::new(pool, "", &format!("rbd_data.bench.{n:016x}"));
        store.operate(&loc, &WriteOp::new().write(offset, &small), &snapc)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "4 KiB in-place writes: {count} in {secs:.3} s = {:.0} µs each",
        secs * 1e6 / count as f64
    );
    Ok(())
}
