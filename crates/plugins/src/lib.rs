//! Links every built-in source plugin into a binary: the `rbdm` CLI and every integration
//! test call [`link`] once.
//!
//! What it is for: a plugin registers itself with `inventory::submit!`, but a crate whose
//! symbols nothing uses is dropped by the linker, registration and all (NOTES.md, "inventory
//! linking trap"). Calling each plugin's `link()` keeps its object code, so its registration
//! runs. What it is not: a registry (that is `rbdm-registry`); a custom binary may link a
//! subset by calling only the plugins' own `link()` functions.
#![forbid(unsafe_code)]

/// Keeps every built-in plugin in the binary. Cheap; call it before the first lookup.
#[inline(never)]
pub fn link() {
    rbdm_stream_file::link();
    rbdm_format_raw::link();
    rbdm_format_native::link();
    rbdm_format_qcow::link();
    rbdm_stream_http::link();
    rbdm_stream_s3::link();
    rbdm_stream_nbd::link();
}

/// `(type name, description)` of each plugin, by name.
pub type Listing = Vec<(&'static str, &'static str)>;

/// What this binary can open: (formats, streams).
pub fn linked() -> (Listing, Listing) {
    link();
    let formats = rbdm_registry::formats()
        .into_iter()
        .map(|p| (p.type_name, p.description))
        .collect();
    let streams = rbdm_registry::streams()
        .into_iter()
        .map(|p| (p.type_name, p.description))
        .collect();
    (formats, streams)
}
