//! Two stores in one process, each with a same-store migration running at once: every
//! destination reads through to (and copies up from) its own source, never the other store's,
//! though both use the same pool, names and layout. And how a destination reads its source
//! is a property of the `Rbd` it was opened through, not of the process: an `Rbd` without an
//! opener refuses while another one in the same process reads.
use std::sync::{Arc, Barrier};

use rbdm_image::{CreateOptions, Image, ImageSpec, Layout, PoolSpec, Rbd};

const OBJ: u64 = 1 << 16;
const SIZE: u64 = 4 * OBJ;
/// Rounds of full reads of every point while both migrations are prepared.
const ROUNDS: usize = 10;

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s, "rbd").unwrap()
}

fn dir_store(dir: &tempfile::TempDir) -> rbdm_store::StoreRef {
    rbdm_store::open(&format!("dir://{}", dir.path().display())).unwrap()
}

fn read_all(img: &Image) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    img.read(0, &mut buf).unwrap();
    buf
}

fn write(img: &Image, model: &mut [u8], off: u64, len: u64, byte: u8) {
    img.write(off, &vec![byte; len as usize]).unwrap();
    model[off as usize..(off + len) as usize].fill(byte);
}

/// Creates `src` with snapshots `s1` and `s2`, its bytes made of `base`: returns what each
/// point holds (`s1`, `s2`, head).
fn make_source(rbd: &Rbd, base: u8) -> Vec<Vec<u8>> {
    let opts = CreateOptions {
        layout: Some(Layout::new(OBJ, OBJ, 1).unwrap()),
        ..CreateOptions::with_size(SIZE)
    };
    rbd.create(&PoolSpec::new("rbd", ""), "src", &opts).unwrap();
    let img = rbd.open(&spec("src"), false).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let mut points = Vec::new();
    write(&img, &mut model, 0, SIZE, base);
    img.snap_create("s1").unwrap();
    points.push(model.clone());
    write(&img, &mut model, OBJ, OBJ + 100, base + 1);
    img.snap_create("s2").unwrap();
    points.push(model.clone());
    write(&img, &mut model, 3 * OBJ + 10, 1000, base + 2);
    img.discard(0, 10_000).unwrap();
    model[..10_000].fill(0);
    points.push(model);
    img.close().unwrap();
    points
}

/// Every point of `name` (`@s1`, `@s2`, head) reads as `want` says.
fn check_points(rbd: &Rbd, name: &str, want: &[Vec<u8>], when: &str) {
    for (point, want) in ["@s1", "@s2", ""].iter().zip(want) {
        let img = rbd.open(&spec(&format!("{name}{point}")), true).unwrap();
        assert!(
            read_all(&img) == *want,
            "{name}{point} {when}: not the bytes of its own source"
        );
    }
}

/// One store's migration, in step with the other's at each `barrier`.
fn migrate(rbd: &Rbd, base: u8, barrier: &Barrier) {
    let mut want = make_source(rbd, base);
    let prep = rbdm_migration::PrepareOptions::default();
    rbdm_migration::prepare(rbd, &spec("src"), &spec("dst"), &prep).unwrap();
    barrier.wait();
    // Both destinations are prepared: nothing is copied, every read goes to a source.
    for _ in 0..ROUNDS {
        check_points(rbd, "dst", &want, "while prepared");
    }
    // A client write copies its object up from the source first.
    let dst = rbd.open(&spec("dst"), false).unwrap();
    write(&dst, &mut want[2], 2 * OBJ + 5, 300, base + 3);
    dst.close().unwrap();
    check_points(rbd, "dst", &want, "after a copy-up");
    barrier.wait();
    let exec = rbdm_migration::ExecuteOptions {
        concurrency: 2,
        bandwidth_limit: None,
    };
    rbdm_migration::execute(rbd, &spec("dst"), &exec, &|_, _| {}).unwrap();
    check_points(rbd, "dst", &want, "after execute");
    rbdm_migration::commit(rbd, &spec("dst"), false).unwrap();
    check_points(rbd, "dst", &want, "after commit");
}

#[test]
fn two_stores_migrate_at_once_each_from_its_own_source() {
    rbdm_plugins::link();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let barrier = Arc::new(Barrier::new(dirs.len()));
    let runs: Vec<_> = dirs
        .iter()
        .zip([0x10u8, 0x80])
        .map(|(dir, base)| {
            let rbd = rbdm_migration::rbd(dir_store(dir));
            let barrier = barrier.clone();
            std::thread::spawn(move || migrate(&rbd, base, &barrier))
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
}

#[test]
fn an_rbd_without_an_opener_refuses_while_another_reads() {
    rbdm_plugins::link();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = rbdm_migration::rbd(dir_store(&da));
    let b = rbdm_migration::rbd(dir_store(&db));
    let (want_a, want_b) = (make_source(&a, 0x20), make_source(&b, 0x40));
    let prep = rbdm_migration::PrepareOptions::default();
    for rbd in [&a, &b] {
        rbdm_migration::prepare(rbd, &spec("src"), &spec("dst"), &prep).unwrap();
    }
    // Store b again, through an `Rbd` that was given no opener.
    let plain = Rbd::new(b.store().clone());
    let refused = plain
        .open(&spec("dst"), true)
        .and_then(|img| img.read(0, &mut [0u8; 512]));
    match refused {
        Err(rbdm_image::Error::Unsupported(m)) => {
            assert!(m.contains("cannot read its source"), "{m}")
        }
        r => panic!("a destination read without an opener: {r:?}"),
    }
    check_points(&a, "dst", &want_a, "next to an Rbd without an opener");
    check_points(&b, "dst", &want_b, "next to an Rbd without an opener");
}
