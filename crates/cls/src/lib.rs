//! Ceph's RBD format 2 records, encoded and decoded byte for byte as Pacific's `cls_rbd`,
//! `cls_lock` and `BitVector` write them, so rbdm and Ceph can read each other's images.
//!
//! For: the values of every omap key, xattr and small object an RBD image is made of
//! (`rbd_id.*`, `rbd_directory`, `rbd_header.*`, `rbd_object_map.*`, `rbd_trash`,
//! `rbd_namespace`, `rbd_children`, `lock.*` xattrs), and naming which record a given
//! (object, key) holds ([`classify`]).
//!
//! Not for: deciding what to write or when (the image crate does that), talking to a store or
//! a cluster, or the `cls_rbd` methods' argument encodings. Decoders never panic and bound
//! every length by the bytes present before allocating.

#![forbid(unsafe_code)]

pub mod denc;
pub mod directory;
mod error;
pub mod golden;
pub mod header;
pub mod lock;
pub mod migration;
pub mod object_map;
pub mod parent;
pub mod record;
pub mod snap;
pub mod trash;
mod utime;

pub use error::{DecodeError, DecodeErrorKind};
pub use record::{classify, Place, Record, RecordKind};
pub use utime::UTime;
