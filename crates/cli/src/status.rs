//! The `migration` section of `rbd status --format json|xml`, under rbd's key names
//! (`source_pool_name` … `dest_image_id`, `state`, `state_description`), built from the
//! migration library's one-line descriptions (`pool/[namespace/]image (id)`).

use crate::doc::Doc;
use crate::obj;

/// `pool/[namespace/]image (id)` split into its four parts; `None` for anything else (an
/// import-only source, described by its source-spec).
fn split_image(s: &str) -> Option<[String; 4]> {
    let (path, id) = s.strip_suffix(')')?.rsplit_once(" (")?;
    let mut parts = path.splitn(3, '/');
    let pool = parts.next()?.to_string();
    let (ns, image) = match (parts.next()?, parts.next()) {
        (ns, Some(image)) => (ns.to_string(), image.to_string()),
        (image, None) => (String::new(), image.to_string()),
    };
    Some([pool, ns, image, id.to_string()])
}

/// Adds `<side>_pool_name` … `<side>_image_id`, or `source_spec` for a source that is no image.
fn add_side(doc: &mut Doc, side: &str, s: &str) {
    match split_image(s) {
        Some([pool, ns, image, id]) => {
            doc.set(&format!("{side}_pool_name"), pool);
            doc.set(&format!("{side}_pool_namespace"), ns);
            doc.set(&format!("{side}_image_name"), image);
            doc.set(&format!("{side}_image_id"), id);
        }
        None => doc.set(&format!("{side}_spec"), s),
    }
}

pub fn migration_doc(m: &rbdm_migration::Status) -> Doc {
    let mut doc = obj! {};
    add_side(&mut doc, "source", &m.source);
    add_side(&mut doc, "dest", &m.destination);
    // The library words a state with a description as `state (description)`.
    let (state, description) = match m.state.split_once(" (") {
        Some((s, d)) => (s, d.strip_suffix(')').unwrap_or(d)),
        None => (m.state.as_str(), ""),
    };
    doc.set("state", state);
    doc.set("state_description", description);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_rbd_status() {
        let m = rbdm_migration::Status {
            source: "rbd/msrc (112b5b4a82a7)".into(),
            destination: "cli/ns1/mdst (112f6a73e221)".into(),
            state: "executing (copied 3 of 4)".into(),
            import_only: false,
        };
        let d = migration_doc(&m);
        assert_eq!(
            d.to_json(false),
            r#"{"source_pool_name":"rbd","source_pool_namespace":"","source_image_name":"msrc","source_image_id":"112b5b4a82a7","dest_pool_name":"cli","dest_pool_namespace":"ns1","dest_image_name":"mdst","dest_image_id":"112f6a73e221","state":"executing","state_description":"copied 3 of 4"}"#
        );
        let spec = r#"{"type":"raw"}"#;
        let m = rbdm_migration::Status {
            source: spec.into(),
            ..m
        };
        assert_eq!(migration_doc(&m).get("source_spec"), Some(&Doc::from(spec)));
    }
}
