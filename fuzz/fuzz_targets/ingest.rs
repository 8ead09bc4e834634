//! Any bytes as a safetensors file: the parser must refuse or accept, never panic, and what it
//! accepts must lie inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = crossmerge::checkpoint::safetensors::parse_bytes(data) {
        for t in &h.tensors {
            assert!(h.data_start + t.end <= data.len() as u64);
        }
    }
});
