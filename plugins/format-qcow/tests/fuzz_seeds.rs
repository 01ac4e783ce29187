//! The fuzz targets' bodies over their seed corpus (fuzz/seeds/qcow_*), so `cargo test` checks
//! that the seeds are valid images and that the bodies run; the fuzzer itself explores further.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use rbdm_format_qcow::testing::{fuzz_header, fuzz_read, fuzz_stream};
use rbdm_registry::SourceImage;

fn seeds(target: &str) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        out.push((path.clone(), std::fs::read(&path)?));
    }
    ensure!(
        out.len() >= 5,
        "{}: only {} seeds",
        dir.display(),
        out.len()
    );
    Ok(out)
}

#[test]
fn seeds_open_and_fuzz_bodies_run() -> Result<()> {
    for target in ["qcow_header", "qcow_read"] {
        for (path, bytes) in seeds(target)? {
            // Every seed is a valid image, so the fuzzer starts from deep inside the decoder.
            let img = rbdm_format_qcow::open(Box::new(fuzz_stream(&bytes)))
                .with_context(|| path.display().to_string())?;
            let lists = img.list_snaps(0, img.size())?;
            ensure!(lists.len() == img.snapshots().len() + 1);
            fuzz_header(&bytes);
            fuzz_read(&bytes);
            // A few cheap mutations of each seed, as a smoke test of the bodies.
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ bytes.len() as u64;
            for _ in 0..200 {
                let mut b = bytes.clone();
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let at = (rng % b.len() as u64) as usize;
                b[at] ^= (rng >> 32) as u8 | 1;
                fuzz_read(&b);
            }
        }
    }
    Ok(())
}
