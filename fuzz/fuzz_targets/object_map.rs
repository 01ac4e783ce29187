//! The object map decoder reads bytes from the store: a torn or corrupt map must be an error,
//! never a panic or a huge allocation, and whatever decodes must re-encode to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rbdm_extent::ObjectMap;

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = ObjectMap::decode(data) {
        assert_eq!(map.encode(), data);
    }
});
