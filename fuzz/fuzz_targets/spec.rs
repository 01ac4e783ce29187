//! Source-specs come from users and files: any bytes must parse to a spec or to an error
//! naming where, never a panic; and whatever parses must serialise back to the same spec.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rbdm_spec::{mask_secrets, SourceSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        let _ = SourceSpec::parse(text);
        return;
    };
    let _ = mask_secrets(&v);
    if let Ok(spec) = SourceSpec::from_json(&v) {
        let again = SourceSpec::from_json(&spec.to_json()).expect("a parsed spec re-parses");
        assert_eq!(again, spec);
    }
});
