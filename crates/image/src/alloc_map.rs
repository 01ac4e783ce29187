//! Change tokens for callers that cache an image's allocation map (the NBD export): the unit
//! such a cache works in, and a cheap value that changes whenever any writer, in this
//! process or another, may have changed the allocation inside one unit.
//!
//! The unit is one object set (`object_size * stripe_count` bytes, one object unstriped):
//! exactly the objects of a set back that image range, so their store versions say when the
//! range's allocation may have moved. Store versions come from a pool-wide counter (RADOS
//! `user_version`), so a removed and recreated object never shows an old value again.

use rbdm_store::{Error as StoreError, HEAD};

use crate::{Image, Result};

/// Stands for "no object" in a token, so creating or removing an object changes it.
const ABSENT: u64 = 0x9e37_79b9_7f4a_7c15;

impl Image {
    /// Bytes of image whose allocation one [`Image::allocation_token`] covers: aligned
    /// object sets.
    pub fn allocation_granule(&self) -> u64 {
        self.layout().period()
    }

    /// A value that differs from any earlier one whenever the allocation of the object set
    /// holding image byte `offset` may have changed: it folds the store versions of the set's
    /// objects. What lies beyond those objects does not change under an open image: a parent
    /// is a snapshot, and a migration source is read-only (a snapshot, or an image whose
    /// writes the migration blocks), so an absent object maps to the same extents until it
    /// is created.
    pub fn allocation_token(&self, offset: u64) -> Result<u64> {
        let h = self.header()?;
        let layout = h.layout;
        let first = (offset / layout.period()) * layout.stripe_count;
        let snap = self.snap_id().unwrap_or(HEAD);
        let mut token: u64 = 0;
        for object_no in first..first + layout.stripe_count {
            let version = match self.store().stat(&self.data_loc(&h, object_no), snap) {
                Ok(st) => st.version,
                Err(StoreError::NoObject { .. }) => ABSENT,
                Err(e) => return Err(e.into()),
            };
            token = mix(token ^ version);
        }
        Ok(token)
    }
}

/// A 64-bit finaliser (splitmix64), so tokens of different version lists rarely collide.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
