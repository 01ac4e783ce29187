//! A qcow header, its extensions and snapshot table come from an untrusted file: any bytes
//! must open or fail with an error, without panicking or allocating by what a field claims.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rbdm_format_qcow::testing::fuzz_header(data));
