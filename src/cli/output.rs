//! Printers: aligned text tables and JSON on stdout.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;

/// Writes `value` as pretty JSON and a newline.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Writes rows as left-aligned columns separated by two spaces (the last column unpadded).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = io::stdout().lock();
    let line = |out: &mut io::StdoutLock<'_>, cells: &[String]| -> io::Result<()> {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ", w = widths[i]);
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(
        &mut out,
        &header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    )?;
    for r in rows {
        line(&mut out, r)?;
    }
    Ok(())
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
