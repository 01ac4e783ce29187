//! The `qcow` format against the registry's `SourceImage` contract, over a stream the test
//! can break: `list_snaps` consistent with reads at every point, and reads of data failing
//! (not reading as zeros) once the stream fails. Needs qemu-img and qemu-io.

mod common;

use anyhow::Result;
use common::*;
use rbdm_registry::conformance::{self, Breakable, SnapRules};
use rbdm_registry::Stream;

#[test]
fn a_qcow2_with_a_snapshot_keeps_the_contract_and_fails_on_a_broken_stream() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    create_qcow2(d, "img.qcow2", "cluster_size=65536", "8M")?;
    qemu_io(
        d,
        "qcow2",
        "img.qcow2",
        &["write -P 0x11 0 192k", "write -P 0x22 3M 64k"],
    )?;
    qemu_img(d, &["snapshot", "-c", "s1", "img.qcow2"])?;
    qemu_io(
        d,
        "qcow2",
        "img.qcow2",
        &["write -P 0x33 64k 64k", "write -z 3M 64k"],
    )?;
    let stream =
        || -> Result<Box<dyn Stream>> { Ok(Box::new(FileStream::open(&d.join("img.qcow2"))?)) };
    let img = rbdm_format_qcow::open(stream()?)?;
    let lists = conformance::check_source(&img, 3 << 20, SnapRules::MERGED)?;
    let broken = Breakable::new(stream()?);
    let img = rbdm_format_qcow::open(broken.handle())?;
    conformance::check_source_fails(&img, &lists, &broken)?;
    Ok(())
}
