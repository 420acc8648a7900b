//! Definition files are untrusted input: parsing arbitrary bytes must never
//! panic, and whatever parses must survive a render and parse unchanged.

#![no_main]

use std::path::Path;

use ferry_core::rcconf::Definition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let workdir = Path::new("/usr/jails");
    if let Ok(d) = Definition::parse_bytes(data, workdir) {
        let text = d.render(workdir);
        let again = Definition::parse(&text, workdir).expect("a rendering parses");
        assert_eq!(again, d, "render then parse changed the definition");
    }
});
