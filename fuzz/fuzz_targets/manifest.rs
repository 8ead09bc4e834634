//! Any bytes as a stored manifest: parse or refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = crossmerge::checkpoint::Manifest::parse(data);
});
