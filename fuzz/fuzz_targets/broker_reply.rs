//! beanstalkd's replies come from the network: parsing a reply line or a
//! stats body must never panic, and an accepted reply line is plain ASCII
//! without line breaks (so it cannot smuggle a second reply).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if ferry_broker::fuzzing::parse_reply(data) {
        assert!(data.iter().all(|b| b.is_ascii() && *b != b'\r' && *b != b'\n'));
    }
    ferry_broker::fuzzing::parse_stats(data);
});
