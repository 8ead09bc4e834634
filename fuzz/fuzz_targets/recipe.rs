//! Any text as a recipe, TOML or mergekit YAML: a recipe or a one-line error, never a panic,
//! and never a sweep grid built before its size is known.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for path in ["fuzz.toml", "fuzz.yml"] {
        if let Ok(recipe) = crossmerge::recipe::parse_any(Path::new(path), text) {
            // Build the grid only when it is small, as `merge` does.
            if recipe.point_count().is_some_and(|n| n <= 64) {
                let _ = recipe.points();
            }
        }
    }
});
