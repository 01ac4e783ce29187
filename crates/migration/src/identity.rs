//! A migration's local file sources, pinned at prepare and checked at every later open.
//!
//! librbd checks nothing: a raw file replaced or truncated between `prepare` and `execute`
//! is copied as whatever is there then (zeros past a new end). The file stream checks its
//! file only from its own open on; this closes the gap between processes. At prepare, the
//! size, times and inode of each `file` stream the spec names are recorded in the migration
//! record's `source_identity` (not in `source_spec`, which `status` shows as the user gave
//! it, and which must stay a spec librbd would take). Every later open of the source —
//! `execute` in a new process, a client reading through, `status` — compares them with the
//! file now at that path before and after opening it, and `execute` again before it says
//! `executed`: a change is EIO naming the file and what changed, never zeros.
//!
//! Recorded as JSON `{"<spec path>": <identity>}`, e.g. `{"stream": …, "snapshots[0].stream": …}`.
//! Other streams (http, s3, nbd) are not pinned here; qcow backing files neither (the file
//! stream checks them from their open on).

use std::path::Path;

use rbdm_registry::SourceError;
use rbdm_spec::{SourceSpec, StreamSpec};
use serde_json::{Map, Value};

/// The `file` streams of a spec, by their path in it. A spec that does not parse names none
/// (opening it reports what is wrong).
fn file_streams(spec_text: &str) -> Vec<(String, String)> {
    let Ok(spec) = SourceSpec::parse(spec_text) else {
        return Vec::new();
    };
    let mut streams = Vec::new();
    let mut add = |path: String, s: &StreamSpec| {
        if let StreamSpec::File(f) = s {
            streams.push((path, f.file_path.clone()));
        }
    };
    match &spec {
        SourceSpec::Raw(r) => {
            add("stream".into(), &r.stream);
            for (i, snap) in r.snapshots.iter().enumerate() {
                add(format!("snapshots[{i}].stream"), &snap.stream);
            }
        }
        SourceSpec::Qcow(q) => add("stream".into(), &q.stream),
        SourceSpec::Native(_) | SourceSpec::Other { .. } => {}
    }
    streams
}

/// What to record at prepare: the identities of the spec's files now; empty text when the
/// spec names no file.
pub(crate) fn record(spec_text: &str) -> Result<String, SourceError> {
    let mut pins = Map::new();
    for (at, file) in file_streams(spec_text) {
        pins.insert(at, rbdm_stream_file::recorded_identity(Path::new(&file))?);
    }
    if pins.is_empty() {
        return Ok(String::new());
    }
    Ok(Value::Object(pins).to_string())
}

/// `Changed` (EIO) when a file the spec names is not what `recorded` says it was at prepare.
/// Nothing recorded (a source that is no file, or a record from before this check) passes.
pub(crate) fn check(spec_text: &str, recorded: &str) -> Result<(), SourceError> {
    if recorded.is_empty() {
        return Ok(());
    }
    let pins: Map<String, Value> = serde_json::from_str(recorded).map_err(|e| {
        SourceError::Corrupt(format!(
            "the source identity recorded at prepare is unreadable: {e}"
        ))
    })?;
    for (at, file) in file_streams(spec_text) {
        let Some(pin) = pins.get(&at) else {
            return Err(SourceError::Corrupt(format!(
                "no identity was recorded at prepare for the file at {at} ({file})"
            )));
        };
        rbdm_stream_file::check_recorded(Path::new(&file), pin)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn raw_spec(paths: &[&Path]) -> String {
        let stream = |p: &Path| serde_json::json!({"type": "file", "file_path": p});
        let snaps: Vec<Value> = paths[1..]
            .iter()
            .enumerate()
            .map(|(i, p)| serde_json::json!({"type": "raw", "name": format!("s{i}"), "stream": stream(p)}))
            .collect();
        serde_json::json!({"type": "raw", "stream": stream(paths[0]), "snapshots": snaps})
            .to_string()
    }

    #[test]
    fn every_file_of_the_spec_is_pinned_and_a_change_to_any_fails() {
        let dir = tempfile::tempdir().unwrap();
        let head = dir.path().join("head");
        let snap = dir.path().join("snap");
        std::fs::write(&head, vec![1u8; 8192]).unwrap();
        std::fs::write(&snap, vec![2u8; 8192]).unwrap();
        let spec = raw_spec(&[&head, &snap]);
        let pins = record(&spec).unwrap();
        let v: Value = serde_json::from_str(&pins).unwrap();
        assert!(
            v.get("stream").is_some() && v.get("snapshots[0].stream").is_some(),
            "{v}"
        );
        check(&spec, &pins).unwrap();

        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::File::options()
            .write(true)
            .open(&snap)
            .unwrap()
            .write_all_at(b"x", 10)
            .unwrap();
        let e = check(&spec, &pins).unwrap_err();
        assert_eq!(e.errno(), libc::EIO);
        assert!(
            e.to_string().contains("snap") && e.to_string().contains("modified"),
            "{e}"
        );

        // Replaced under the same name, same size and bytes: another inode.
        let pins = record(&spec).unwrap();
        let other = dir.path().join("other");
        std::fs::copy(&head, &other).unwrap();
        std::fs::rename(&other, &head).unwrap();
        let e = check(&spec, &pins).unwrap_err();
        assert!(e.to_string().contains("replaced"), "{e}");

        let pins = record(&spec).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&head)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let e = check(&spec, &pins).unwrap_err();
        assert!(e.to_string().contains("4096 bytes, 8192 before"), "{e}");
        std::fs::remove_file(&head).unwrap();
        let e = check(&spec, &pins).unwrap_err();
        assert!(e.to_string().contains("cannot be opened"), "{e}");
        assert_eq!(e.errno(), libc::EIO);
    }

    #[test]
    fn sources_without_files_record_nothing_and_old_records_pass() {
        let nbd = r#"{"type":"raw","stream":{"type":"nbd","uri":"nbd://localhost"}}"#;
        assert_eq!(record(nbd).unwrap(), "");
        check(nbd, "").unwrap();
        let file = r#"{"type":"raw","stream":{"type":"file","file_path":"/nonexistent/x"}}"#;
        check(file, "").unwrap();
        assert_eq!(record(file).unwrap_err().errno(), libc::ENOENT);
        assert_eq!(check(file, "{}").unwrap_err().errno(), libc::EIO);
        assert_eq!(check(file, "not json").unwrap_err().errno(), libc::EIO);
    }
}
