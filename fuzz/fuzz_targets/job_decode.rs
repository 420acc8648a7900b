//! A broker job's body is untrusted input from anyone who can reach the
//! broker: decoding it (plain or in a signed envelope, with and without a
//! key) must never panic, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_agent::fuzzing::decode(data);
});
