//! RBD layouts and striping (Ceph's `Striper::file_to_extents` and its inverse).
//!
//! An image is cut into stripe units laid round-robin over `stripe_count` objects; once each
//! object of that set is full (`object_size / stripe_unit` units each) the next object set
//! begins. With `stripe_count == 1` this is plain chunking into objects.

/// An image layout. Invariants (checked by [`Layout::new`]): `object_size` is a power of two
/// from 4 KiB to 32 MiB; `stripe_unit` is at least 512 bytes and divides `object_size`;
/// `stripe_count >= 1`.
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

pub const MIN_ORDER: u8 = 12;
pub const MAX_ORDER: u8 = 25;

impl Default for Layout {
    /// 4 MiB objects, no striping: what `rbd create` uses.
    fn default() -> Self {
        Layout {
            object_size: 4 << 20,
            stripe_unit: 4 << 20,
            stripe_count: 1,
        }
    }
}

impl Layout {
    pub fn new(object_size: u64, stripe_unit: u64, stripe_count: u64) -> Result<Self, LayoutError> {
        if !object_size.is_power_of_two()
            || !(1 << MIN_ORDER..=1 << MAX_ORDER).contains(&object_size)
        {
            return Err(LayoutError::ObjectSize(object_size));
        }
        if stripe_unit < 512 || !object_size.is_multiple_of(stripe_unit) {
            return Err(LayoutError::StripeUnit {
                stripe_unit,
                object_size,
            });
        }
        if stripe_count == 0 {
            return Err(LayoutError::StripeCount);
        }
        Ok(Layout {
            object_size,
            stripe_unit,
            stripe_count,
        })
    }

    /// Objects of `1 << order` bytes, no striping.
    pub fn from_order(order: u8) -> Result<Self, LayoutError> {
        if !(MIN_ORDER..=MAX_ORDER).contains(&order) {
            return Err(LayoutError::Order(order));
        }
        let size = 1u64 << order;
        Layout::new(size, size, 1)
    }

    pub fn order(&self) -> u8 {
        self.object_size.trailing_zeros() as u8
    }

    /// True when data is actually spread over several objects (Ceph's STRIPINGV2 feature).
    pub fn is_striped(&self) -> bool {
        self.stripe_count > 1 || self.stripe_unit != self.object_size
    }

    fn units_per_object(&self) -> u64 {
        self.object_size / self.stripe_unit
    }

    /// Bytes covered by one object set (`stripe_count` objects filled completely).
    pub fn period(&self) -> u64 {
        self.object_size * self.stripe_count
    }

    /// How many objects an image of `size` bytes may use (Ceph's `get_num_objects`).
    pub fn object_count(&self, size: u64) -> u64 {
        let period = self.period();
        let full_sets = size / period;
        let rest = size % period;
        if rest == 0 {
            return full_sets * self.stripe_count;
        }
        let row = self.stripe_unit * self.stripe_count;
        let partial = if rest >= row {
            self.stripe_count
        } else {
            rest.div_ceil(self.stripe_unit)
        };
        full_sets * self.stripe_count + partial
    }

    /// Where image byte `offset` lives: `(object_no, offset in object)`.
    pub fn map_offset(&self, offset: u64) -> (u64, u64) {
        let su = self.stripe_unit;
        let block = offset / su;
        let stripe = block / self.stripe_count;
        let pos = block % self.stripe_count;
        let set = stripe / self.units_per_object();
        let object_no = set * self.stripe_count + pos;
        let in_object = (stripe % self.units_per_object()) * su + offset % su;
        (object_no, in_object)
    }

    /// The image offset of byte `offset` of object `object_no` (inverse of [`map_offset`]).
    ///
    /// [`map_offset`]: Layout::map_offset
    pub fn image_offset(&self, object_no: u64, offset: u64) -> u64 {
        let su = self.stripe_unit;
        let set = object_no / self.stripe_count;
        let pos = object_no % self.stripe_count;
        let stripe = set * self.units_per_object() + offset / su;
        (stripe * self.stripe_count + pos) * su + offset % su
    }

    /// Maps an image extent to object extents, in image order. Pieces that are adjacent in
    /// both the image and one object are merged (always the case without striping).
    pub fn map_extent(&self, offset: u64, len: u64) -> Vec<ObjectExtent> {
        let mut out: Vec<ObjectExtent> = Vec::new();
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let (object_no, in_object) = self.map_offset(pos);
            let piece = (self.stripe_unit - pos % self.stripe_unit).min(len - done);
            match out.last_mut() {
                Some(last)
                    if last.object_no == object_no && last.offset + last.len == in_object =>
                {
                    last.len += piece
                }
                _ => out.push(ObjectExtent {
                    object_no,
                    offset: in_object,
                    len: piece,
                    buf_offset: done,
                }),
            }
            done += piece;
        }
        out
    }

    /// Maps an extent of one object back to image extents `(image offset, len)`, in object
    /// order, merged where contiguous in the image.
    pub fn object_image_extents(&self, object_no: u64, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let end = (offset + len).min(self.object_size);
        let mut pos = offset;
        while pos < end {
            let piece = (self.stripe_unit - pos % self.stripe_unit).min(end - pos);
            let img = self.image_offset(object_no, pos);
            match out.last_mut() {
                Some(last) if last.0 + last.1 == img => last.1 += piece,
                _ => out.push((img, piece)),
            }
            pos += piece;
        }
        out
    }

    /// The image extents object `object_no` holds, clipped to an image of `size` bytes.
    pub fn object_extents_in_image(&self, object_no: u64, size: u64) -> Vec<(u64, u64)> {
        self.object_image_extents(object_no, 0, self.object_size)
            .into_iter()
            .filter(|&(off, _)| off < size)
            .map(|(off, len)| (off, len.min(size - off)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        assert!(Layout::new(4096, 4096, 1).is_ok());
        assert_eq!(
            Layout::new(3 << 20, 1 << 20, 1),
            Err(LayoutError::ObjectSize(3 << 20))
        );
        assert!(matches!(
            Layout::new(1 << 20, 3 << 10, 1),
            Err(LayoutError::StripeUnit { .. })
        ));
        assert_eq!(
            Layout::new(1 << 20, 1 << 20, 0),
            Err(LayoutError::StripeCount)
        );
        assert_eq!(Layout::from_order(26), Err(LayoutError::Order(26)));
        assert_eq!(Layout::from_order(22).unwrap(), Layout::default());
    }

    #[test]
    fn striping_round_robin() {
        let l = Layout::new(8192, 4096, 3).unwrap();
        // units 0,1,2 go to objects 0,1,2; units 3,4,5 to the second half of 0,1,2; then 3,4,5.
        assert_eq!(l.map_offset(0), (0, 0));
        assert_eq!(l.map_offset(4096), (1, 0));
        assert_eq!(l.map_offset(3 * 4096 + 5), (0, 4096 + 5));
        assert_eq!(l.map_offset(6 * 4096), (3, 0));
        assert_eq!(l.object_count(6 * 4096), 3);
        assert_eq!(l.object_count(6 * 4096 + 1), 4);
        assert_eq!(l.object_count(4096), 1);
        assert_eq!(l.object_count(4097), 2);
    }
}
