//! Links every built-in plugin.
pub fn link() {}
