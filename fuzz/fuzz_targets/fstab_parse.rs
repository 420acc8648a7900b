//! A jail's fstab lives on shared storage: parsing it must never panic, and
//! no accepted entry may target a path outside the jail.

#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(entries) = ferry_jail::fstab::parse(text, Path::new("fstab")) {
        for e in entries {
            assert!(e.target.is_absolute());
            assert!(!e.target.components().any(|c| c == Component::ParentDir));
        }
    }
});
