//! Export streams come from files and pipes anyone may have written: decoding any bytes as
//! an export-format-2 image stream, an "rbd diff v1" or an "rbd diff v2" must fail cleanly
//! (an error naming an offset inside the input), never panic, and hold bounded memory.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rbdm_transfer::diff::{DiffFormat, DiffReader, DiffRecord};
use rbdm_transfer::header::{read_diff_count, read_header};
use rbdm_transfer::wire::Input;
use rbdm_transfer::Error;

/// Decodes one diff, reading write data in pieces; returns the size in force at its end.
fn diff(input: &mut Input<&[u8]>, format: DiffFormat, mut size: u64) -> Result<u64, Error> {
    let mut r = DiffReader::begin(input, format, size)?;
    let mut buf = [0u8; 4096];
    loop {
        let (at, rec) = r.next_record()?;
        assert!(at < r.pos());
        match rec {
            DiffRecord::Size(s) => size = s,
            DiffRecord::Zero { offset, len } => assert!(offset + len <= size),
            DiffRecord::Write { offset, len } => {
                assert!(offset + len <= size);
                let mut next = offset;
                loop {
                    let (at, got) = r.data(&mut buf)?;
                    if got.is_empty() {
                        break;
                    }
                    assert_eq!(at, next);
                    next += got.len() as u64;
                }
                assert_eq!(next, offset + len);
            }
            DiffRecord::End => return Ok(size),
            DiffRecord::FromSnap(_) | DiffRecord::ToSnap(_) | DiffRecord::Protected(_) => {}
        }
    }
}

/// An export-format-2 stream: header, diff count, diffs.
fn image(input: &mut Input<&[u8]>) -> Result<(), Error> {
    let header = read_header(input)?;
    header.layout()?;
    let count = read_diff_count(input)?;
    let mut size = 0;
    for _ in 0..count {
        size = diff(input, DiffFormat::V2, size)?;
    }
    Ok(())
}

fn check(r: Result<(), Error>, len: usize) {
    if let Err(Error::Corrupt { offset, .. }) = r {
        assert!(offset <= len as u64, "offset {offset} beyond the input");
    }
}

fuzz_target!(|data: &[u8]| {
    check(image(&mut Input::new(data)), data.len());
    for format in [DiffFormat::V1, DiffFormat::V2] {
        check(
            diff(&mut Input::new(data), format, 0).map(|_| ()),
            data.len(),
        );
    }
});
