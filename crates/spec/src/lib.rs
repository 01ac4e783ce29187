//! Source-spec JSON model.
