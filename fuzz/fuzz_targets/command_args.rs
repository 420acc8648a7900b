//! Command arguments are untrusted input (a broker job's `CommandArgs`, or
//! words from a caller): typing them must never panic, whatever the bytes.

#![no_main]

use ferry_api::{Command, RawArgs, COMMANDS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let name = COMMANDS[usize::from(pick) % COMMANDS.len()].name;
    // As a broker job body's CommandArgs ...
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) {
        if let Ok(raw) = RawArgs::from_json(&v) {
            let _ = Command::parse(name, raw);
        }
    }
    // ... and as command-line words.
    let text = String::from_utf8_lossy(rest);
    if let Ok(raw) = RawArgs::from_words(text.split(' ')) {
        let _ = Command::parse(name, raw);
    }
});
