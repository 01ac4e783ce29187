//! The `file` stream against the registry's `Stream` contract: a sparse file (holes known
//! through SEEK_HOLE), an empty one, and a file changed under the stream, which must fail
//! its reads rather than return other bytes or zeros.

use std::os::unix::fs::FileExt;

use rbdm_registry::conformance;
use rbdm_stream_file::FileStream;

fn sparse_file(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("sparse.raw");
    let mut want = vec![0u8; 3 << 20];
    want[4096..70_000].fill(0x5a);
    want[(2 << 20) + 100..(2 << 20) + 9000].fill(0xc3);
    let f = std::fs::File::create(&path).expect("create");
    f.set_len(want.len() as u64).expect("size");
    f.write_all_at(&want[4096..70_000], 4096).expect("write");
    f.write_all_at(&want[(2 << 20) + 100..(2 << 20) + 9000], (2 << 20) + 100)
        .expect("write");
    (path, want)
}

#[test]
fn a_file_keeps_the_stream_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, want) = sparse_file(dir.path());
    let s = FileStream::open(&path).expect("open");
    conformance::check_stream(&s, Some(&want)).unwrap_or_else(|e| panic!("{e}"));
    let empty = dir.path().join("empty.raw");
    std::fs::write(&empty, b"").expect("empty");
    conformance::check_stream(&FileStream::open(&empty).expect("open"), Some(&[]))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_file_changed_under_the_stream_fails_its_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = sparse_file(dir.path());
    let s = FileStream::open(&path).expect("open");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open to truncate")
        .set_len(1 << 20)
        .expect("truncate");
    conformance::check_fails(&s).unwrap_or_else(|e| panic!("{e}"));
}
