//! Export and import through real images on the in-memory store: round trips with
//! snapshots and metadata, Pacific's form of export format 2, and failed imports that leave
//! nothing behind.

use rbdm_image::{CreateOptions, Image, ImageSpec, Layout, PoolSpec, Rbd};
use rbdm_transfer::diff::DiffFormat;
use rbdm_transfer::header::read_header;
use rbdm_transfer::wire::Input;
use rbdm_transfer::{export, import, Error, Problem, Tag};

const SIZE: u64 = 64 << 10;

fn rbd() -> Rbd {
    Rbd::new(rbdm_store::open("mem://").unwrap())
}

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s, "rbd").unwrap()
}

fn small() -> CreateOptions {
    CreateOptions {
        layout: Some(Layout::new(4096, 4096, 1).unwrap()),
        ..CreateOptions::with_size(SIZE)
    }
}

fn read_all(image: &Image) -> Vec<u8> {
    let mut buf = vec![0u8; image.size() as usize];
    image.read(0, &mut buf).unwrap();
    buf
}

/// "src": 4 KiB of 1 at 0 → s1 (protected); 2 at 8 KiB, zeros over 0 → s2; 3 at 60 KiB.
/// Returns the contents at s1, s2 and the head.
fn history(rbd: &Rbd) -> [Vec<u8>; 3] {
    rbd.create(&PoolSpec::new("rbd", ""), "src", &small())
        .unwrap();
    let img = rbd.open(&spec("src"), false).unwrap();
    img.metadata_set("conf_rbd_cache", "false").unwrap();
    img.write(0, &[1; 4096]).unwrap();
    img.snap_create("s1").unwrap();
    img.snap_protect("s1").unwrap();
    let s1 = read_all(&img);
    img.write(8192, &[2; 4096]).unwrap();
    img.write_zeroes(0, 4096).unwrap();
    img.snap_create("s2").unwrap();
    let s2 = read_all(&img);
    img.write(60 << 10, &[3; 4096]).unwrap();
    let head = read_all(&img);
    img.close().unwrap();
    [s1, s2, head]
}

fn export_v2(rbd: &Rbd, name: &str) -> Vec<u8> {
    let img = rbd.open(&spec(name), true).unwrap();
    let mut out = Vec::new();
    export::export_v2(rbd, &spec(name), &img, &mut out, &mut |_, _| {}).unwrap();
    img.close().unwrap();
    out
}

fn import_v2(rbd: &Rbd, name: &str, bytes: &[u8]) -> rbdm_transfer::Result<()> {
    let mut input = Input::new(bytes);
    let header = read_header(&mut input)?;
    let opts = CreateOptions {
        layout: header.layout()?,
        features: header.features,
        ..CreateOptions::with_size(0)
    };
    import::create_filled(rbd, &spec(name), &opts, |image| {
        import::import_v2(&mut input, image, &header, &mut |_| {})
    })
}

fn contents_at(rbd: &Rbd, name: &str, snap: Option<&str>) -> Vec<u8> {
    let img = rbd.open(&spec(name).with_snap(snap), true).unwrap();
    let data = read_all(&img);
    img.close().unwrap();
    data
}

#[test]
fn export_format_2_round_trips_snapshots_metadata_and_data() {
    let rbd = rbd();
    let [s1, s2, head] = history(&rbd);
    let bytes = export_v2(&rbd, "src");
    import_v2(&rbd, "copy", &bytes).unwrap();
    assert_eq!(contents_at(&rbd, "copy", Some("s1")), s1);
    assert_eq!(contents_at(&rbd, "copy", Some("s2")), s2);
    assert_eq!(contents_at(&rbd, "copy", None), head);
    let img = rbd.open(&spec("copy"), true).unwrap();
    let snaps: Vec<(String, bool)> = img
        .snap_list()
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.protected))
        .collect();
    assert_eq!(snaps, [("s1".into(), true), ("s2".into(), false)]);
    assert_eq!(img.metadata_get("conf_rbd_cache").unwrap(), "false");
    assert_eq!(img.layout().object_size, 4096);
    img.close().unwrap();
    // And the copy exports to the same bytes.
    assert_eq!(export_v2(&rbd, "copy"), bytes);
}

