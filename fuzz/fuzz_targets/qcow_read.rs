//! Any bytes opened as a qcow image (in memory, its own backing file), then `list_snaps` and a
//! few reads at every point: L1/L2 lookups, subclusters and compressed clusters must fail
//! cleanly, never panic, and keep memory bounded.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rbdm_format_qcow::testing::fuzz_read(data));
