//! `rbd_object_map.<id>[.<snap id>]` objects: Ceph's `BitVector<2>` with its crc32c header and
//! per-4-KiB data-block checksums. Object states are 2 bits, most significant pair first.

use crate::denc::{encode_versioned, Decoder, Encoder};
use crate::error::{DecodeError, DecodeErrorKind};

const RECORD: &str = "BitVector";
/// Data bytes covered by one crc (`BitVector::BLOCK_SIZE`).
const BLOCK: usize = 4096;

/// `OBJECT_NONEXISTENT`, `OBJECT_EXISTS`, `OBJECT_PENDING`, `OBJECT_EXISTS_CLEAN`.
pub const NONEXISTENT: u8 = 0;
pub const EXISTS: u8 = 1;
pub const PENDING: u8 = 2;
pub const EXISTS_CLEAN: u8 = 3;

/// An object map: one 2-bit state per object of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMap {
    len: u64,
    /// Packed states, exactly `ceil(len / 4)` bytes; pad bits of the last byte kept as read.
    data: Vec<u8>,
    /// Whether the footer carries crcs (Ceph always writes them; an empty footer disables).
    crc_enabled: bool,
}

/// Ceph's `crc32c(0)` over a buffer: the reflected Castagnoli CRC seeded with 0 and without
/// the customary final inversion.
pub fn ceph_crc32c(seed: u32, bytes: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, bytes)
}

impl ObjectMap {
    /// `len` objects, all `NONEXISTENT`.
    pub fn new(len: u64) -> Self {
        let bytes = usize::try_from(len.div_ceil(4)).expect("object map larger than memory");
        ObjectMap {
            len,
            data: vec![0; bytes],
            crc_enabled: true,
        }
    }

    /// A map of `len` objects over already packed states (`ceil(len / 4)` bytes, most
    /// significant pair first), with crcs; `None` when `data` has another length.
    pub fn from_packed(len: u64, data: Vec<u8>) -> Option<Self> {
        (usize::try_from(len.div_ceil(4)).ok() == Some(data.len())).then_some(ObjectMap {
            len,
            data,
            crc_enabled: true,
        })
    }

    /// The packed states, pad bits of the last byte included.
    pub fn packed(&self) -> &[u8] {
        &self.data
    }

