//! Positioned reading and little-endian writing of the stream's primitives: tags, le64
//! lengths and values, u32-prefixed strings and banners. Every read knows its byte offset,
//! so a corrupt stream is reported where it breaks.

use std::io::{ErrorKind, Read, Write};

use crate::{Error, Problem, Result, Tag};

/// Longest string (snapshot name, metadata key or value) accepted before allocating it.
pub const MAX_STRING: u64 = 1 << 20;

/// Reads until `buf` is full or the stream ends; returns how much was read.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A stream being decoded: the reader, the offset of the next byte, and the record being
/// read (named in errors).
pub struct Input<R> {
    r: R,
    pos: u64,
    record: Option<Tag>,
}

impl<R: Read> Input<R> {
    pub fn new(r: R) -> Self {
        Input {
            r,
            pos: 0,
            record: None,
        }
    }

    /// Offset of the next byte.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Names `record` in the errors that follow, until the next call.
    pub fn set_record(&mut self, record: Option<Tag>) {
        self.record = record;
    }

    /// A corruption at `offset`, in the current record.
    pub fn corrupt(&self, offset: u64, problem: Problem) -> Error {
        Error::corrupt(offset, self.record, problem)
    }

    pub fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        let at = self.pos;
        let n = read_full(&mut self.r, buf).map_err(|source| Error::Read { offset: at, source })?;
        self.pos += n as u64;
        if n < buf.len() {
            return Err(self.corrupt(at, Problem::Truncated(what)));
        }
        Ok(())
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b, what)?;
        Ok(b[0])
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A record's tag; it becomes the current record.
    pub fn tag(&mut self, what: &'static str) -> Result<Tag> {
        self.set_record(None);
        let tag = Tag(self.u8(what)?);
        self.set_record(Some(tag));
        Ok(tag)
    }

    /// A u32-prefixed string, its length bounded before anything is allocated.
    pub fn string(&mut self, what: &'static str) -> Result<String> {
        let at = self.pos;
        let len = self.u32(what)? as u64;
        if len > MAX_STRING {
            let problem = Problem::TooLong {
                what,
                len,
                max: MAX_STRING,
            };
            return Err(self.corrupt(at, problem));
        }
        let mut b = vec![0u8; len as usize];
        self.exact(&mut b, what)?;
        String::from_utf8(b).map_err(|_| self.corrupt(at, Problem::NotUtf8(what)))
    }

    /// `expected`, byte for byte; named without its newline in errors.
    pub fn banner(&mut self, expected: &'static [u8]) -> Result<()> {
        self.set_record(None);
        let name = banner_name(expected);
        let at = self.pos;
        let mut b = vec![0u8; expected.len()];
        self.exact(&mut b, name)?;
        if b != expected {
            return Err(self.corrupt(at, Problem::Banner(name)));
        }
        Ok(())
    }

    /// A fixed record length, which must be `want`.
    pub fn length(&mut self, want: u64) -> Result<()> {
        let at = self.pos;
        let len = self.u64("a record length")?;
        if len != want {
            return Err(self.corrupt(at, Problem::Length { len, want }));
        }
        Ok(())
    }

    /// Whether the stream has ended (reads one byte to tell).
    pub fn at_end(&mut self) -> Result<bool> {
        let mut b = [0u8; 1];
        let at = self.pos;
        let n =
            read_full(&mut self.r, &mut b).map_err(|source| Error::Read { offset: at, source })?;
        self.pos += n as u64;
        Ok(n == 0)
    }
}

fn banner_name(banner: &'static [u8]) -> &'static str {
    let text = std::str::from_utf8(banner).unwrap_or("a banner");
    text.strip_suffix('\n').unwrap_or(text)
}

/// Bytes out; an I/O failure is [`Error::Write`].
pub fn put(out: &mut dyn Write, bytes: &[u8]) -> Result<()> {
    out.write_all(bytes).map_err(Error::Write)
}

pub fn put_u64(out: &mut dyn Write, v: u64) -> Result<()> {
    put(out, &v.to_le_bytes())
}

/// A u32-prefixed string.
pub fn put_string(out: &mut dyn Write, s: &str) -> Result<()> {
    put(out, &(s.len() as u32).to_le_bytes())?;
    put(out, s.as_bytes())
}

/// A tag, then (when `len` is given, as format 2 does) its le64 length.
pub fn put_tag(out: &mut dyn Write, tag: u8, len: Option<u64>) -> Result<()> {
    put(out, &[tag])?;
    match len {
        Some(len) => put_u64(out, len),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_longer_than_the_bound_is_refused_before_allocation() {
        let bytes = u32::MAX.to_le_bytes();
        let mut input = Input::new(&bytes[..]);
        let e = input.string("a metadata key").unwrap_err();
        assert!(
            matches!(
                e,
                Error::Corrupt {
                    offset: 0,
                    problem: Problem::TooLong { .. },
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn truncation_names_the_offset_where_the_item_starts() {
        let bytes = [1u8, 2, 3, 4, 5];
        let mut input = Input::new(&bytes[..]);
        input.u8("a tag").unwrap();
        let e = input.u64("an image size").unwrap_err();
        assert_eq!(
            e.to_string(),
            "export stream corrupt at byte 1: stream ends inside an image size"
        );
    }
}
