//! After a same-store migration the destination's object maps are rebuilt from its objects;
//! `du` per snapshot must still count only what changed at each snapshot (fast-diff), as it
//! did on the source, not every object that exists.
use rbdm_image::{CreateOptions, ImageSpec, Layout, PoolSpec};

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s, "rbd").unwrap()
}

#[test]
fn du_per_snapshot_survives_migration() {
    rbdm_plugins::link();
    let rbd = rbdm_migration::rbd(rbdm_store::open("mem://").unwrap());
    let layout = Layout::from_order(16).unwrap();
    let opts = CreateOptions {
        layout: Some(layout),
        ..CreateOptions::with_size(1 << 20)
    };
    rbd.create(&PoolSpec::new("rbd", ""), "src", &opts).unwrap();
    let img = rbd.open(&spec("src"), false).unwrap();
    img.write(0, &vec![1u8; 8 << 16]).unwrap();
    img.snap_create("s1").unwrap();
    img.write(2 << 16, &vec![2u8; 2 << 16]).unwrap();
    img.snap_create("s2").unwrap();
    img.write(5 << 16, &[3u8; 100]).unwrap();
    let before = img.du().unwrap();
    drop(img);
    let used: Vec<u64> = before.iter().map(|d| d.used).collect();
    assert_eq!(used, vec![8 << 16, 2 << 16, 1 << 16], "du of the source");

    let prep = rbdm_migration::PrepareOptions {
        create: Some(opts),
        flatten: false,
    };
    rbdm_migration::prepare(&rbd, &spec("src"), &spec("dst"), &prep).unwrap();
    let exec = rbdm_migration::ExecuteOptions {
        concurrency: 2,
        bandwidth_limit: None,
    };
    rbdm_migration::execute(&rbd, &spec("dst"), &exec, &|_, _| {}).unwrap();
    rbdm_migration::commit(&rbd, &spec("dst"), false).unwrap();
    let after = rbd.open(&spec("dst"), true).unwrap().du().unwrap();
    assert_eq!(after, before, "du of the destination after commit");
}
