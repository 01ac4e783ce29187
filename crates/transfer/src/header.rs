//! The image header of export format 2: "rbd image v2\n", the 'O', 'T', 'U', 'C' (and 'F')
//! u64 records and 'M' metadata records, ended by 'E'; then the "rbd image diffs v2\n"
//! banner and the number of diffs that follow.

use std::io::{Read, Write};

use rbdm_image::Layout;

use crate::wire::{put, put_string, put_tag, put_u64, Input};
use crate::{Problem, Result, Tag, DIFFS_BANNER, IMAGE_BANNER};

/// Header tags, as Ceph's `RBD_EXPORT_IMAGE_*`.
pub mod tag {
    pub const ORDER: u8 = b'O';
    pub const FEATURES: u8 = b'T';
    pub const STRIPE_UNIT: u8 = b'U';
    pub const STRIPE_COUNT: u8 = b'C';
    /// The image format; rbd does not write it, older streams may carry it (must be 2).
    pub const FORMAT: u8 = b'F';
    pub const META: u8 = b'M';
    pub const END: u8 = b'E';
}

/// Metadata is held until the image exists; this bounds what a stream can make us hold.
pub const MAX_METADATA: u64 = 64 << 20;

/// What the header says about the image. Absent records are `None`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImageHeader {
    pub order: Option<u64>,
    pub features: Option<u64>,
    pub stripe_unit: Option<u64>,
    pub stripe_count: Option<u64>,
    pub meta: Vec<(String, String)>,
    /// Where the layout records are, to name them when the layout is invalid.
    layout_at: Option<(u64, Tag)>,
}

impl ImageHeader {
    /// The layout the records describe, or `None` without an order record.
    pub fn layout(&self) -> Result<Option<Layout>> {
        let Some(order) = self.order else {
            return Ok(None);
        };
        let object_size = 1u64 << order;
        let unit = self.stripe_unit.unwrap_or(object_size);
        let count = self.stripe_count.unwrap_or(1);
        Layout::new(object_size, unit, count)
            .map(Some)
            .map_err(|e| {
                let (at, tag) = self.layout_at.unwrap_or((0, Tag(tag::ORDER)));
                crate::Error::corrupt(at, Some(tag), Problem::Layout(e.to_string()))
            })
    }
}

/// Reads the header, banner to 'E'.
pub fn read_header<R: Read>(input: &mut Input<R>) -> Result<ImageHeader> {
    input.banner(IMAGE_BANNER)?;
    let mut h = ImageHeader::default();
    let mut meta_bytes = 0u64;
    loop {
        let at = input.pos();
        let t = input.tag("a header record tag")?;
        match t.0 {
            tag::END => return Ok(h),
            tag::META => meta_bytes += read_meta(input, &mut h, meta_bytes)?,
            tag::ORDER | tag::FEATURES | tag::STRIPE_UNIT | tag::STRIPE_COUNT | tag::FORMAT => {
                read_u64_record(input, &mut h, at, t)?
            }
            _ => return Err(input.corrupt(at, Problem::UnknownTag)),
        }
    }
}

fn read_u64_record<R: Read>(
    input: &mut Input<R>,
    h: &mut ImageHeader,
    at: u64,
    t: Tag,
) -> Result<()> {
    input.length(8)?;
    let value_at = input.pos();
    let v = input.u64("a header record")?;
    match t.0 {
        tag::ORDER if !(12..=25).contains(&v) => {
            return Err(input.corrupt(value_at, Problem::Order(v)))
        }
        tag::FORMAT if v != 2 => return Err(input.corrupt(value_at, Problem::Format(v))),
        tag::ORDER => h.order = Some(v),
        tag::FEATURES => h.features = Some(v),
        tag::STRIPE_UNIT => h.stripe_unit = Some(v),
        tag::STRIPE_COUNT => h.stripe_count = Some(v),
        _ => {}
    }
    if matches!(t.0, tag::ORDER | tag::STRIPE_UNIT | tag::STRIPE_COUNT) {
        h.layout_at = Some((at, t));
    }
    Ok(())
}

