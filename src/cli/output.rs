//! Printers: aligned text tables and JSON on stdout.

use std::io::{self, Write};

use serde::Serialize;

/// Writes `value` as pretty JSON and a newline.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Writes rows as left-aligned columns (formatted by [`crossmerge::report::text_table`]).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    io::stdout()
        .lock()
        .write_all(crossmerge::report::text_table(header, rows).as_bytes())
}

/// Bytes in decimal units, as disk tools print them: `1.11 GB`, `87.6 MB`.
pub fn bytes(n: u64) -> String {
    crossmerge::report::decimal_bytes(n)
}

pub fn opt(s: Option<&String>) -> String {
    s.cloned().unwrap_or_else(|| "-".to_owned())
}
