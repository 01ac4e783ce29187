//! Extent math for rbdm: image layouts and striping, interval sets, and the object map.
//!
//! What it is for: pure computation and small data structures with no I/O — mapping image
//! extents to object extents and back for any RBD layout (object size, stripe unit, stripe
//! count), sets of byte ranges, and the 2-bits-per-object map persisted with a crc32.
//! What it is not: it never touches a store or a file; callers persist the encoded bytes.
#![forbid(unsafe_code)]

pub mod interval;
pub mod layout;
pub mod object_map;

pub use interval::IntervalSet;
pub use layout::{Layout, LayoutError, ObjectExtent};
pub use object_map::{ObjectMap, ObjectMapError, ObjectState, MAX_MAP_OBJECTS};
