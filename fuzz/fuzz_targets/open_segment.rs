//! Arbitrary bytes as one to three segment files: verify, inspect, dump and open (every recovery
//! mode) must never panic; they recover or return a typed error, and a repair is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_journal::fuzzing::open_arbitrary_segments(data);
});
