//! Ceph's RBD export formats, read and written as `rbd export`/`import` and
//! `export-diff`/`import-diff` do (Ceph's doc/dev/rbd-export.rst and rbd-diff.rst).
//!
//! What it is for: the byte streams. Export format 1 is the raw image; export format 2 is
//! "rbd image v2\n", header records (tag u8, le64 length, value: 'O' order, 'T' features,
//! 'U' stripe unit, 'C' stripe count, 'M' metadata key/value) ended by 'E', then
//! "rbd image diffs v2\n" (written and required by rbd, missing from the doc), le64 number of
//! diffs and one "rbd diff v2" per snapshot, oldest first, then the head. A diff is a banner,
//! then 'f' from-snap, 't' to-snap, 'p' protected (v2 only), 's' size, 'w' (offset, length,
//! data) and 'z' (offset, length) records, ended by 'e'; "rbd diff v1\n" (export-diff's
//! default) is the same without the length fields.
//! [`wire`] reads positioned bytes, [`header`] and [`diff`] decode and encode the records
//! without touching an image (what the fuzz target drives), [`import`] and [`export`] move
//! them in and out of an [`rbdm_image::Image`], streaming in object-size chunks with bounded
//! memory, sparse both ways.
//!
//! What it is not: no argument parsing, file naming or progress printing (the CLI's), no
//! image semantics (`rbdm-image`'s). A tag the decoder does not know is refused rather than
//! skipped, unlike Ceph's importer: a flipped byte must not silently drop data.

#![forbid(unsafe_code)]

pub mod diff;
mod error;
pub mod export;
pub mod header;
pub mod import;
pub mod sparse;
pub mod wire;

pub use error::{Error, Problem, Result, Tag};

/// First line of an export-format-2 stream.
pub const IMAGE_BANNER: &[u8] = b"rbd image v2\n";
/// Between the header and the diffs of an export-format-2 stream.
pub const DIFFS_BANNER: &[u8] = b"rbd image diffs v2\n";
