//! Diff records: round trips in both formats, Pacific's 'p', and one corrupt stream per
//! record type, each error naming its offset and tag.

use super::*;
use crate::Error;

/// A diff from s1 to s2 (protected): size 1 MiB, 3 bytes at 4096, a zeroed 8 KiB.
fn sample(format: DiffFormat) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = DiffWriter::begin(&mut out, format).unwrap();
    w.snaps(Some("s1"), Some(("s2", true))).unwrap();
    w.size(1 << 20).unwrap();
    w.write(4096, b"abc").unwrap();
    w.zero(8192, 8192).unwrap();
    w.end().unwrap();
    out
}

/// Every record with its offset; a write's data read in 2-byte pieces.
fn decode(bytes: &[u8], format: DiffFormat) -> Result<Vec<(u64, DiffRecord, Vec<u8>)>> {
    let mut input = Input::new(bytes);
    let mut r = DiffReader::begin(&mut input, format, 0)?;
    let mut out = Vec::new();
    loop {
        let (at, rec) = r.next_record()?;
        let mut data = Vec::new();
        if let DiffRecord::Write { .. } = rec {
            let mut buf = [0u8; 2];
            loop {
                let (_, got) = r.data(&mut buf)?;
                if got.is_empty() {
                    break;
                }
                data.extend_from_slice(got);
            }
        }
        let end = rec == DiffRecord::End;
        out.push((at, rec, data));
        if end {
            return Ok(out);
        }
    }
}

fn corrupt(r: Result<Vec<(u64, DiffRecord, Vec<u8>)>>) -> (u64, Option<u8>, Problem) {
    match r {
        Err(Error::Corrupt {
            offset,
            record,
            problem,
        }) => (offset, record.map(|t| t.0), problem),
        other => panic!("expected a corruption, got {other:?}"),
    }
}

fn records(format: DiffFormat) -> Vec<DiffRecord> {
    let mut v = vec![
        DiffRecord::FromSnap("s1".into()),
        DiffRecord::ToSnap("s2".into()),
    ];
    if format == DiffFormat::V2 {
        v.push(DiffRecord::Protected(true));
    }
    v.extend([
        DiffRecord::Size(1 << 20),
        DiffRecord::Write {
            offset: 4096,
            len: 3,
        },
        DiffRecord::Zero {
            offset: 8192,
            len: 8192,
        },
        DiffRecord::End,
    ]);
    v
}

#[test]
fn roundtrip_both_formats() {
    for format in [DiffFormat::V1, DiffFormat::V2] {
        let got = decode(&sample(format), format).unwrap();
        let recs: Vec<DiffRecord> = got.iter().map(|(_, r, _)| r.clone()).collect();
        assert_eq!(recs, records(format));
        let write = got
            .iter()
            .find(|(_, r, _)| matches!(r, DiffRecord::Write { .. }));
        assert_eq!(write.unwrap().2, b"abc");
    }
}

/// Offset of the first record with tag `t` in the v2 sample.
fn offset_of(t: u8) -> usize {
    let got = decode(&sample(DiffFormat::V2), DiffFormat::V2).unwrap();
    let b = sample(DiffFormat::V2);
    got.iter()
        .map(|(at, _, _)| *at as usize)
        .find(|&at| b[at] == t)
        .unwrap()
}

