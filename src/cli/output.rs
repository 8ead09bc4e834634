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
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

pub fn opt(s: Option<&String>) -> String {
    s.cloned().unwrap_or_else(|| "-".to_owned())
}
