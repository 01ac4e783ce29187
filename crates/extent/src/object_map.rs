//! The object map: two bits per object, stored as Ceph stores `rbd_object_map.<id>[.<snap>]`
//! (a `BitVector<2>` with crc32c over its header and each 4 KiB data block, encoded by
//! `rbdm_cls::object_map`), so a torn write is detected and librbd reads rbdm's maps.
//!
//! Packing: four objects per byte, object 0 in the two most significant bits. rbdm's own
//! earlier form (magic `RBDMOMAP`, u64 object count, the same packed bits, crc32) is only
//! read, by [`ObjectMap::decode_rbdm_v1`], for the one-time upgrade of existing stores.

/// The state of one object, in Ceph's numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ObjectState {
    Nonexistent = 0,
    Exists = 1,
    Pending = 2,
    ExistsClean = 3,
}

impl ObjectState {
    fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => ObjectState::Nonexistent,
            1 => ObjectState::Exists,
            2 => ObjectState::Pending,
            _ => ObjectState::ExistsClean,
        }
    }

    /// True when the object may hold data (`Pending` counts: a removal may not have finished).
    pub fn may_exist(self) -> bool {
        self != ObjectState::Nonexistent
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMap {
    len: u64,
    bits: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectMapError {
    #[error("object map is truncated: {0}")]
    Truncated(String),
    #[error("object map checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("object map is malformed: {0}")]
    Malformed(String),
}

const RBDM_V1_MAGIC: &[u8; 8] = b"RBDMOMAP";
/// The most objects a map describes: librbd's `MAX_OBJECT_MAP_OBJECT_COUNT`, so a map in
/// memory never passes 61 MiB (2 bits each). An image with an object map is never larger
/// (its size is checked against this); a larger count in a stored map is corruption, not a
/// reason to allocate.
pub const MAX_MAP_OBJECTS: u64 = 256_000_000;

impl ObjectMap {
    /// A map of `len` objects, all nonexistent.
    pub fn new(len: u64) -> Self {
        ObjectMap {
            len,
            bits: vec![0; len.div_ceil(4) as usize],
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The state of object `i`; objects past the end are nonexistent.
    pub fn get(&self, i: u64) -> ObjectState {
        if i >= self.len {
            return ObjectState::Nonexistent;
        }
        let shift = 6 - 2 * (i % 4);
        ObjectState::from_bits(self.bits[(i / 4) as usize] >> shift)
    }

    /// Sets object `i`; returns whether the state changed. Objects past the end are ignored.
    pub fn set(&mut self, i: u64, state: ObjectState) -> bool {
        if i >= self.len || self.get(i) == state {
            return false;
        }
        let shift = 6 - 2 * (i % 4);
        let byte = &mut self.bits[(i / 4) as usize];
        *byte = (*byte & !(3 << shift)) | ((state as u8) << shift);
        true
    }

    /// Grows (new objects nonexistent) or shrinks the map.
    pub fn resize(&mut self, len: u64) {
        let old = self.len;
        self.bits.resize(len.div_ceil(4) as usize, 0);
        self.len = len;
        for i in len..old.min(len.div_ceil(4) * 4) {
            let shift = 6 - 2 * (i % 4);
            self.bits[(i / 4) as usize] &= !(3 << shift);
        }
    }

    /// Object numbers whose state may hold data.
    pub fn existing(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len).filter(|&i| self.get(i).may_exist())
    }

    pub fn count_existing(&self) -> u64 {
        self.existing().count() as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        rbdm_cls::object_map::ObjectMap::from_packed(self.len, self.bits.clone())
            .expect("bits hold ceil(len / 4) bytes")
            .encode()
    }

    /// Decodes Ceph's form. Only canonical maps are accepted (crcs present, pad bits clear),
    /// so whatever decodes re-encodes to the same bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, ObjectMapError> {
        let map = rbdm_cls::object_map::ObjectMap::decode(buf).map_err(from_decode)?;
        if !map.crc_enabled() {
            return Err(ObjectMapError::Malformed("no checksums".into()));
        }
        let out = Self::checked(map.len(), map.packed())?;
        // A newer BitVector version (or fields it adds) would be rewritten as version 1:
        // refused, so the map is rebuilt rather than silently re-versioned.
        if out.encode() != buf {
            return Err(ObjectMapError::Malformed(
                "not the BitVector version 1 form".into(),
            ));
        }
        Ok(out)
    }

    /// Decodes rbdm's earlier `RBDMOMAP` form (see the module doc); only the upgrade uses it.
    pub fn decode_rbdm_v1(buf: &[u8]) -> Result<Self, ObjectMapError> {
        if buf.len() < 20 {
            return Err(ObjectMapError::Truncated(format!(
                "{} bytes, need at least 20",
                buf.len()
            )));
        }
        if !Self::is_rbdm_v1(buf) {
            return Err(ObjectMapError::Malformed("bad magic".into()));
        }
        let len = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
        let nbytes = usize::try_from(len.div_ceil(4)).unwrap_or(usize::MAX);
        if Some(buf.len()) != nbytes.checked_add(20) {
            return Err(ObjectMapError::Truncated(format!(
                "{} bytes for {len} objects",
                buf.len()
            )));
        }
        let (body, crc) = buf.split_at(16 + nbytes);
        let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(ObjectMapError::Checksum { stored, computed });
        }
        Self::checked(len, &body[16..])
    }

    /// Whether `buf` starts as rbdm's earlier form does.
    pub fn is_rbdm_v1(buf: &[u8]) -> bool {
        buf.starts_with(RBDM_V1_MAGIC)
    }

    /// A map of `len` objects over `bits`, refusing implausible counts and set pad bits.
    fn checked(len: u64, bits: &[u8]) -> Result<Self, ObjectMapError> {
        if len > MAX_MAP_OBJECTS {
            return Err(ObjectMapError::Malformed(format!(
                "object count {len} is implausible"
            )));
        }
        let tail_bits = (len % 4) as u32;
        if tail_bits != 0 && bits[bits.len() - 1] & (0xffu8 >> (2 * tail_bits)) != 0 {
            return Err(ObjectMapError::Malformed(
                "bits set past the last object".into(),
            ));
        }
        Ok(ObjectMap {
            len,
            bits: bits.to_vec(),
        })
    }
}

fn from_decode(e: rbdm_cls::DecodeError) -> ObjectMapError {
    use rbdm_cls::DecodeErrorKind as K;
    match e.kind {
        K::Truncated { .. } => ObjectMapError::Truncated(e.to_string()),
        K::Checksum {
            stored, computed, ..
        } => ObjectMapError::Checksum { stored, computed },
        _ => ObjectMapError::Malformed(e.to_string()),
    }
}
