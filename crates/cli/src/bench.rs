//! `bench`: sequential or random reads and writes through the image, reported each
//! second as rbd's Bench.cc does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rbdm_image::Image;

use crate::args::{BenchArgs, IoPattern, IoType};
use crate::ctx::{open, Ctx, Snap};
use crate::output::{byte_u, err, CmdResult, Fail};

/// The byte every write of `rbdm bench` puts at image offset `off`: the index of the IO
/// block, xor 0x5a, so a test can predict an image's contents after a sequential bench.
pub fn bench_byte(off: u64, io_size: u64) -> u8 {
    ((off / io_size) as u8) ^ 0x5a
}

/// A stateless hash, so offsets of a random pattern depend only on the IO number.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct BenchPlan {
    io_size: u64,
    blocks: u64,
    ops: u64,
    rand: bool,
    kind: IoType,
    mix_read: u64,
}

impl BenchPlan {
    fn offset(&self, op: u64) -> u64 {
        let block = if self.rand {
            mix(op) % self.blocks
        } else {
            op % self.blocks
        };
        block * self.io_size
    }
    fn is_read(&self, op: u64) -> bool {
        match self.kind {
            IoType::Read => true,
            IoType::Write => false,
            IoType::Readwrite | IoType::Rw => mix(op ^ 0x5555_5555) % 100 < self.mix_read,
        }
    }
}

pub fn run(ctx: &Ctx, a: &BenchArgs) -> CmdResult {
    let kind = a.io_type.unwrap_or(IoType::Write);
    if a.io_size == 0 {
        return Err(Fail::invalid("io-size must be greater than zero"));
    }
    if a.io_size > 32 << 20 {
        return Err(Fail::invalid("io-size should be no larger than 32 MiB"));
    }
    // Every thread holds one IO buffer.
    if a.io_size.saturating_mul(a.io_threads) > 1 << 30 {
        return Err(Fail::invalid(
            "io-size times io-threads should be no more than 1 GiB",
        ));
    }
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, false)?;
    let size = image.size();
    if a.io_size > size {
        let _ = image.close();
        return Err(Fail::invalid("io-size should be less than image size"));
    }
    let plan = BenchPlan {
        io_size: a.io_size,
        blocks: size / a.io_size,
        ops: a.io_total / a.io_size,
        rand: a.io_pattern == IoPattern::Rand,
        kind,
        mix_read: a.rw_mix_read as u64,
    };
    let kind_name = match kind {
        IoType::Read => "read",
        IoType::Write => "write",
        IoType::Readwrite | IoType::Rw => "readwrite",
    };
    let pattern = if plan.rand { "random" } else { "sequential" };
    println!(
        "bench  type {kind_name} io_size {} io_threads {} bytes {} pattern {pattern}",
        a.io_size, a.io_threads, a.io_total
    );
    let r = run_bench(&image, &plan, a.io_threads);
    let closed = image.close();
    r.map_err(err("bench failed"))?;
    closed.map_err(err("error closing image"))
}

fn run_bench(image: &Image, plan: &BenchPlan, threads: u64) -> rbdm_image::Result<()> {
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<rbdm_image::Error>> = Mutex::new(None);
    let start = Instant::now();
    println!("  SEC       OPS   OPS/SEC   BYTES/SEC");
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; plan.io_size as usize];
                while !stop.load(Ordering::Relaxed) {
                    let op = next.fetch_add(1, Ordering::Relaxed);
                    if op >= plan.ops {
                        break;
                    }
                    let off = plan.offset(op);
                    let r = if plan.is_read(op) {
                        image.read(off, &mut buf)
                    } else {
                        buf.fill(bench_byte(off, plan.io_size));
                        image.write(off, &buf)
                    };
                    if let Err(e) = r {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = failure.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        report_bench(plan, &done, &stop, start);
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    image.flush()?;
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let ops = done.load(Ordering::Relaxed);
    let bytes = ops * plan.io_size;
    println!(
        "elapsed: {}   ops: {ops}   ops/sec: {:.2}   bytes/sec: {}/s",
        elapsed as u64,
        ops as f64 / elapsed,
        byte_u((bytes as f64 / elapsed) as u64)
    );
    Ok(())
}

/// Prints a line a second while the workers run, as rbd bench does.
fn report_bench(plan: &BenchPlan, done: &AtomicU64, stop: &AtomicBool, start: Instant) {
    let mut last_ops = 0;
    let mut sec = 0u64;
    loop {
        let deadline = start + Duration::from_secs(sec + 1);
        while Instant::now() < deadline {
            if stop.load(Ordering::Relaxed) || done.load(Ordering::Relaxed) >= plan.ops {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sec += 1;
        let ops = done.load(Ordering::Relaxed);
        let rate = ops.saturating_sub(last_ops);
        last_ops = ops;
        println!(
            "{sec:5}  {ops:8}  {:8.2}  {:>8}/s",
            rate as f64,
            byte_u(rate * plan.io_size)
        );
    }
}
