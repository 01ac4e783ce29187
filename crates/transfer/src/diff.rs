//! One diff, as `rbd export-diff` writes it and export format 2 repeats per snapshot:
//! a banner, 'f' from-snap, 't' to-snap, 'p' protected (v2 only), 's' size, 'w' and 'z'
//! extents, 'e'. Format 2 puts a le64 length after every tag but 'e'; format 1 has none.
//!
//! What each length means, as Ceph's Import.cc reads them (it ignores every length of a tag
//! it knows): 'f'/'t' 4 + name, 's' 8, 'w' 16 + data, 'z' 16, and 'p' 1, the one byte that
//! follows. Pacific's Export.cc writes 'p' with length 8 and still one byte; we accept that
//! and write 1, which every Ceph reads.

use std::io::{Read, Write};

use crate::wire::{put, put_string, put_tag, put_u64, Input};
use crate::{Problem, Result, Tag};

pub const DIFF_BANNER_V1: &[u8] = b"rbd diff v1\n";
pub const DIFF_BANNER_V2: &[u8] = b"rbd diff v2\n";

/// Diff tags, as Ceph's `RBD_DIFF_*` and `RBD_SNAP_PROTECTION_STATUS`.
pub mod tag {
    pub const FROM_SNAP: u8 = b'f';
    pub const TO_SNAP: u8 = b't';
    pub const PROTECTED: u8 = b'p';
    pub const SIZE: u8 = b's';
    pub const WRITE: u8 = b'w';
    pub const ZERO: u8 = b'z';
    pub const END: u8 = b'e';
}

/// The length Pacific writes for 'p' (its payload is one byte all the same).
const PACIFIC_PROTECTED_LEN: u64 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffFormat {
    /// "rbd diff v1": no record lengths, no 'p' (export-diff's default).
    V1,
    /// "rbd diff v2": a le64 length after each tag (export format 2, export-diff
    /// --export-format 2).
    V2,
}

impl DiffFormat {
    pub fn banner(self) -> &'static [u8] {
        match self {
            DiffFormat::V1 => DIFF_BANNER_V1,
            DiffFormat::V2 => DIFF_BANNER_V2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffRecord {
    FromSnap(String),
    ToSnap(String),
    Protected(bool),
    Size(u64),
    /// `len` bytes of data follow; [`DiffReader::data`] reads them.
    Write {
        offset: u64,
        len: u64,
    },
    Zero {
        offset: u64,
        len: u64,
    },
    End,
}

/// Decodes one diff, record by record, holding nothing but the record at hand: a write's
/// data is pulled by the caller in pieces of its choosing.
pub struct DiffReader<'a, R> {
    input: &'a mut Input<R>,
    format: DiffFormat,
    size: u64,
    /// Data of the last 'w' still unread: the image offset of its next byte, bytes left.
    pending: (u64, u64),
}

impl<'a, R: Read> DiffReader<'a, R> {
    /// Reads the banner. `size` is the image's size before the diff: extents must lie inside
    /// the size in force when they come.
    pub fn begin(input: &'a mut Input<R>, format: DiffFormat, size: u64) -> Result<Self> {
        input.banner(format.banner())?;
        Ok(DiffReader {
            input,
            format,
            size,
            pending: (0, 0),
        })
    }

    /// Offset of the next byte of the stream.
    pub fn pos(&self) -> u64 {
        self.input.pos()
    }

    /// The next record, and the offset of its tag. Data of a write not read is skipped.
    pub fn next_record(&mut self) -> Result<(u64, DiffRecord)> {
        self.skip_data()?;
        let at = self.input.pos();
        let t = self.input.tag("a diff record tag")?;
        let record = match t.0 {
            tag::END => DiffRecord::End,
            tag::FROM_SNAP => DiffRecord::FromSnap(self.snap_name()?),
            tag::TO_SNAP => DiffRecord::ToSnap(self.snap_name()?),
            tag::PROTECTED if self.format == DiffFormat::V2 => self.protected()?,
            tag::SIZE => self.size_record()?,
            tag::WRITE | tag::ZERO => self.extent(at, t)?,
            _ => return Err(self.input.corrupt(at, Problem::UnknownTag)),
        };
        Ok((at, record))
    }

    /// Reads the next `buf.len()` bytes of the current write's data (fewer when less is
    /// left; none after the data or outside a write). Returns them and their image offset.
    pub fn data<'b>(&mut self, buf: &'b mut [u8]) -> Result<(u64, &'b [u8])> {
        let (offset, left) = self.pending;
        let n = (buf.len() as u64).min(left) as usize;
        self.input.exact(&mut buf[..n], "extent data")?;
        self.pending = (offset + n as u64, left - n as u64);
        Ok((offset, &buf[..n]))
    }

