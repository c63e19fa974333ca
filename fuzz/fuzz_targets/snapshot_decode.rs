//! Reads untrusted bytes as a snapshot stream, fed in chunks whose length (and an optional
//! checksum repair) the first byte selects, then round-trips any state it yields.
//! The oracle is `certfleet_fuzz::checks::check_snapshot`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| certfleet_fuzz::checks::check_snapshot(data));
