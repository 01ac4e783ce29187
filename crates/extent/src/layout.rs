//! RBD layouts and striping (Ceph's `Striper::file_to_extents` and its inverse).

/// An image layout. Invariants (checked by [`Layout::new`]): `object_size` is a power of two
/// from 4 KiB to 32 MiB; `stripe_unit` is a power of two that divides `object_size` and is at
/// least 4 KiB... (exact rules: see `new`); `stripe_count >= 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    pub object_size: u64,
    pub stripe_unit: u64,
    pub stripe_count: u64,
}

/// A piece of an image extent inside one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectExtent {
    pub object_no: u64,
    /// Offset inside the object.
    pub offset: u64,
    pub len: u64,
    /// Where this piece starts inside the caller's image extent (0 = the extent's start).
    pub buf_offset: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("object size {0} is not a power of two between 4 KiB and 32 MiB")]
    ObjectSize(u64),
    #[error("stripe unit {stripe_unit} is not a factor of the object size {object_size}")]
    StripeUnit { stripe_unit: u64, object_size: u64 },
    #[error("stripe count must be at least 1")]
    StripeCount,
    #[error("order {0} is out of range (12..=25)")]
    Order(u8),
}
