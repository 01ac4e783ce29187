//! Ceph's `encoding.h` primitives: little-endian integers, u32-length strings and blobs,
//! optionals, counted containers, and ENCODE_START/DECODE_START versioned structs.

use crate::error::{DecodeError, DecodeErrorKind};

/// The version pair a versioned struct was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StructVersion {
    /// struct_v: the encoder's version.
    pub v: u8,
    /// struct_compat: the oldest decoder that can read it.
    pub compat: u8,
}

/// Reads one record's bytes; every error names the record and the absolute byte offset.
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    record: &'static str,
}

impl<'a> Decoder<'a> {
    /// A decoder over a whole value, for errors naming `record`.
    pub fn new(record: &'static str, buf: &'a [u8]) -> Self {
        Decoder {
            buf,
            pos: 0,
            base: 0,
            record,
        }
    }

    /// A decoder over `buf`, a part of a value starting at byte `base` of it, so errors
    /// still give offsets into the whole value.
    pub fn at(record: &'static str, buf: &'a [u8], base: usize) -> Self {
        Decoder {
            buf,
            pos: 0,
            base,
            record,
        }
    }

    /// Offset of the next byte within the whole value.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// An error at the current offset.
    pub fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            record: self.record,
            offset: self.offset(),
            kind,
        }
    }

    /// An `InvalidValue` error for `field` at the current offset.
    pub fn invalid(&self, field: &'static str, value: u64) -> DecodeError {
        self.error(DecodeErrorKind::InvalidValue { field, value })
    }

    /// An `InvalidValue` error for the byte `value` just read as `field`.
    pub fn invalid_byte(&self, field: &'static str, value: u8) -> DecodeError {
        let mut err = self.invalid(field, value.into());
        err.offset -= 1;
        err
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.error(DecodeErrorKind::Truncated {
                need: n,
                have: self.remaining(),
            }));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A bool is one byte; Ceph's encoder only writes 0 or 1, so anything else is corruption
    /// (accepting it would make the record re-encode differently).
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        let at = self.offset();
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError {
                record: self.record,
                offset: at,
                kind: DecodeErrorKind::InvalidValue {
                    field: "bool",
                    value: v.into(),
                },
            }),
        }
    }

    /// A u32 length then that many bytes (`bufferlist` / `std::string`).
    pub fn blob(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A `std::string`; rbd's names, ids and keys are UTF-8, anything else is refused.
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let at = self.offset();
        let bytes = self.blob()?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError {
                record: self.record,
                offset: at,
                kind: DecodeErrorKind::InvalidValue {
                    field: "UTF-8 string",
                    value: bytes.len() as u64,
                },
            }),
        }
    }

    /// `std::optional<T>`: a bool, then T when present.
    pub fn optional<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        if self.bool()? {
            Ok(Some(f(self)?))
        } else {
            Ok(None)
        }
    }

    /// A container's u32 element count, refused when `count * min_elem_bytes` exceeds what is
    /// left, so a corrupt count can never drive a large allocation.
    pub fn count(&mut self, min_elem_bytes: usize) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        let need = count.saturating_mul(min_elem_bytes.max(1));
        if need > self.remaining() {
            return Err(self.error(DecodeErrorKind::Truncated {
                need,
                have: self.remaining(),
            }));
        }
        Ok(count)
    }

    /// `count` then each element decoded by `f`.
    pub fn vec<T>(
        &mut self,
        min_elem_bytes: usize,
        mut f: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.count(min_elem_bytes)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(f(self)?);
        }
        Ok(out)
    }

    /// DECODE_START/DECODE_FINISH: struct_v, struct_compat, u32 struct_len, then the body,
    /// decoded by `f` (given the versions) within exactly struct_len bytes. Bytes the body leaves
    /// are a newer version's fields and are skipped, as Ceph does. A compat version above
    /// `supported`, or a version below `min`, is an error.
    pub fn versioned<T>(
        &mut self,
        supported: u8,
        min: u8,
        f: impl FnOnce(&mut Decoder<'a>, StructVersion) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        let struct_v = self.u8()?;
        let compat_at = self.offset();
        let compat = self.u8()?;
        if compat > supported {
            return Err(DecodeError {
                record: self.record,
                offset: compat_at,
                kind: DecodeErrorKind::UnsupportedVersion { compat, supported },
            });
        }
        if struct_v < min {
            return Err(DecodeError {
                record: self.record,
                offset: compat_at - 1,
                kind: DecodeErrorKind::VersionTooOld {
                    version: struct_v,
                    min,
                },
            });
        }
        let len = self.u32()? as usize;
        let base = self.offset();
        let body = self.take(len)?;
        let mut inner = Decoder {
            buf: body,
            pos: 0,
            base,
            record: self.record,
        };
        f(
            &mut inner,
            StructVersion {
                v: struct_v,
                compat,
            },
        )
    }

    /// Demands that the value is fully consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(self.error(DecodeErrorKind::TrailingBytes { extra })),
        }
    }
}

/// Decodes a whole value that `f` must consume entirely (nothing may follow it).
pub fn whole<'a, T>(
    record: &'static str,
    bytes: &'a [u8],
    f: impl FnOnce(&mut Decoder<'a>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut d = Decoder::new(record, bytes);
    let v = f(&mut d)?;
    d.finish()?;
    Ok(v)
}

