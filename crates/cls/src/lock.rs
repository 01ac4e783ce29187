//! `cls_lock` xattrs (`lock.<name>`, `lock.rbd_lock` for RBD): `lock_info_t` with its
//! lockers (`locker_id_t` → `locker_info_t`, which holds an `entity_addr_t`).

use crate::denc::{byte_enum, decode_versioned, encode_versioned, Decoder, Encoder};
use crate::error::DecodeError;
use crate::UTime;

byte_enum! {
/// `ClsLockType`, one byte.
pub enum LockType("lock type") {
    None = 0,
    Exclusive = 1,
    Shared = 2,
    ExclusiveEphemeral = 3,
}
}

/// `entity_name_t`: who holds a lock (type 8 is a client), e.g. `client.4179`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityName {
    pub kind: u8,
    pub num: i64,
}

/// `entity_addr_t` in its v1 (marker 1) form: type, nonce, and the sockaddr as stored
/// (family as a little-endian u16, then the rest of `sa_data` as on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityAddr {
    pub kind: u32,
    pub nonce: u32,
    /// `sockaddr` bytes: empty for no address, else the u16 family and the rest.
    pub sockaddr: Vec<u8>,
}

impl EntityAddr {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        match d.u8()? {
            1 => d.versioned(1, 1, |d, _| {
                let kind = d.u32()?;
                let nonce = d.u32()?;
                let sockaddr = d.blob()?.to_vec();
                Ok(EntityAddr {
                    kind,
                    nonce,
                    sockaddr,
                })
            }),
            // marker 0 is the pre-Luminous legacy form, which Pacific never writes in a lock
            v => Err(d.invalid_byte("entity_addr_t marker", v)),
        }
    }

    fn encode(&self, e: &mut Encoder) {
        e.u8(1);
        e.versioned(1, 1, |e| {
            e.u32(self.kind);
            e.u32(self.nonce);
            e.blob(&self.sockaddr);
        });
    }
}

/// One holder of a lock: `locker_id_t` and `locker_info_t` flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locker {
    pub name: EntityName,
    /// librbd's exclusive lock uses `auto <handle>`; advisory locks the user's id.
    pub cookie: String,
    pub expiration: UTime,
    pub addr: EntityAddr,
    pub description: String,
}

/// A `lock.<name>` xattr value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// In Ceph's map order (by entity name, then cookie).
    pub lockers: Vec<Locker>,
    pub lock_type: LockType,
    /// librbd's exclusive lock uses `internal`.
    pub tag: String,
}

impl LockInfo {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned("lock_info_t", bytes, 1, 1, |d, _| {
            // smallest locker: two 6-byte struct headers and the fields they must hold
            let lockers = d.vec(12 + 13 + 8 + 1, decode_locker)?;
            let lock_type = LockType::decode(d)?;
            let tag = d.string()?;
            Ok(LockInfo {
                lockers,
                lock_type,
                tag,
            })
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(1, 1, |e| {
            e.seq(&self.lockers, encode_locker);
            e.u8(self.lock_type as u8);
            e.string(&self.tag);
        })
    }
}

fn decode_locker(d: &mut Decoder<'_>) -> Result<Locker, DecodeError> {
    let (name, cookie) = d.versioned(1, 1, |d, _| {
        let name = EntityName {
            kind: d.u8()?,
            num: d.i64()?,
        };
        Ok((name, d.string()?))
    })?;
    let (expiration, addr, description) = d.versioned(1, 1, |d, _| {
        Ok((UTime::decode(d)?, EntityAddr::decode(d)?, d.string()?))
    })?;
    Ok(Locker {
        name,
        cookie,
        expiration,
        addr,
        description,
    })
}

fn encode_locker(e: &mut Encoder, l: &Locker) {
    e.versioned(1, 1, |e| {
        e.u8(l.name.kind);
        e.i64(l.name.num);
        e.string(&l.cookie);
    });
    e.versioned(1, 1, |e| {
        l.expiration.encode(e);
        l.addr.encode(e);
        e.string(&l.description);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_lock_with_two_lockers_roundtrips() {
        let locker = |num, cookie: &str| Locker {
            name: EntityName { kind: 8, num },
            cookie: cookie.into(),
            expiration: UTime::default(),
            addr: EntityAddr {
                kind: 1,
                nonce: 42,
                sockaddr: vec![2, 0, 0, 0, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            },
            description: "d".into(),
        };
        let info = LockInfo {
            lockers: vec![locker(1, "a"), locker(2, "b")],
            lock_type: LockType::Shared,
            tag: "t".into(),
        };
        assert_eq!(LockInfo::decode(&info.encode()).unwrap(), info);
    }

    #[test]
    fn legacy_address_marker_is_an_error_not_a_panic() {
        let mut e = Encoder::new();
        e.versioned(1, 1, |e| {
            e.u32(1);
            e.versioned(1, 1, |e| {
                e.u8(8);
                e.i64(1);
                e.string("c");
            });
            e.versioned(1, 1, |e| {
                UTime::default().encode(e);
                e.u8(0);
                e.raw(&[0; 40]);
            });
        });
        let err = LockInfo::decode(&e.into_bytes()).unwrap_err();
        assert!(err.to_string().contains("entity_addr_t marker"), "{err}");
    }
}