    fn skip_data(&mut self) -> Result<()> {
        let mut scratch = [0u8; 4096];
        while self.pending.1 > 0 {
            self.data(&mut scratch)?;
        }
        Ok(())
    }

    /// The record length in format 2; nothing in format 1.
    fn length(&mut self) -> Result<Option<(u64, u64)>> {
        if self.format == DiffFormat::V1 {
            return Ok(None);
        }
        let at = self.input.pos();
        Ok(Some((at, self.input.u64("a record length")?)))
    }

    fn snap_name(&mut self) -> Result<String> {
        let len = self.length()?;
        let name = self.input.string("a snapshot name")?;
        if let Some((at, len)) = len {
            if len != 4 + name.len() as u64 {
                return Err(self.input.corrupt(at, Problem::LengthMismatch { len }));
            }
        }
        Ok(name)
    }

    fn protected(&mut self) -> Result<DiffRecord> {
        if let Some((at, len)) = self.length()? {
            if len != 1 && len != PACIFIC_PROTECTED_LEN {
                return Err(self.input.corrupt(at, Problem::Length { len, want: 1 }));
            }
        }
        Ok(DiffRecord::Protected(
            self.input.u8("a protection flag")? != 0,
        ))
    }

    fn size_record(&mut self) -> Result<DiffRecord> {
        if let Some((at, len)) = self.length()? {
            if len != 8 {
                return Err(self.input.corrupt(at, Problem::Length { len, want: 8 }));
            }
        }
        self.size = self.input.u64("an image size")?;
        Ok(DiffRecord::Size(self.size))
    }

    fn extent(&mut self, at: u64, t: Tag) -> Result<DiffRecord> {
        let len = self.length()?;
        let offset = self.input.u64("an extent offset")?;
        let n = self.input.u64("an extent length")?;
        let write = t.0 == tag::WRITE;
        if let Some((len_at, len)) = len {
            let want = if write { n.checked_add(16) } else { Some(16) };
            if want != Some(len) {
                return Err(self.input.corrupt(len_at, Problem::LengthMismatch { len }));
            }
        }
        if offset.checked_add(n).is_none_or(|end| end > self.size) {
            let problem = Problem::Extent {
                offset,
                len: n,
                size: self.size,
            };
            return Err(self.input.corrupt(at, problem));
        }
        if !write {
            return Ok(DiffRecord::Zero { offset, len: n });
        }
        self.pending = (offset, n);
        Ok(DiffRecord::Write { offset, len: n })
    }
}

/// Encodes one diff. Records are written in the order they are called, as rbd writes them:
/// [`DiffWriter::snaps`], [`DiffWriter::size`], extents, [`DiffWriter::end`].
pub struct DiffWriter<'a> {
    out: &'a mut dyn Write,
    format: DiffFormat,
}

impl<'a> DiffWriter<'a> {
    pub fn begin(out: &'a mut dyn Write, format: DiffFormat) -> Result<Self> {
        put(out, format.banner())?;
        Ok(DiffWriter { out, format })
    }

    fn tag(&mut self, t: u8, len: u64) -> Result<()> {
        let len = (self.format == DiffFormat::V2).then_some(len);
        put_tag(self.out, t, len)
    }

    /// 'f' and 't' (with 'p' in format 2) for the snapshots the diff goes from and to.
    pub fn snaps(&mut self, from: Option<&str>, to: Option<(&str, bool)>) -> Result<()> {
        if let Some(name) = from {
            self.tag(tag::FROM_SNAP, 4 + name.len() as u64)?;
            put_string(self.out, name)?;
        }
        if let Some((name, protected)) = to {
            self.tag(tag::TO_SNAP, 4 + name.len() as u64)?;
            put_string(self.out, name)?;
            if self.format == DiffFormat::V2 {
                self.tag(tag::PROTECTED, 1)?;
                put(self.out, &[protected as u8])?;
            }
        }
        Ok(())
    }

    pub fn size(&mut self, size: u64) -> Result<()> {
        self.tag(tag::SIZE, 8)?;
        put_u64(self.out, size)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.tag(tag::WRITE, 16 + data.len() as u64)?;
        put_u64(self.out, offset)?;
        put_u64(self.out, data.len() as u64)?;
        put(self.out, data)
    }

    pub fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.tag(tag::ZERO, 16)?;
        put_u64(self.out, offset)?;
        put_u64(self.out, len)
    }

    pub fn end(self) -> Result<()> {
        put(self.out, &[tag::END])
    }
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
