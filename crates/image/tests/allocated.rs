//! `allocated_extents` of 1 TiB images without an object map: what the listing of their
//! objects finds is exactly what asking every object finds, at head, at a snapshot whose
//! objects survive only as clones, and in a clone reading through to that snapshot.
use rbdm_image::{features, CreateOptions, Image, ImageSpec, PoolSpec, Rbd};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
/// The default object size.
const OBJ: u64 = 4 * MIB;

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s, "rbd").unwrap()
}

fn layering_only() -> CreateOptions {
    CreateOptions {
        features: Some(features::LAYERING),
        ..CreateOptions::with_size(TIB)
    }
}

/// Appends `(o, l)`, merging it with the last extent when they touch.
fn push(out: &mut Vec<(u64, u64)>, (o, l): (u64, u64)) {
    match out.last_mut() {
        Some(last) if last.0 + last.1 == o => last.1 += l,
        _ => out.push((o, l)),
    }
}

/// The per-object answer: windows of 16 objects, short enough that each object is asked.
fn per_object(img: &Image) -> Vec<(u64, u64)> {
    let (size, step) = (img.size(), 16 * OBJ);
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        for e in img.allocated_extents(off, step.min(size - off)).unwrap() {
            push(&mut out, e);
        }
        off += step;
    }
    out
}

fn check(img: &Image, expected: &[(u64, u64)]) {
    let whole = img.allocated_extents(0, img.size()).unwrap();
    assert_eq!(whole, expected);
    assert_eq!(per_object(img), expected);
    // A window cutting extents clips them.
    let (from, to) = (GIB, TIB - 2048);
    let clipped: Vec<(u64, u64)> = expected
        .iter()
        .filter_map(|&(o, l)| {
            let (s, e) = (o.max(from), (o + l).min(to));
            (s < e).then(|| (s, e - s))
        })
        .collect();
    assert_eq!(img.allocated_extents(from, to - from).unwrap(), clipped);
}

#[test]
fn without_an_object_map_the_listing_gives_what_each_object_gives() {
    let r = Rbd::new(rbdm_store::open("mem://").unwrap());
    let pool = PoolSpec::new("rbd", "");
    r.create(&pool, "img", &layering_only()).unwrap();
    let img = r.open(&spec("img"), false).unwrap();
    img.write(0, &[1; 4096]).unwrap();
    img.write(5 * GIB + MIB, &[2; 8192]).unwrap();
    img.write(300 * GIB, &vec![3; OBJ as usize]).unwrap();
    img.write(TIB - 4096, &[4; 4096]).unwrap();
    img.snap_create("s").unwrap();
    // After the snapshot: one object only the snapshot has, one the snapshot lacks, and
    // half of an extent gone from the head.
    img.discard(300 * GIB, OBJ).unwrap();
    img.write(7 * GIB, &[5; 4096]).unwrap();
    img.discard(5 * GIB + MIB + 4096, 4096).unwrap();

    let head = [
        (0, 4096),
        (5 * GIB + MIB, 4096),
        (7 * GIB, 4096),
        (TIB - 4096, 4096),
    ];
    check(&img, &head);
    let at_snap = [
        (0, 4096),
        (5 * GIB + MIB, 8192),
        (300 * GIB, OBJ),
        (TIB - 4096, 4096),
    ];
    check(&r.open(&spec("img@s"), true).unwrap(), &at_snap);

    // A clone reads through where it has no object of its own, and only there.
    img.snap_protect("s").unwrap();
    r.clone_image(&spec("img@s"), &spec("child"), &layering_only())
        .unwrap();
    let child = r.open(&spec("child"), false).unwrap();
    child.write(8192, &[6; 4096]).unwrap();
    child.discard(300 * GIB, OBJ).unwrap();
    let in_child = [
        (0, 4096),
        (8192, 4096),
        (5 * GIB + MIB, 8192),
        (TIB - 4096, 4096),
    ];
    check(&child, &in_child);
}
