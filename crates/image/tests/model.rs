//! Image I/O against a plain byte-array model: random writes, discards, snapshots, reads at
//! snapshots, clones and flatten, for random layouts, on the in-memory and the dir store.
use proptest::prelude::*;
use rbdm_image::{CreateOptions, Image, ImageSpec, Layout, PoolSpec, Rbd};

#[derive(Clone, Debug)]
enum Op {
    Write { off: u64, len: u64, byte: u8 },
    Discard { off: u64, len: u64 },
    Snap,
    Rollback(usize),
    Clone(usize),
    Flatten,
    Resize(u64),
}

fn layouts() -> impl Strategy<Value = Layout> {
    (12u32..=15, 0u32..=3, 1u64..=4).prop_map(|(order, shift, count)| {
        let os = 1u64 << order;
        Layout::new(os, os >> shift, count).expect("valid")
    })
}

const SIZE: u64 = 200 * 1024;

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let extent = (0..SIZE, 1u64..40_000).prop_map(|(o, l)| (o, l.min(SIZE - o)));
    let op = prop_oneof![
        6 => (extent.clone(), any::<u8>()).prop_map(|((off, len), byte)| Op::Write { off, len, byte: byte | 1 }),
        2 => extent.prop_map(|(off, len)| Op::Discard { off, len }),
        2 => Just(Op::Snap),
        1 => (0usize..8).prop_map(Op::Rollback),
        1 => (0usize..8).prop_map(Op::Clone),
        1 => Just(Op::Flatten),
        1 => (SIZE / 2..SIZE * 3 / 2).prop_map(Op::Resize),
    ];
    prop::collection::vec(op, 1..30)
}

/// One image under test and its model: head bytes and every snapshot's bytes.
struct Subject {
    name: String,
    head: Vec<u8>,
    snaps: Vec<(String, Vec<u8>)>,
    has_parent: bool,
}

fn read_all(img: &Image, size: u64) -> Vec<u8> {
    let mut buf = vec![0u8; size as usize];
    img.read(0, &mut buf).expect("read");
    buf
}

fn check(rbd: &Rbd, s: &Subject) -> Result<(), TestCaseError> {
    let spec = ImageSpec::parse(&s.name, "rbd").unwrap();
    let img = rbd.open(&spec, true).unwrap();
    prop_assert_eq!(img.size(), s.head.len() as u64);
    prop_assert!(
        read_all(&img, s.head.len() as u64) == s.head,
        "head of {} differs",
        s.name
    );
    // Allocation never hides data: every non-zero byte lies in an allocated extent.
    let alloc = img.allocated_extents(0, s.head.len() as u64).unwrap();
    let mut covered = vec![false; s.head.len()];
    for (o, l) in alloc {
        covered[o as usize..(o + l) as usize]
            .iter_mut()
            .for_each(|c| *c = true);
    }
    prop_assert!(
        s.head.iter().zip(&covered).all(|(b, c)| *b == 0 || *c),
        "allocated_extents misses data"
    );
    for (name, bytes) in &s.snaps {
        let snap = rbd.open(&spec.with_snap(Some(name)), true).unwrap();
        prop_assert!(
            read_all(&snap, bytes.len() as u64) == *bytes,
            "snapshot {}@{} differs",
            s.name,
            name
        );
    }
    Ok(())
}

fn run(rbd: Rbd, layout: Layout, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let opts = CreateOptions {
        layout: Some(layout),
        ..CreateOptions::with_size(SIZE)
    };
    rbd.create(&PoolSpec::new("rbd", ""), "img", &opts).unwrap();
    let mut subjects = vec![Subject {
        name: "img".into(),
        head: vec![0; SIZE as usize],
        snaps: vec![],
        has_parent: false,
    }];
    let mut nsnap = 0;
    for op in ops {
        let count = subjects.len();
        let cur = count - 1;
        let spec = ImageSpec::parse(&subjects[cur].name, "rbd").unwrap();
        let img = rbd.open(&spec, false).unwrap();
        let s = &mut subjects[cur];
        let size = s.head.len() as u64;
        match op {
            Op::Write { off, len, byte } => {
                let (off, len) = (off.min(size), len.min(size - off.min(size)));
                img.write(off, &vec![byte; len as usize]).unwrap();
                s.head[off as usize..(off + len) as usize].fill(byte);
            }
            Op::Discard { off, len } => {
                let (off, len) = (off.min(size), len.min(size - off.min(size)));
                img.discard(off, len).unwrap();
                s.head[off as usize..(off + len) as usize].fill(0);
            }
            Op::Snap => {
                nsnap += 1;
                let name = format!("s{nsnap}");
                img.snap_create(&name).unwrap();
                s.snaps.push((name, s.head.clone()));
            }
            Op::Rollback(i) if !s.snaps.is_empty() => {
                let (name, bytes) = s.snaps[i % s.snaps.len()].clone();
                img.snap_rollback(&name, &mut |_, _| {}).unwrap();
                s.head = bytes;
            }
            Op::Clone(i) if !s.snaps.is_empty() && count < 3 => {
                let (name, bytes) = s.snaps[i % s.snaps.len()].clone();
                if img.snap_protect(&name).is_err() {
                    // already protected
                }
                let child = format!("clone{count}");
                drop(img);
                rbd.clone_image(
                    &spec.with_snap(Some(&name)),
                    &ImageSpec::parse(&child, "rbd").unwrap(),
                    &CreateOptions::with_size(0),
                )
                .unwrap();
                subjects.push(Subject {
                    name: child,
                    head: bytes,
                    snaps: vec![],
                    has_parent: true,
                });
                continue;
            }
            Op::Flatten if s.has_parent => {
                img.flatten(&mut |_, _| {}).unwrap();
                s.has_parent = false;
            }
            Op::Resize(n) => {
                img.resize(n, true, &mut |_, _| {}).unwrap();
                s.head.resize(n as usize, 0);
            }
            _ => continue,
        }
        drop(img);
        check(&rbd, &subjects[subjects.len() - 1])?;
    }
    for s in &subjects {
        check(&rbd, s)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn image_matches_model_mem(layout in layouts(), ops in ops()) {
        let rbd = Rbd::new(rbdm_store::open("mem://").unwrap());
        run(rbd, layout, ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn image_matches_model_dir(layout in layouts(), ops in ops()) {
        let dir = tempfile::tempdir().unwrap();
        let rbd = Rbd::new(rbdm_store::open(&format!("dir://{}", dir.path().display())).unwrap());
        run(rbd, layout, ops)?;
    }
}