/// What Pacific 16.2 writes for an image with a protected snapshot: 'p' with length 8 and
/// a one-byte payload.
fn pacific_stream() -> Vec<u8> {
    let mut b = b"rbd image v2\n".to_vec();
    for (tag, v) in [(b'O', 12u64), (b'T', 1), (b'U', 4096), (b'C', 1)] {
        b.push(tag);
        b.extend_from_slice(&8u64.to_le_bytes());
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.push(b'E');
    b.extend_from_slice(b"rbd image diffs v2\n");
    b.extend_from_slice(&2u64.to_le_bytes());
    // Diff 1: to s1, protected, 8 KiB, 4 KiB of 0xab at 0.
    b.extend_from_slice(b"rbd diff v2\n");
    b.push(b't');
    b.extend_from_slice(&6u64.to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(b"s1");
    b.push(b'p');
    b.extend_from_slice(&8u64.to_le_bytes());
    b.push(1);
    push_size_and_write(&mut b, 0, 0xab);
    // Diff 2: from s1 to the head, 4 KiB of 0xcd at 4 KiB.
    b.extend_from_slice(b"rbd diff v2\n");
    b.push(b'f');
    b.extend_from_slice(&6u64.to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(b"s1");
    push_size_and_write(&mut b, 4096, 0xcd);
    b
}

fn push_size_and_write(b: &mut Vec<u8>, offset: u64, byte: u8) {
    b.push(b's');
    b.extend_from_slice(&8u64.to_le_bytes());
    b.extend_from_slice(&8192u64.to_le_bytes());
    b.push(b'w');
    b.extend_from_slice(&(16u64 + 4096).to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&4096u64.to_le_bytes());
    b.extend_from_slice(&[byte; 4096]);
    b.push(b'e');
}

#[test]
fn pacifics_export_format_2_imports() {
    let rbd = rbd();
    import_v2(&rbd, "from_pacific", &pacific_stream()).unwrap();
    let at_s1 = contents_at(&rbd, "from_pacific", Some("s1"));
    assert!(at_s1[..4096].iter().all(|&b| b == 0xab));
    assert!(at_s1[4096..].iter().all(|&b| b == 0));
    let head = contents_at(&rbd, "from_pacific", None);
    assert!(head[4096..].iter().all(|&b| b == 0xcd));
    let img = rbd.open(&spec("from_pacific"), true).unwrap();
    let s1 = img.snap_list().unwrap().remove(0);
    assert!(s1.protected, "the 'p' record was lost");
    img.close().unwrap();
    // Our export of it writes 'p' with length 1, which every Ceph reads.
    let ours = export_v2(&rbd, "from_pacific");
    let p = ours.windows(3).position(|w| w == b"s1p").unwrap() + 2;
    assert_eq!(ours[p + 1..p + 10], [1, 0, 0, 0, 0, 0, 0, 0, 1]);
}

#[test]
fn a_failed_import_leaves_no_image() {
    let rbd = rbd();
    history(&rbd);
    let bytes = export_v2(&rbd, "src");
    for cut in [bytes.len() / 2, bytes.len() - 1] {
        let e = import_v2(&rbd, "partial", &bytes[..cut]).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(!rbd
            .list(&PoolSpec::new("rbd", ""))
            .unwrap()
            .contains(&"partial".to_string()));
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    let e = import_v2(&rbd, "partial", &trailing).unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { offset, problem: Problem::Trailing, .. } if *offset == bytes.len() as u64),
        "{e}"
    );
}

/// "rbd diff v1" of "src" from s1 to s2, as `rbd export-diff --from-snap s1 src@s2` writes it.
fn diff_s1_to_s2(rbd: &Rbd) -> Vec<u8> {
    let img = rbd.open(&spec("src@s2"), true).unwrap();
    let mut diff = Vec::new();
    export::export_diff(
        &img,
        Some("s1"),
        Some(("s2", false)),
        SIZE,
        DiffFormat::V1,
        &mut diff,
    )
    .unwrap();
    img.close().unwrap();
    diff
}

#[test]
fn a_diff_from_another_snapshot_is_refused_at_its_from_record() {
    let rbd = rbd();
    history(&rbd);
    let diff = diff_s1_to_s2(&rbd);
    rbd.create(&PoolSpec::new("rbd", ""), "other", &small())
        .unwrap();
    let other = rbd.open(&spec("other"), false).unwrap();
    let mut last = Some("s0".to_string());
    let e = import::apply_diff(
        &mut Input::new(&diff[..]),
        DiffFormat::V1,
        &other,
        &mut last,
        false,
    )
    .unwrap_err();
    other.close().unwrap();
    match e {
        Error::Corrupt {
            offset: 12,
            record: Some(Tag(b'f')),
            problem: Problem::FromSnap { .. },
        } => {}
        e => panic!("{e}"),
    }
}

#[test]
fn an_rbd_diff_v1_applies_to_the_snapshot_it_starts_from() {
    let rbd = rbd();
    let [s1, s2, _] = history(&rbd);
    let diff = diff_s1_to_s2(&rbd);
    // A copy at s1, then the diff brings it to s2.
    rbd.create(&PoolSpec::new("rbd", ""), "copy", &small())
        .unwrap();
    let copy = rbd.open(&spec("copy"), false).unwrap();
    copy.write(0, &s1).unwrap();
    copy.snap_create("s1").unwrap();
    let mut last = Some("s1".to_string());
    import::apply_diff(
        &mut Input::new(&diff[..]),
        DiffFormat::V1,
        &copy,
        &mut last,
        false,
    )
    .unwrap();
    assert_eq!(last.as_deref(), Some("s2"));
    assert_eq!(read_all(&copy), s2);
    copy.close().unwrap();
}
