//! The `qcow` format found by name in the registry and opened from a source-spec, over a
//! stream type this test registers itself (so no other plugin crate is needed).

mod common;

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use common::*;
use rbdm_registry::{OpenContext, Point, SourceError, Stream, StreamPlugin};
use serde_json::json;

inventory::submit!(StreamPlugin {
    type_name: "testfile",
    description: "a local file, for this test",
    open: open_testfile,
});

fn open_testfile(
    spec: &serde_json::Value,
    path: &str,
    _ctx: &OpenContext,
) -> rbdm_registry::Result<Box<dyn Stream>> {
    let file = spec["path"]
        .as_str()
        .ok_or_else(|| SourceError::BadSpec(format!("{path}.path: missing")))?;
    FileStream::open(Path::new(file))
        .map(|s| Box::new(s) as Box<dyn Stream>)
        .map_err(|e| SourceError::NotFound(e.to_string()))
}

fn ctx() -> OpenContext<'static> {
    OpenContext::without_store()
}

fn bad_spec(spec: serde_json::Value, words: &[&str]) -> Result<()> {
    match rbdm_registry::open_source(&spec, &ctx()) {
        Err(SourceError::BadSpec(m)) => {
            for w in words {
                ensure!(m.contains(w), "{spec}: {m:?} does not mention {w:?}");
            }
            Ok(())
        }
        Err(e) => bail!("{spec}: expected a spec error, got {e:?}"),
        Ok(_) => bail!("{spec}: opened"),
    }
}

#[test]
fn opens_by_name_with_backing() -> Result<()> {
    rbdm_format_qcow::link();
    ensure!(
        rbdm_registry::formats()
            .iter()
            .any(|f| f.type_name == "qcow"),
        "qcow is not registered"
    );
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    qemu_img(d, &["create", "-f", "qcow2", "base.qcow2", "4M"])?;
    qemu_io(d, "qcow2", "base.qcow2", &["write -P 0x11 0 1M"])?;
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "4M",
        ],
    )?;
    qemu_io(d, "qcow2", "top.qcow2", &["write -P 0x22 512k 4k"])?;
    let path = d.join("top.qcow2");
    let spec = json!({"type": "qcow", "stream": {"type": "testfile", "path": path.to_str().context("path")?}});
    let img = rbdm_registry::open_source(&spec, &ctx())?;
    ensure!(img.format() == "qcow" && img.size() == 4 << 20);
    ensure!(
        img.describe().contains("backing file \"base.qcow2\""),
        "{}",
        img.describe()
    );
    let mut buf = vec![0u8; 8192];
    img.read(Point::Head, 512 * 1024 - 4096, &mut buf)?;
    ensure!(buf[..4096].iter().all(|&b| b == 0x11) && buf[4096..].iter().all(|&b| b == 0x22));
    Ok(())
}

#[test]
fn spec_errors_name_the_path() -> Result<()> {
    rbdm_format_qcow::link();
    let stream = json!({"type": "testfile", "path": "/nonexistent"});
    bad_spec(
        json!({"type": "qcow", "stream": stream, "extra": 1}),
        &["extra", "unknown field"],
    )?;
    bad_spec(json!({"type": "qcow"}), &["stream: missing"])?;
    bad_spec(
        json!({"type": "qcow", "stream": "file.qcow2"}),
        &["stream", "object"],
    )?;
    bad_spec(
        json!({"type": "qcow", "stream": {"path": "x"}}),
        &["stream.type: missing"],
    )?;
    // A stream type nobody registered: unsupported (ENOSYS), naming where.
    match rbdm_registry::open_source(&json!({"type": "qcow", "stream": {"type": "ftp"}}), &ctx()) {
        Err(SourceError::Unsupported(m)) => {
            ensure!(m.contains("stream.type") && m.contains("ftp"), "{m}")
        }
        other => bail!("unknown stream type: {:?}", other.map(|_| ())),
    }
    // The stream's own errors pass through with their kind.
    match rbdm_registry::open_source(&json!({"type": "qcow", "stream": stream}), &ctx()) {
        Err(SourceError::NotFound(m)) => ensure!(m.contains("nonexistent"), "{m}"),
        other => bail!("missing file: {:?}", other.map(|_| ())),
    }
    Ok(())
}