#[test]
fn pacific_protection_record_with_length_8_is_read() {
    // Pacific 16.2's export: 'p', le64 8, then the one byte of the flag.
    let mut b = DIFF_BANNER_V2.to_vec();
    b.push(b't');
    b.extend_from_slice(&6u64.to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(b"s1");
    b.push(b'p');
    b.extend_from_slice(&8u64.to_le_bytes());
    b.push(1);
    b.push(b's');
    b.extend_from_slice(&8u64.to_le_bytes());
    b.extend_from_slice(&4096u64.to_le_bytes());
    b.push(b'e');
    let got = decode(&b, DiffFormat::V2).unwrap();
    let recs: Vec<DiffRecord> = got.into_iter().map(|(_, r, _)| r).collect();
    assert_eq!(
        recs,
        [
            DiffRecord::ToSnap("s1".into()),
            DiffRecord::Protected(true),
            DiffRecord::Size(4096),
            DiffRecord::End
        ]
    );
    // What we write is what every Ceph reads: length 1.
    let p = offset_of(b'p');
    assert_eq!(sample(DiffFormat::V2)[p + 1..p + 9], 1u64.to_le_bytes());
}

#[test]
fn corrupt_banner() {
    let mut b = sample(DiffFormat::V2);
    b[9] = b'1';
    let (at, rec, p) = corrupt(decode(&b, DiffFormat::V2));
    assert_eq!((at, rec, p), (0, None, Problem::Banner("rbd diff v2")));
}

#[test]
fn corrupt_from_snap_record() {
    let f = offset_of(b'f');
    let mut b = sample(DiffFormat::V2);
    b[f + 1] = 7;
    let (at, rec, p) = corrupt(decode(&b, DiffFormat::V2));
    assert_eq!(
        (at, rec, p),
        (f as u64 + 1, Some(b'f'), Problem::LengthMismatch { len: 7 })
    );
}

#[test]
fn corrupt_to_snap_record() {
    let t = offset_of(b't');
    let mut b = sample(DiffFormat::V2);
    b[t + 10] = 0xff; // the name's length: 0xff02 bytes, more than the stream holds
    let (at, rec, p) = corrupt(decode(&b, DiffFormat::V2));
    assert_eq!(
        (at, rec, p),
        (
            t as u64 + 13,
            Some(b't'),
            Problem::Truncated("a snapshot name")
        )
    );
}

#[test]
fn corrupt_protection_record() {
    let p = offset_of(b'p');
    let mut b = sample(DiffFormat::V2);
    b[p + 1] = 2;
    let (at, rec, prob) = corrupt(decode(&b, DiffFormat::V2));
    assert_eq!(
        (at, rec, prob),
        (
            p as u64 + 1,
            Some(b'p'),
            Problem::Length { len: 2, want: 1 }
        )
    );
    // Format 1 has no 'p' at all.
    let mut v1 = DIFF_BANNER_V1.to_vec();
    v1.extend_from_slice(b"p\x01e");
    let (at, rec, prob) = corrupt(decode(&v1, DiffFormat::V1));
    assert_eq!((at, rec, prob), (12, Some(b'p'), Problem::UnknownTag));
}

#[test]
fn corrupt_size_record() {
    let s = offset_of(b's');
    let mut b = sample(DiffFormat::V2);
    b[s + 1] = 4;
    let (at, rec, p) = corrupt(decode(&b, DiffFormat::V2));
    assert_eq!(
        (at, rec, p),
        (
            s as u64 + 1,
            Some(b's'),
            Problem::Length { len: 4, want: 8 }
        )
    );
}

#[test]
fn corrupt_write_record() {
    let w = offset_of(b'w');
    let mut b = sample(DiffFormat::V2);
    b[w + 1] = 20;
    let (at, rec, p) = corrupt(decode(&b, DiffFormat::V2));
    assert_eq!(
        (at, rec, p),
        (
            w as u64 + 1,
            Some(b'w'),
            Problem::LengthMismatch { len: 20 }
        )
    );
    // Data cut short: named at the data's first byte.
    let b = sample(DiffFormat::V2);
    let cut = &b[..w + 1 + 8 + 16 + 1];
    let (at, rec, p) = corrupt(decode(cut, DiffFormat::V2));
    assert_eq!(
        (at, rec, p),
        (w as u64 + 25, Some(b'w'), Problem::Truncated("extent data"))
    );
}

#[test]
fn corrupt_zero_record() {
    let z = offset_of(b'z');
    let mut b = sample(DiffFormat::V2);
    b[z + 9..z + 17].copy_from_slice(&(1u64 << 20).to_le_bytes()); // offset at the end
    let (at, rec, p) = corrupt(decode(&b, DiffFormat::V2));
    let beyond = Problem::Extent {
        offset: 1 << 20,
        len: 8192,
        size: 1 << 20,
    };
    assert_eq!((at, rec, p), (z as u64, Some(b'z'), beyond));
}

#[test]
fn corrupt_end_record() {
    let mut b = sample(DiffFormat::V2);
    let e = b.len() - 1;
    b[e] = 0;
    let (at, rec, p) = corrupt(decode(&b, DiffFormat::V2));
    assert_eq!((at, rec, p), (e as u64, Some(0), Problem::UnknownTag));
    assert!(Error::corrupt(e as u64, Some(Tag(0)), Problem::UnknownTag)
        .to_string()
        .contains(&format!("at byte {e}, in record 0x00")),);
}

#[test]
fn extents_are_checked_against_the_size_in_force() {
    // No 's' yet and a start size of 0: any extent lies beyond it.
    let mut b = Vec::new();
    let mut w = DiffWriter::begin(&mut b, DiffFormat::V1).unwrap();
    w.write(0, b"x").unwrap();
    w.end().unwrap();
    let (at, rec, p) = corrupt(decode(&b, DiffFormat::V1));
    assert_eq!((at, rec), (12, Some(b'w')));
    assert!(matches!(p, Problem::Extent { size: 0, .. }));
}
