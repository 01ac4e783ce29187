//! The NBD client parses whatever a server sends: option replies during negotiation, READ
//! reply chunks (data, holes, errors), block status. Any byte string as the server's side of
//! the conversation must end in success or an error: no panic, no huge allocation, no hang.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rbdm_stream_nbd::client::fuzz_client(data);
});
