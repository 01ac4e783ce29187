//! Image headers are read from the store's omap, which another process (or a damaged disk)
//! may have written: decoding any key/value set must fail cleanly or round-trip.
#![no_main]
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rbdm_image::header::Header;

fuzz_target!(|data: &[u8]| {
    // Input: records of [key len u8][key][value len u8][value].
    let mut keys = BTreeMap::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let kl = rest[0] as usize;
        if rest.len() < 1 + kl + 1 {
            break;
        }
        let key = String::from_utf8_lossy(&rest[1..1 + kl]).into_owned();
        let vl = rest[1 + kl] as usize;
        let start = 2 + kl;
        let end = (start + vl).min(rest.len());
        keys.insert(key, rest[start..end].to_vec());
        rest = &rest[end..];
    }
    if let Ok(h) = Header::from_keys(&keys) {
        let again = Header::from_keys(&h.to_keys()).expect("re-decodes");
        assert_eq!(again, h);
    }
});
