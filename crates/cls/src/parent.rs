//! Clone bookkeeping: the `parent` header key (`cls_rbd_parent`), clone v2's
//! `snap_children_<id>` sets of `cls::rbd::ChildImageSpec`, and clone v1's `rbd_children`
//! object (key: parent pool, image id, snap id; value: child image ids).

use crate::denc::{decode_versioned, encode_versioned, whole, Decoder, Encoder, StructVersion};
use crate::error::DecodeError;

/// A clone's link to its parent snapshot (`cls_rbd_parent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClsRbdParent {
    pub pool_id: i64,
    pub pool_namespace: String,
    pub image_id: String,
    pub snap_id: u64,
    /// Bytes of the head that map onto the parent; absent once detached (version 2 only;
    /// version 1 always carries a number).
    pub head_overlap: Option<u64>,
}

impl ClsRbdParent {
    /// Decodes the whole `parent` value (version 1 or 2).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned("cls_rbd_parent", bytes, 2, 1, Self::decode_body)
    }

    /// Decodes a parent embedded in another record.
    pub fn decode_in(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.versioned(2, 1, Self::decode_body)
    }

    fn decode_body(d: &mut Decoder<'_>, sv: StructVersion) -> Result<Self, DecodeError> {
        let pool_id = d.i64()?;
        let pool_namespace = if sv.v >= 2 {
            d.string()?
        } else {
            String::new()
        };
        let image_id = d.string()?;
        let snap_id = d.u64()?;
        let head_overlap = if sv.v >= 2 {
            d.optional(|d| d.u64())?
        } else {
            Some(d.u64()?)
        };
        Ok(ClsRbdParent {
            pool_id,
            pool_namespace,
            image_id,
            snap_id,
            head_overlap,
        })
    }

    /// Version 2, compat 2: what Nautilus and later OSDs write.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(2, 2, |e| {
            e.i64(self.pool_id);
            e.string(&self.pool_namespace);
            e.string(&self.image_id);
            e.u64(self.snap_id);
            e.optional(self.head_overlap.as_ref(), |e, v| e.u64(*v));
        })
    }

    /// Version 1 (pre-Nautilus, no namespace), as old snapshot records embed it.
    pub fn encode_v1(&self) -> Vec<u8> {
        encode_versioned(1, 1, |e| {
            e.i64(self.pool_id);
            e.string(&self.image_id);
            e.u64(self.snap_id);
            e.u64(self.head_overlap.unwrap_or(0));
        })
    }
}

/// One clone of a snapshot (`cls::rbd::ChildImageSpec`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChildImageSpec {
    pub pool_id: i64,
    pub pool_namespace: String,
    pub image_id: String,
}

impl ChildImageSpec {
    fn decode_in(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.versioned(2, 1, |d, sv| {
            let pool_id = d.i64()?;
            let image_id = d.string()?;
            let pool_namespace = if sv.v >= 2 {
                d.string()?
            } else {
                String::new()
            };
            Ok(ChildImageSpec {
                pool_id,
                pool_namespace,
                image_id,
            })
        })
    }

    fn encode_in(&self, e: &mut Encoder) {
        e.versioned(2, 1, |e| {
            e.i64(self.pool_id);
            e.string(&self.image_id);
            e.string(&self.pool_namespace);
        });
    }
}

/// A `snap_children_<snap id>` value: the set of clones of that snapshot, in Ceph's set order.
pub fn decode_snap_children(bytes: &[u8]) -> Result<Vec<ChildImageSpec>, DecodeError> {
    // smallest element: 6-byte struct header + pool + empty id
    whole("snap_children", bytes, |d| {
        d.vec(6 + 8 + 4, ChildImageSpec::decode_in)
    })
}

pub fn encode_snap_children(children: &[ChildImageSpec]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.seq(children, |e, c| c.encode_in(e));
    e.into_bytes()
}

/// A clone v1 `rbd_children` key: which parent snapshot the value lists children of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildrenV1Key {
    pub pool_id: i64,
    pub image_id: String,
    pub snap_id: u64,
}

impl ChildrenV1Key {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        whole("rbd_children key", bytes, |d| {
            Ok(ChildrenV1Key {
                pool_id: d.i64()?,
                image_id: d.string()?,
                snap_id: d.u64()?,
            })
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.i64(self.pool_id);
        e.string(&self.image_id);
        e.u64(self.snap_id);
        e.into_bytes()
    }
}

/// A clone v1 `rbd_children` value: the child image ids (a `std::set<std::string>`).
pub fn decode_children_v1(bytes: &[u8]) -> Result<Vec<String>, DecodeError> {
    whole("rbd_children value", bytes, |d| d.vec(4, |d| d.string()))
}

pub fn encode_children_v1(ids: &[String]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.seq(ids, |e, s| e.string(s));
    e.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent() -> ClsRbdParent {
        ClsRbdParent {
            pool_id: 2,
            pool_namespace: "ns".into(),
            image_id: "1234".into(),
            snap_id: 7,
            head_overlap: Some(1 << 22),
        }
    }

    #[test]
    fn v2_roundtrips_with_and_without_overlap() {
        for overlap in [None, Some(0), Some(9)] {
            let p = ClsRbdParent {
                head_overlap: overlap,
                ..parent()
            };
            assert_eq!(ClsRbdParent::decode(&p.encode()).unwrap(), p);
        }
    }

    #[test]
    fn v1_decodes_without_namespace() {
        let p = ClsRbdParent {
            pool_namespace: String::new(),
            ..parent()
        };
        assert_eq!(ClsRbdParent::decode(&p.encode_v1()).unwrap(), p);
    }

    #[test]
    fn child_spec_v1_has_no_namespace() {
        let mut e = Encoder::new();
        e.u32(1);
        e.versioned(1, 1, |e| {
            e.i64(3);
            e.string("abc");
        });
        let children = decode_snap_children(&e.into_bytes()).unwrap();
        assert_eq!(children[0].image_id, "abc");
        assert_eq!(children[0].pool_namespace, "");
    }

    #[test]
    fn children_v1_roundtrip() {
        let key = ChildrenV1Key {
            pool_id: 1,
            image_id: "p".into(),
            snap_id: 4,
        };
        assert_eq!(ChildrenV1Key::decode(&key.encode()).unwrap(), key);
        let ids = vec!["a".to_string(), "b".to_string()];
        assert_eq!(decode_children_v1(&encode_children_v1(&ids)).unwrap(), ids);
    }
}
