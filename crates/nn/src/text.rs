//! Plain text for masked-LM perplexity: one paragraph per line; blank lines are skipped.

use std::path::Path;

use crate::error::{Error, Result};

/// The non-empty lines of a UTF-8 text file.
pub fn read(path: &Path) -> Result<Vec<String>> {
    let bytes = crate::read_data(path)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::bad_input(path, "is not UTF-8", "give UTF-8 text, a paragraph a line")
    })?;
    let out: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if out.is_empty() {
        return Err(Error::bad_input(
            path,
            "has no text",
            "give UTF-8 text, a paragraph a line",
        ));
    }
    Ok(out)
}