/// One 'M' record: le64 length, then key and value as u32-prefixed strings. Returns the
/// bytes it holds, so the caller can bound the total.
fn read_meta<R: Read>(input: &mut Input<R>, h: &mut ImageHeader, held: u64) -> Result<u64> {
    let len_at = input.pos();
    let len = input.u64("a record length")?;
    if held.saturating_add(len) > MAX_METADATA {
        let problem = Problem::TooMuchMetadata { max: MAX_METADATA };
        return Err(input.corrupt(len_at, problem));
    }
    let start = input.pos();
    let key = input.string("a metadata key")?;
    let value = input.string("a metadata value")?;
    if input.pos() - start != len {
        return Err(input.corrupt(len_at, Problem::LengthMismatch { len }));
    }
    h.meta.push((key, value));
    Ok(len)
}

/// Writes the header as rbd does: order, features, stripe unit and count, metadata, 'E'.
pub fn write_header(
    out: &mut dyn Write,
    layout: &Layout,
    features: u64,
    meta: &[(String, String)],
) -> Result<()> {
    put(out, IMAGE_BANNER)?;
    let values = [
        (tag::ORDER, layout.order() as u64),
        (tag::FEATURES, features),
        (tag::STRIPE_UNIT, layout.stripe_unit),
        (tag::STRIPE_COUNT, layout.stripe_count),
    ];
    for (t, v) in values {
        put_tag(out, t, Some(8))?;
        put_u64(out, v)?;
    }
    for (k, v) in meta {
        put_tag(out, tag::META, Some(8 + k.len() as u64 + v.len() as u64))?;
        put_string(out, k)?;
        put_string(out, v)?;
    }
    put(out, &[tag::END])
}

/// The banner before the diffs, and their number.
pub fn read_diff_count<R: Read>(input: &mut Input<R>) -> Result<u64> {
    input.banner(DIFFS_BANNER)?;
    input.u64("the number of diffs")
}

