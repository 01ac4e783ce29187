//! Byte encodings for header and registry values, in Ceph's style: little-endian integers,
//! length-prefixed strings and byte strings, and versioned structs (`u8` version, `u8`
//! compat version, `u32` length) so an older reader can skip fields it does not know.
//!
//! Decoding never trusts a length: every read is bounds-checked and a bad value is an
//! [`Error::Corrupt`] naming what was being decoded.

use crate::{Error, Result};

#[derive(Default)]
pub struct Enc {
    buf: Vec<u8>,
}

impl Enc {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.u64(v as u64)
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(v as u8)
    }
    /// A versioned struct: `body` is written after a header of version, compat and length.
    pub fn versioned(&mut self, version: u8, compat: u8, body: impl FnOnce(&mut Enc)) -> &mut Self {
        let mut inner = Enc::new();
        body(&mut inner);
        self.u8(version).u8(compat).bytes(&inner.buf);
        self
    }
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'a str,
}

impl<'a> Dec<'a> {
    /// `what` names the value in errors ("header key snapshot_0000000000000004").
    pub fn new(buf: &'a [u8], what: &'a str) -> Self {
        Dec { buf, pos: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "{}: truncated at byte {} (needs {n} more)",
                    self.what, self.pos
                ))
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn i64(&mut self) -> Result<i64> {
        Ok(self.u64()? as i64)
    }
    pub fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(Error::Corrupt(format!(
                "{}: bad boolean {v} at byte {}",
                self.what,
                self.pos - 1
            ))),
        }
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn str(&mut self) -> Result<String> {
        let at = self.pos;
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::Corrupt(format!("{}: string at byte {at} is not UTF-8", self.what)))
    }
    /// Opens a versioned struct; fails if its compat version is newer than `known`.
    pub fn versioned(&mut self, known: u8) -> Result<(u8, Dec<'a>)> {
        let version = self.u8()?;
        let compat = self.u8()?;
        if compat > known {
            return Err(Error::Corrupt(format!(
                "{}: encoded with version {version} (compat {compat}), this build reads up to {known}",
                self.what
            )));
        }
        let body = self.bytes()?;
        Ok((
            version,
            Dec {
                buf: body,
                pos: 0,
                what: self.what,
            },
        ))
    }
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }
    /// Fails unless every byte was consumed.
    pub fn done(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Error::Corrupt(format!(
                "{}: {} trailing bytes",
                self.what,
                self.buf.len() - self.pos
            )))
        }
    }
}

pub fn u64_value(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

pub fn decode_u64(buf: &[u8], what: &str) -> Result<u64> {
    let mut d = Dec::new(buf, what);
    let v = d.u64()?;
    d.done()?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let buf = Enc::new()
            .u64(7)
            .str("héllo")
            .versioned(2, 1, |e| {
                e.u32(9).bool(true);
            })
            .finish();
        let mut d = Dec::new(&buf, "t");
        assert_eq!(d.u64().unwrap(), 7);
        assert_eq!(d.str().unwrap(), "héllo");
        let (v, mut inner) = d.versioned(1).unwrap();
        assert_eq!(
            (v, inner.u32().unwrap(), inner.bool().unwrap()),
            (2, 9, true)
        );
        d.done().unwrap();
        for cut in 0..buf.len() {
            let mut d = Dec::new(&buf[..cut], "t");
            let r = (|| -> Result<()> {
                d.u64()?;
                d.str()?;
                let (_, mut i) = d.versioned(1)?;
                i.u32()?;
                i.bool()?;
                Ok(())
            })();
            assert!(matches!(r, Err(Error::Corrupt(_))), "cut at {cut}");
        }
        let mut d = Dec::new(&buf[8 + 4 + 6..], "t");
        assert!(d.versioned(0).is_err(), "newer compat refused");
    }
}
