//! An import's record as librbd writes it where rbdm could choose: the source-spec text
//! (librbd stores it re-serialised by json_spirit: keys sorted, no spaces) and the ids of the
//! source's snapshots, which key Ceph's `snap_seqs` (a `native` source's own snapshot ids; a
//! raw or qcow source's 1, 2, … in order, as librbd's `RawFormat` and `QCOWFormat` number
//! them).

use rbdm_image::{PoolSpec, Rbd};
use rbdm_spec::{NativeSpec, PoolRef, SourceSpec};

use crate::Result;

/// The spec as librbd stores it; text that is not JSON is kept as given.
pub(crate) fn spec_text(given: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(given) {
        Ok(mut v) => {
            v.sort_all_objects();
            v.to_string()
        }
        Err(_) => given.to_string(),
    }
}

/// The ids of the source's first `count` snapshots, oldest first (an import's source lists
/// its snapshots up to the chosen one).
pub(crate) fn snap_ids(rbd: &Rbd, spec_text: &str, count: usize) -> Result<Vec<u64>> {
    match SourceSpec::parse(spec_text) {
        Ok(SourceSpec::Native(n)) => native_ids(rbd, &n, count),
        _ => Ok((1..=count as u64).collect()),
    }
}

fn native_ids(rbd: &Rbd, n: &NativeSpec, count: usize) -> Result<Vec<u64>> {
    let spec = match &n.pool {
        PoolRef::Name(name) => PoolSpec::new(name, &n.pool_namespace),
        PoolRef::Id(id) => crate::recover::pool_spec(rbd, *id, &n.pool_namespace)?,
    };
    let name = Some(n.image_name.as_str()).filter(|s| !s.is_empty());
    let img = rbd.open_quiet(&spec, name, n.image_id.as_deref(), None)?;
    let ids: Vec<u64> = img
        .snap_list()?
        .into_iter()
        .map(|s| s.id)
        .take(count)
        .collect();
    if ids.len() < count {
        return Err(crate::Error::Invalid(format!(
            "source image '{}' has {} snapshots, its source lists {count}",
            n.image_name,
            ids.len()
        )));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_spec_is_stored_with_sorted_keys() {
        let given = r#"{ "type": "qcow", "stream": {"type": "file", "file_path": "/a"} }"#;
        assert_eq!(
            super::spec_text(given),
            r#"{"stream":{"file_path":"/a","type":"file"},"type":"qcow"}"#
        );
        assert_eq!(super::spec_text("not json"), "not json");
    }
}
