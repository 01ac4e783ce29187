//! A 1 TiB sparse qcow2 with a few MiB of data (one snapshot) copies by visiting only the
//! objects it allocates, reads back exactly at every point, keeps a client's write where the
//! source has nothing, and a resumed run finds everything done. A sparse native image (which
//! only lists, never says what it allocates) is visited by its data alone too.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rbdm_image::migration::MigrationRecord;
use rbdm_image::{CreateOptions, Image, ImageSpec, PoolSpec};
use rbdm_registry::SourceImage;

const TIB: u64 = 1 << 40;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .expect("qemu tools are installed (.ci/install)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_io(file: &Path, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    run(c.arg(file));
}

/// Snapshot `s1`: 1 MiB of 0x61 at 0 and at 100 GiB. Head: 100 GiB zeroed again, 1 MiB of
/// 0x62 at 500 GiB + 64 KiB, 4 MiB of 0x63 at the last 4 MiB.
fn make_source(file: &Path) {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(file)
        .arg(TIB.to_string()));
    qemu_io(
        file,
        &[
            "write -P 0x61 0 1M".to_string(),
            format!("write -P 0x61 {} 1M", 100 * GIB),
        ],
    );
    run(Command::new("qemu-img")
        .args(["snapshot", "-c", "s1"])
        .arg(file));
    qemu_io(
        file,
        &[
            format!("write -z {} 1M", 100 * GIB),
            format!("write -P 0x62 {} 1M", 500 * GIB + 64 * 1024),
            format!("write -P 0x63 {} 4M", TIB - 4 * MIB),
        ],
    );
}

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s, "rbd").unwrap()
}

fn assert_bytes(img: &Image, offset: u64, len: u64, byte: u8) {
    let mut buf = vec![0xffu8; len as usize];
    img.read(offset, &mut buf).unwrap();
    assert!(
        buf.iter().all(|&b| b == byte),
        "{offset}+{len} is not all {byte:#x}"
    );
}

/// One run of the whole copy; `last` gets the last progress report.
fn copy_all(
    dst: &Image,
    source: &dyn SourceImage,
    rec: &MigrationRecord,
    resumed: bool,
    last: &Mutex<(u64, u64)>,
) -> rbdm_copy::Stats {
    let opts = rbdm_copy::RunOptions {
        concurrency: 2,
        bandwidth_limit: None,
        start: 0,
        resumed,
    };
    let progress = |done, total| *last.lock().unwrap() = (done, total);
    let stop = AtomicBool::new(false);
    rbdm_copy::run(dst, source, rec, &opts, &progress, &|_| {}, &stop).unwrap()
}

#[test]
fn sparse_tib_qcow2_visits_only_allocated_objects() {
    rbdm_plugins::link();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tib.qcow2");
    make_source(&file);
    let rbd = rbdm_migration::rbd(rbdm_store::open("mem://").unwrap());
    let source_spec = format!(
        r#"{{"type":"qcow","stream":{{"type":"file","file_path":"{}"}}}}"#,
        file.display()
    );
    rbdm_migration::prepare_import(&rbd, &source_spec, &spec("dst"), None).unwrap();
    let dst = rbd.open(&spec("dst"), false).unwrap();
    // A client write where the source holds nothing: copied up now, kept by the run.
    dst.write(200 * GIB, &[0x64; 4096]).unwrap();
    let rec = dst.migration_record().unwrap().unwrap();
    let source = rbdm_migration::open_source_spec(&rbd, &rec.source_spec).unwrap();
    let last = Mutex::new((0, 0));
    let copy = |resumed| copy_all(&dst, &*source, &rec, resumed, &last);
    let stats = copy(false);
    let objects = TIB / (4 * MIB);
    // Objects 0, 25600 (snapshot data), 128000 (head data) and the last.
    assert_eq!(stats.objects_visited.load(Ordering::Relaxed), 4);
    assert_eq!(stats.objects_written.load(Ordering::Relaxed), 4);
    assert_eq!(
        *last.lock().unwrap(),
        (objects, objects),
        "progress reaches 100%"
    );

    assert_bytes(&dst, 0, MIB, 0x61);
    assert_bytes(&dst, MIB, 3 * MIB, 0);
    assert_bytes(&dst, 100 * GIB, MIB, 0);
    assert_bytes(&dst, 200 * GIB, 4096, 0x64);
    assert_bytes(&dst, 500 * GIB, 64 * 1024, 0);
    assert_bytes(&dst, 500 * GIB + 64 * 1024, MIB, 0x62);
    assert_bytes(&dst, TIB - 4 * MIB, 4 * MIB, 0x63);
    let snap = rbd.open(&spec("dst@s1"), true).unwrap();
    assert_bytes(&snap, 0, MIB, 0x61);
    assert_bytes(&snap, 100 * GIB, MIB, 0x61);
    assert_bytes(&snap, 500 * GIB, 2 * MIB, 0);
    assert_bytes(&snap, TIB - 4 * MIB, 4 * MIB, 0);

    // A re-run after a kill: the same few objects are checked, none copied again.
    let again = copy(true);
    assert_eq!(again.objects_visited.load(Ordering::Relaxed), 4);
    assert_eq!(again.objects_written.load(Ordering::Relaxed), 0);
    assert_bytes(&dst, 500 * GIB + 64 * 1024, MIB, 0x62);
}

#[test]
fn sparse_native_image_visits_only_allocated_objects() {
    rbdm_plugins::link();
    let rbd = rbdm_migration::rbd(rbdm_store::open("mem://").unwrap());
    // 16384 objects, four windows of the queue.
    let size = 64 * GIB;
    rbd.create(
        &PoolSpec::new("rbd", ""),
        "src",
        &CreateOptions::with_size(size),
    )
    .unwrap();
    let src = rbd.open(&spec("src"), false).unwrap();
    src.write(0, &[0x61; 4096]).unwrap();
    src.write(20 * GIB, &[0x61; 4096]).unwrap();
    src.snap_create("s1").unwrap();
    src.discard(20 * GIB, 4096).unwrap();
    src.write(size - 4096, &[0x62; 4096]).unwrap();
    drop(src);
    let opts = rbdm_migration::PrepareOptions {
        create: None,
        flatten: false,
    };
    rbdm_migration::prepare(&rbd, &spec("src"), &spec("dst"), &opts).unwrap();
    let dst = rbd.open(&spec("dst"), false).unwrap();
    let rec = dst.migration_record().unwrap().unwrap();
    let source = rbdm_migration::open_source_spec(&rbd, &rec.source_spec).unwrap();
    let last = Mutex::new((0, 0));
    let stats = copy_all(&dst, &*source, &rec, false, &last);
    // Objects 0, 5120 (data in the snapshot only) and the last.
    assert_eq!(stats.objects_visited.load(Ordering::Relaxed), 3);
    assert_eq!(
        *last.lock().unwrap(),
        (16384, 16384),
        "progress reaches 100%"
    );
    assert_bytes(&dst, 0, 4096, 0x61);
    assert_bytes(&dst, 20 * GIB, 4096, 0);
    assert_bytes(&dst, size - 4096, 4096, 0x62);
    let snap = rbd.open(&spec("dst@s1"), true).unwrap();
    assert_bytes(&snap, 20 * GIB, 4096, 0x61);
    assert_bytes(&snap, size - 4096, 4096, 0);
}
