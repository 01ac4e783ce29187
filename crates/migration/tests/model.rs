//! A model of a same-store migration: source with snapshots, destination with another layout,
//! client writes and discards on the destination interleaved with background copies of single
//! objects, then either execute + commit or abort. Every read must return what a plain byte
//! model says, and after an abort the source holds its history plus the clients' writes.
use proptest::prelude::*;
use rbdm_image::{CreateOptions, Image, ImageSpec, Layout, PoolSpec};

const SIZE: u64 = 96 * 1024;

#[derive(Clone, Debug)]
enum Op {
    Write { off: u64, len: u64, byte: u8 },
    Discard { off: u64, len: u64 },
    Copy(u64),
    Read { off: u64, len: u64 },
    ReadSnap { snap: usize, off: u64, len: u64 },
}

fn layout() -> impl Strategy<Value = Layout> {
    (12u32..=14, 0u32..=2, 1u64..=3)
        .prop_map(|(o, s, c)| Layout::new(1 << o, (1 << o) >> s, c).unwrap())
}

fn extent() -> impl Strategy<Value = (u64, u64)> {
    (0..SIZE, 1u64..20_000).prop_map(|(o, l)| (o, l.min(SIZE - o)))
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (extent(), 1u8..255).prop_map(|((off, len), byte)| Op::Write { off, len, byte }),
            1 => extent().prop_map(|(off, len)| Op::Discard { off, len }),
            3 => (0u64..40).prop_map(Op::Copy),
            2 => extent().prop_map(|(off, len)| Op::Read { off, len }),
            2 => (0usize..2, extent()).prop_map(|(snap, (off, len))| Op::ReadSnap { snap, off, len }),
        ],
        1..25,
    )
}

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s, "rbd").unwrap()
}

fn read(img: &Image, off: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    img.read(off, &mut buf).unwrap();
    buf
}

fn run(
    src_layout: Layout,
    dst_layout: Layout,
    seed_writes: Vec<((u64, u64), u8)>,
    ops: Vec<Op>,
    abort: bool,
) -> Result<(), TestCaseError> {
    rbdm_plugins::link();
    let rbd = rbdm_migration::rbd(rbdm_store::open("mem://").unwrap());
    let pool = PoolSpec::new("rbd", "");
    rbd.create(
        &pool,
        "src",
        &CreateOptions {
            layout: Some(src_layout),
            ..CreateOptions::with_size(SIZE)
        },
    )
    .unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let mut snaps = Vec::new();
    {
        let src = rbd.open(&spec("src"), false).unwrap();
        for (i, ((off, len), byte)) in seed_writes.iter().enumerate() {
            src.write(*off, &vec![*byte; *len as usize]).unwrap();
            model[*off as usize..(*off + *len) as usize].fill(*byte);
            if i == 1 || i == 3 {
                src.snap_create(&format!("s{}", snaps.len())).unwrap();
                snaps.push(model.clone());
            }
        }
        while snaps.len() < 2 {
            src.snap_create(&format!("s{}", snaps.len())).unwrap();
            snaps.push(model.clone());
        }
    }
    let opts = rbdm_migration::PrepareOptions {
        create: Some(CreateOptions {
            layout: Some(dst_layout),
            ..CreateOptions::with_size(SIZE)
        }),
        flatten: false,
    };
    rbdm_migration::prepare(&rbd, &spec("src"), &spec("dst"), &opts).unwrap();
    let dst = rbd.open(&spec("dst"), false).unwrap();
    let rec = dst.migration_record().unwrap().unwrap();
    let source = rbdm_migration::open_source_spec(&rbd, &rec.source_spec).unwrap();
    let stats = rbdm_copy::Stats::default();
    for op in ops {
        match op {
            Op::Write { off, len, byte } => {
                dst.write(off, &vec![byte; len as usize]).unwrap();
                model[off as usize..(off + len) as usize].fill(byte);
            }
            Op::Discard { off, len } => {
                dst.discard(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            Op::Copy(n) => {
                let n = n % dst_layout.object_count(SIZE);
                rbdm_copy::copy_object(&dst, &*source, &rec, n, false, &stats).unwrap();
            }
            Op::Read { off, len } => {
                prop_assert!(
                    read(&dst, off, len) == model[off as usize..(off + len) as usize],
                    "head read {off}+{len}"
                );
            }
            Op::ReadSnap { snap, off, len } => {
                let s = rbd.open(&spec(&format!("dst@s{snap}")), true).unwrap();
                prop_assert!(
                    read(&s, off, len) == snaps[snap][off as usize..(off + len) as usize],
                    "snap {snap} read {off}+{len}"
                );
            }
        }
    }
    drop(dst);
    drop(source);
    let image = if abort {
        rbdm_migration::abort(&rbd, &spec("dst"), &mut |_, _| {}).unwrap();
        prop_assert!(
            rbd.open(&spec("dst"), true).is_err(),
            "abort removed the destination"
        );
        "src"
    } else {
        let opts = rbdm_migration::ExecuteOptions {
            concurrency: 3,
            bandwidth_limit: None,
        };
        rbdm_migration::execute(&rbd, &spec("dst"), &opts, &|_, _| {}).unwrap();
        rbdm_migration::commit(&rbd, &spec("dst"), false).unwrap();
        prop_assert!(
            rbd.trash_list(&pool, true).unwrap().is_empty(),
            "commit removed the source"
        );
        "dst"
    };
    let img = rbd.open(&spec(image), true).unwrap();
    prop_assert!(
        read(&img, 0, SIZE) == model,
        "{image} head after {}",
        if abort { "abort" } else { "commit" }
    );
    for (i, want) in snaps.iter().enumerate() {
        let s = rbd.open(&spec(&format!("{image}@s{i}")), true).unwrap();
        prop_assert!(read(&s, 0, SIZE) == *want, "{image}@s{i}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn migration_matches_model(src in layout(), dst in layout(),
                               seed in prop::collection::vec((extent(), 1u8..255), 0..6),
                               ops in ops(), abort in any::<bool>()) {
        run(src, dst, seed, ops, abort)?;
    }
}
