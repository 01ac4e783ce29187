//! A clone that hides some of its parent's data (a discard) migrated in the same store while
//! keeping its parent link: the hidden range must stay zeros after commit, when reads of
//! objects the destination lacks go to the parent again.
use rbdm_image::{CreateOptions, ImageSpec, Layout, PoolSpec, Rbd};

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s, "rbd").unwrap()
}

/// A store holding `gold` (1 MiB of 7s in 64 KiB objects, protected snapshot `v1`) and
/// `kid`, a clone of `gold@v1`.
fn gold_and_kid() -> Rbd {
    rbdm_plugins::link();
    let rbd = rbdm_migration::rbd(rbdm_store::open("mem://").unwrap());
    let layout = Layout::from_order(16).unwrap();
    rbd.create(
        &PoolSpec::new("rbd", ""),
        "gold",
        &CreateOptions {
            layout: Some(layout),
            ..CreateOptions::with_size(1 << 20)
        },
    )
    .unwrap();
    let gold = rbd.open(&spec("gold"), false).unwrap();
    gold.write(0, &vec![7u8; 1 << 20]).unwrap();
    gold.snap_create("v1").unwrap();
    gold.snap_protect("v1").unwrap();
    drop(gold);
    rbd.clone_image(&spec("gold@v1"), &spec("kid"), &CreateOptions::with_size(0))
        .unwrap();
    rbd
}

#[test]
fn hidden_parent_data_stays_hidden() {
    let rbd = gold_and_kid();
    let kid = rbd.open(&spec("kid"), false).unwrap();
    kid.discard(64 << 10, 128 << 10).unwrap();
    // A snapshot before the last copy-up: at that point object 8 still reads the parent.
    kid.snap_create("before").unwrap();
    let mut want_before = vec![0u8; 1 << 20];
    kid.read(0, &mut want_before).unwrap();
    kid.write(512 << 10, &[9u8; 1000]).unwrap();
    let mut want = vec![0u8; 1 << 20];
    kid.read(0, &mut want).unwrap();
    assert!(want[64 << 10..192 << 10].iter().all(|&b| b == 0));
    drop(kid);
    let opts = rbdm_migration::PrepareOptions {
        create: Some(CreateOptions {
            layout: Some(Layout::from_order(14).unwrap()),
            ..CreateOptions::with_size(1 << 20)
        }),
        flatten: false,
    };
    rbdm_migration::prepare(&rbd, &spec("kid"), &spec("kid2"), &opts).unwrap();
    let exec = rbdm_migration::ExecuteOptions {
        concurrency: 2,
        bandwidth_limit: None,
    };
    rbdm_migration::execute(&rbd, &spec("kid2"), &exec, &|_, _| {}).unwrap();
    rbdm_migration::commit(&rbd, &spec("kid2"), false).unwrap();
    let moved = rbd.open(&spec("kid2"), true).unwrap();
    assert!(
        moved.info().unwrap().parent.is_some(),
        "the parent link is kept"
    );
    let mut got = vec![0u8; 1 << 20];
    moved.read(0, &mut got).unwrap();
    assert!(got == want, "bytes after commit");
    let at_before = rbd.open(&spec("kid2@before"), true).unwrap();
    at_before.read(0, &mut got).unwrap();
    assert!(got == want_before, "bytes of the snapshot after commit");
    // Sparse against the parent: of the 16 KiB destination objects, only those over the
    // source's own objects exist: 64K..192K (hiding the parent) and 512K..576K (the copy-up),
    // 12 objects, not the 64 a copy that read through to the parent would make.
    let h = moved.header().unwrap();
    let existing = (0..64u64)
        .filter(|&n| {
            rbd.store()
                .stat(&moved.data_loc(&h, n), rbdm_store::HEAD)
                .is_ok()
        })
        .count();
    assert_eq!(
        existing, 12,
        "destination objects after a keep-parent migration"
    );
}

/// A clone that hid part of its parent before a snapshot, then shrank (cutting its parent
/// overlap) and grew again: the destination's snapshot must still hide that part, though at
/// the head the parent no longer reaches it.
#[test]
fn a_snapshot_keeps_hiding_the_parent_after_a_shrink() {
    let rbd = gold_and_kid();
    let kid = rbd.open(&spec("kid"), false).unwrap();
    kid.discard(64 << 10, 64 << 10).unwrap();
    kid.snap_create("s1").unwrap();
    let mut want_s1 = vec![0u8; 1 << 20];
    kid.read(0, &mut want_s1).unwrap();
    assert!(want_s1[64 << 10..128 << 10].iter().all(|&b| b == 0));
    kid.resize(32 << 10, true, &mut |_, _| {}).unwrap();
    kid.resize(1 << 20, false, &mut |_, _| {}).unwrap();
    let mut want = vec![0u8; 1 << 20];
    kid.read(0, &mut want).unwrap();
    drop(kid);
    let opts = rbdm_migration::PrepareOptions {
        create: None,
        flatten: false,
    };
    rbdm_migration::prepare(&rbd, &spec("kid"), &spec("kid2"), &opts).unwrap();
    let exec = rbdm_migration::ExecuteOptions {
        concurrency: 1,
        bandwidth_limit: None,
    };
    rbdm_migration::execute(&rbd, &spec("kid2"), &exec, &|_, _| {}).unwrap();
    rbdm_migration::commit(&rbd, &spec("kid2"), false).unwrap();
    let mut got = vec![0u8; 1 << 20];
    rbd.open(&spec("kid2"), true)
        .unwrap()
        .read(0, &mut got)
        .unwrap();
    assert!(got == want, "head after commit");
    rbd.open(&spec("kid2@s1"), true)
        .unwrap()
        .read(0, &mut got)
        .unwrap();
    assert!(got == want_s1, "snapshot s1 after commit");
}