    /// Whether the record carries crcs (every map Pacific writes does).
    pub fn crc_enabled(&self) -> bool {
        self.crc_enabled
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The state of object `i`, or `None` past the end.
    pub fn get(&self, i: u64) -> Option<u8> {
        if i >= self.len {
            return None;
        }
        let byte = self.data[(i / 4) as usize];
        Some((byte >> shift(i)) & 3)
    }

    /// Sets object `i` (below `len`) to `state` (0..=3).
    pub fn set(&mut self, i: u64, state: u8) {
        assert!(
            i < self.len && state <= 3,
            "object map index or state out of range"
        );
        let byte = &mut self.data[(i / 4) as usize];
        *byte = (*byte & !(3 << shift(i))) | (state << shift(i));
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(RECORD, bytes);
        let header_at = d.offset() + 4;
        let header = d.blob()?;
        let len = {
            let mut h = Decoder::at(RECORD, header, header_at);
            let len = h.versioned(1, 1, |h, _| h.u64())?;
            h.finish()?;
            len
        };
        let data_at = d.offset();
        // bounded by the bytes present before anything is allocated
        let data_len = usize::try_from(len.div_ceil(4)).unwrap_or(usize::MAX);
        let data = d.take(data_len)?.to_vec();
        let footer_at = d.offset() + 4;
        let footer = d.blob()?;
        d.finish()?;
        let crc_enabled = !footer.is_empty();
        if crc_enabled {
            let mut f = Decoder::at(RECORD, footer, footer_at);
            check_crcs(&mut f, header, &data, data_at)?;
            f.finish()?;
        }
        Ok(ObjectMap {
            len,
            data,
            crc_enabled,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let header = encode_header(self.len);
        let mut e = Encoder::new();
        e.blob(&header);
        e.raw(&self.data);
        let mut footer = Encoder::new();
        if self.crc_enabled {
            footer.u32(ceph_crc32c(0, &header));
            let crcs: Vec<u32> = self.data.chunks(BLOCK).map(|b| ceph_crc32c(0, b)).collect();
            footer.seq(&crcs, |e, c| e.u32(*c));
        }
        e.blob(&footer.into_bytes());
        e.into_bytes()
    }
}

fn shift(i: u64) -> u32 {
    (6 - 2 * (i % 4)) as u32
}

fn encode_header(len: u64) -> Vec<u8> {
    encode_versioned(1, 1, |e| e.u64(len))
}

fn check_crcs(
    f: &mut Decoder<'_>,
    header: &[u8],
    data: &[u8],
    data_at: usize,
) -> Result<(), DecodeError> {
    let stored = f.u32()?;
    let computed = ceph_crc32c(0, header);
    if stored != computed {
        return Err(mismatch(f, "header", stored, computed));
    }
    let count_at = f.offset();
    let count = f.count(4)?;
    let blocks = data.len().div_ceil(BLOCK);
    if count != blocks {
        return Err(DecodeError {
            offset: count_at,
            ..f.invalid("data crc count", count as u64)
        });
    }
    for (i, block) in data.chunks(BLOCK).enumerate() {
        let stored = f.u32()?;
        let computed = ceph_crc32c(0, block);
        if stored != computed {
            let mut err = mismatch(f, "data block", stored, computed);
            // point at the block's first data byte, which is what is wrong
            err.offset = data_at + i * BLOCK;
            return Err(err);
        }
    }
    Ok(())
}

/// A checksum error pointing at the stored crc just read.
fn mismatch(f: &Decoder<'_>, what: &'static str, stored: u32, computed: u32) -> DecodeError {
    let mut err = f.error(DecodeErrorKind::Checksum {
        what,
        stored,
        computed,
    });
    err.offset -= 4;
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_pack_most_significant_pair_first() {
        let mut m = ObjectMap::new(5);
        m.set(0, EXISTS);
        m.set(3, EXISTS_CLEAN);
        m.set(4, PENDING);
        assert_eq!(m.data, [0b0100_0011, 0b1000_0000]);
        assert_eq!(m.get(3), Some(EXISTS_CLEAN));
        assert_eq!(m.get(5), None);
        assert_eq!(ObjectMap::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn many_blocks_each_get_a_crc() {
        let mut m = ObjectMap::new(4 * BLOCK as u64 * 2 + 3);
        m.set(9000, EXISTS);
        let bytes = m.encode();
        assert_eq!(ObjectMap::decode(&bytes).unwrap(), m);
        // flip one state in the second block: its crc catches it, naming the block
        let mut bad = bytes.clone();
        bad[18 + BLOCK + 10] ^= 0x40;
        let err = ObjectMap::decode(&bad).unwrap_err();
        assert_eq!(err.offset, 18 + BLOCK);
        assert!(
            err.to_string().contains("data block crc32c mismatch"),
            "{err}"
        );
    }

    #[test]
    fn huge_length_is_refused_before_allocation() {
        let mut e = Encoder::new();
        e.blob(&encode_header(u64::MAX));
        e.u32(0);
        let err = ObjectMap::decode(&e.into_bytes()).unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::Truncated { .. }));
    }

    #[test]
    fn packed_states_make_the_same_map() {
        let mut m = ObjectMap::new(6);
        m.set(5, EXISTS);
        let again = ObjectMap::from_packed(6, m.packed().to_vec()).unwrap();
        assert_eq!(again.encode(), m.encode());
        assert!(again.crc_enabled());
        assert_eq!(ObjectMap::from_packed(6, vec![0; 3]), None);
    }

    #[test]
    fn crc_of_known_vector() {
        // crc32c("123456789") is 0xe3069283 with the usual init and final inversion.
        assert_eq!(!ceph_crc32c(!0, b"123456789"), 0xe306_9283);
    }
}
