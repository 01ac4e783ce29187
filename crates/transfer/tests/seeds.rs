//! The fuzz seeds (fuzz/seeds/export_format, cut from real `rbdm export --export-format 2`
//! output) decode whole: a seed that no longer parses would leave the fuzzer starting from
//! nothing. A Pacific-form seed ('p' with length 8) must decode as well.

use std::path::PathBuf;

use rbdm_transfer::diff::{DiffFormat, DiffReader, DiffRecord};
use rbdm_transfer::header::{read_diff_count, read_header};
use rbdm_transfer::wire::Input;

fn diff(input: &mut Input<&[u8]>, format: DiffFormat, mut size: u64) -> (u64, Vec<DiffRecord>) {
    let mut r = DiffReader::begin(input, format, size).unwrap();
    let mut records = Vec::new();
    loop {
        let (_, rec) = r.next_record().unwrap();
        if let DiffRecord::Size(s) = rec {
            size = s;
        }
        if rec == DiffRecord::End {
            return (size, records);
        }
        records.push(rec);
    }
}

#[test]
fn every_seed_decodes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/export_format");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let mut input = Input::new(&bytes[..]);
        match path.extension().and_then(|e| e.to_str()) {
            Some("v2") => {
                read_header(&mut input).unwrap().layout().unwrap();
                let mut size = 0;
                let mut protected = Vec::new();
                for _ in 0..read_diff_count(&mut input).unwrap() {
                    let (s, recs) = diff(&mut input, DiffFormat::V2, size);
                    size = s;
                    protected.extend(recs.into_iter().filter_map(|r| match r {
                        DiffRecord::Protected(p) => Some(p),
                        _ => None,
                    }));
                }
                assert!(input.at_end().unwrap(), "{}", path.display());
                if path.to_string_lossy().contains("snaps")
                    || path.to_string_lossy().contains("pacific")
                {
                    assert_eq!(protected, [true, false], "{}", path.display());
                }
            }
            Some("v2diff") => drop(diff(&mut input, DiffFormat::V2, 0)),
            Some("v1diff") => drop(diff(&mut input, DiffFormat::V1, 0)),
            _ => panic!("unexpected seed {}", path.display()),
        }
        seen += 1;
    }
    assert!(seen >= 9, "seeds missing from {}", dir.display());
}