pub fn write_diff_count(out: &mut dyn Write, count: u64) -> Result<()> {
    put(out, DIFFS_BANNER)?;
    put_u64(out, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn header_bytes() -> Vec<u8> {
        let layout = Layout::new(1 << 22, 1 << 16, 4).unwrap();
        let meta = [("k".to_string(), "value".to_string())];
        let mut out = Vec::new();
        write_header(&mut out, &layout, 61, &meta).unwrap();
        out
    }

    fn decode(bytes: &[u8]) -> Result<ImageHeader> {
        read_header(&mut Input::new(bytes))
    }

    /// The corruption's offset and record, or a panic naming what came instead.
    fn corrupt_at(r: Result<ImageHeader>) -> (u64, Option<u8>, Problem) {
        match r {
            Err(Error::Corrupt {
                offset,
                record,
                problem,
            }) => (offset, record.map(|t| t.0), problem),
            other => panic!("expected a corruption, got {other:?}"),
        }
    }

    #[test]
    fn roundtrip() {
        let h = decode(&header_bytes()).unwrap();
        assert_eq!(
            (h.order, h.features, h.stripe_unit, h.stripe_count),
            (Some(22), Some(61), Some(1 << 16), Some(4))
        );
        assert_eq!(h.meta, [("k".to_string(), "value".to_string())]);
        let layout = h.layout().unwrap().unwrap();
        assert_eq!((layout.object_size, layout.stripe_count), (1 << 22, 4));
    }

    // One corrupt stream per header record type; each error names its offset and tag.

    #[test]
    fn corrupt_banner() {
        let mut b = header_bytes();
        b[3] = b'X';
        let (at, rec, p) = corrupt_at(decode(&b));
        assert_eq!((at, rec, p), (0, None, Problem::Banner("rbd image v2")));
    }

    #[test]
    fn corrupt_order_record() {
        let mut b = header_bytes();
        let o = IMAGE_BANNER.len();
        b[o + 9] = 40; // the order value
        let (at, rec, p) = corrupt_at(decode(&b));
        assert_eq!((at, rec, p), (o as u64 + 9, Some(b'O'), Problem::Order(40)));
    }

    #[test]
    fn corrupt_features_record_length() {
        let mut b = header_bytes();
        let t = IMAGE_BANNER.len() + 17;
        assert_eq!(b[t], b'T');
        b[t + 1] = 9;
        let (at, rec, p) = corrupt_at(decode(&b));
        assert_eq!(
            (at, rec, p),
            (
                t as u64 + 1,
                Some(b'T'),
                Problem::Length { len: 9, want: 8 }
            )
        );
    }

    #[test]
    fn corrupt_stripe_records_give_an_invalid_layout() {
        let mut b = header_bytes();
        let c = IMAGE_BANNER.len() + 17 * 3;
        assert_eq!(b[c], b'C');
        b[c + 9..c + 17].copy_from_slice(&0u64.to_le_bytes());
        let h = decode(&b).unwrap();
        match h.layout() {
            Err(Error::Corrupt {
                offset,
                record: Some(Tag(b'C')),
                problem: Problem::Layout(_),
            }) => assert_eq!(offset, c as u64),
            other => panic!("{other:?}"),
        }
        let u = IMAGE_BANNER.len() + 17 * 2;
        let mut b = header_bytes();
        assert_eq!(b[u], b'U');
        b.truncate(u + 12);
        let (at, rec, p) = corrupt_at(decode(&b));
        assert_eq!((at, rec), (u as u64 + 9, Some(b'U')));
        assert_eq!(p, Problem::Truncated("a header record"));
    }

    #[test]
    fn corrupt_metadata_record() {
        let mut b = header_bytes();
        let m = IMAGE_BANNER.len() + 17 * 4;
        assert_eq!(b[m], b'M');
        b[m + 1] += 1;
        let (at, rec, p) = corrupt_at(decode(&b));
        assert_eq!(
            (at, rec, p),
            (
                m as u64 + 1,
                Some(b'M'),
                Problem::LengthMismatch { len: 15 }
            )
        );
        let mut b = header_bytes();
        b[m + 1..m + 9].copy_from_slice(&u64::MAX.to_le_bytes());
        let (at, rec, p) = corrupt_at(decode(&b));
        assert_eq!((at, rec), (m as u64 + 1, Some(b'M')));
        assert_eq!(p, Problem::TooMuchMetadata { max: MAX_METADATA });
    }

    #[test]
    fn corrupt_format_record() {
        let mut b = IMAGE_BANNER.to_vec();
        b.push(b'F');
        b.extend_from_slice(&8u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'E');
        let (at, rec, p) = corrupt_at(decode(&b));
        assert_eq!((at, rec, p), (22, Some(b'F'), Problem::Format(1)));
    }

    #[test]
    fn corrupt_end_record() {
        let mut b = header_bytes();
        let end = b.len() - 1;
        b[end] = b'X';
        let (at, rec, p) = corrupt_at(decode(&b));
        assert_eq!((at, rec, p), (end as u64, Some(b'X'), Problem::UnknownTag));
        b.truncate(end);
        let (at, rec, p) = corrupt_at(decode(&b));
        assert_eq!(
            (at, rec, p),
            (end as u64, None, Problem::Truncated("a header record tag"))
        );
    }

    #[test]
    fn corrupt_diff_count() {
        let mut b = Vec::new();
        write_diff_count(&mut b, 3).unwrap();
        b.truncate(b.len() - 2);
        let e = read_diff_count(&mut Input::new(&b[..])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("export stream corrupt at byte 19:"),
            "{e}"
        );
    }
}
