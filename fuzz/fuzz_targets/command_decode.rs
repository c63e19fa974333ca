//! Decodes untrusted bytes as a replicated command, re-encodes it, and applies it to fixture
//! states (an empty one and a fleet with an open cycle at every order step).
//! The oracle is `certfleet_fuzz::checks::check_command`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| certfleet_fuzz::checks::check_command(data));