/// Decodes a whole value that is one versioned struct (DECODE_START..DECODE_FINISH with
/// nothing after it), so a record's `f` reads only its fields; see [`Decoder::versioned`].
pub fn decode_versioned<'a, T>(
    record: &'static str,
    bytes: &'a [u8],
    supported: u8,
    min: u8,
    f: impl FnOnce(&mut Decoder<'a>, StructVersion) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    whole(record, bytes, |d| d.versioned(supported, min, f))
}

/// Declares a Ceph enumeration stored as one byte, with a `decode` that names `field` when
/// the byte is outside it.
macro_rules! byte_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident ($field:literal) {
        $($var:ident = $val:literal),+ $(,)?
    }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($var = $val),+
        }

        impl $name {
            pub(crate) fn decode(
                d: &mut $crate::denc::Decoder<'_>,
            ) -> Result<Self, $crate::DecodeError> {
                match d.u8()? {
                    $($val => Ok(Self::$var),)+
                    v => Err(d.invalid_byte($field, v)),
                }
            }
        }
    };
}
pub(crate) use byte_enum;

/// Writes one record in Ceph's encoding.
#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.raw(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.raw(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.raw(&v.to_le_bytes());
    }

    pub fn i64(&mut self, v: i64) {
        self.raw(&v.to_le_bytes());
    }

    pub fn bool(&mut self, v: bool) {
        self.u8(v.into());
    }

    /// A u32 length then the bytes.
    ///
    /// # Panics
    /// When `bytes` is 4 GiB or more, which no RBD record can be.
    pub fn blob(&mut self, bytes: &[u8]) {
        self.u32(len_u32(bytes.len()));
        self.raw(bytes);
    }

    pub fn string(&mut self, s: &str) {
        self.blob(s.as_bytes());
    }

    pub fn optional<T>(&mut self, v: Option<&T>, f: impl FnOnce(&mut Self, &T)) {
        self.bool(v.is_some());
        if let Some(v) = v {
            f(self, v);
        }
    }

    /// A container's count then each element.
    pub fn seq<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Self, &T)) {
        self.u32(len_u32(items.len()));
        for item in items {
            f(self, item);
        }
    }

    /// ENCODE_START(v, compat)/ENCODE_FINISH: the header, then the body `f` writes, with its
    /// length patched in afterwards.
    pub fn versioned(&mut self, v: u8, compat: u8, f: impl FnOnce(&mut Self)) {
        self.u8(v);
        self.u8(compat);
        let len_at = self.buf.len();
        self.u32(0);
        f(self);
        let len = len_u32(self.buf.len() - len_at - 4);
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Encodes a whole value that is one versioned struct (ENCODE_START(v, compat)..ENCODE_FINISH),
/// so a record's `f` writes only its fields; see [`Encoder::versioned`].
pub fn encode_versioned(v: u8, compat: u8, f: impl FnOnce(&mut Encoder)) -> Vec<u8> {
    let mut e = Encoder::new();
    e.versioned(v, compat, f);
    e.into_bytes()
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("RBD record field longer than 4 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_roundtrip_and_skips_newer_fields() {
        let mut e = Encoder::new();
        e.versioned(3, 1, |e| {
            e.u32(7);
            e.u8(0xaa); // a field only version 3 has
        });
        let bytes = e.into_bytes();
        assert_eq!(bytes, [3, 1, 5, 0, 0, 0, 7, 0, 0, 0, 0xaa]);
        let mut d = Decoder::new("t", &bytes);
        let v = d.versioned(2, 1, |d, v| Ok((v.v, d.u32()?))).unwrap();
        assert_eq!(v, (3, 7));
        d.finish().unwrap();
    }

    #[test]
    fn compat_newer_than_supported_is_refused() {
        let bytes = [9, 9, 0, 0, 0, 0];
        let err = Decoder::new("t", &bytes)
            .versioned(8, 1, |_, _| Ok(()))
            .unwrap_err();
        assert_eq!(err.offset, 1);
        assert!(matches!(
            err.kind,
            DecodeErrorKind::UnsupportedVersion { compat: 9, .. }
        ));
    }

    #[test]
    fn struct_len_beyond_the_value_is_truncation() {
        let bytes = [1, 1, 0xff, 0xff, 0xff, 0xff, 0];
        let err = Decoder::new("t", &bytes)
            .versioned(1, 1, |_, _| Ok(()))
            .unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::Truncated { .. }));
    }

    #[test]
    fn huge_count_is_refused_before_allocation() {
        let bytes = [0xff, 0xff, 0xff, 0x7f, 1, 2];
        let err = Decoder::new("t", &bytes).vec(1, |d| d.u8()).unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::Truncated { .. }));
    }

    #[test]
    fn errors_carry_absolute_offsets_inside_nested_structs() {
        // outer v1 { u32, inner v1 { u64 truncated } }
        let bytes = [1, 1, 10, 0, 0, 0, 5, 0, 0, 0, 1, 1, 0, 0, 0, 0];
        let err = Decoder::new("t", &bytes)
            .versioned(1, 1, |d, _| {
                d.u32()?;
                d.versioned(1, 1, |d, _| d.u64())
            })
            .unwrap_err();
        assert_eq!(err.offset, 16);
        assert_eq!(
            err.to_string(),
            "t: truncated: need 8 bytes, 0 left at byte 16"
        );
    }

    #[test]
    fn bool_other_than_zero_or_one_is_refused() {
        let err = Decoder::new("t", &[2]).bool().unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::InvalidValue { .. }));
    }

    #[test]
    fn non_utf8_string_is_refused() {
        let err = Decoder::new("t", &[1, 0, 0, 0, 0xff]).string().unwrap_err();
        assert_eq!(err.offset, 0);
    }
}
