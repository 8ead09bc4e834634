//! indicatif bars behind the library's `Progress` trait.

use std::sync::Mutex;

use crossmerge::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// Draws a byte bar on stderr for stages of at least `min_bytes`; hidden when stderr is not
/// a terminal or `--quiet` is given.
pub struct Bar {
    current: Mutex<Option<ProgressBar>>,
    enabled: bool,
    min_bytes: u64,
}

impl Bar {
    pub fn new(quiet: bool) -> Self {
        Self {
            current: Mutex::new(None),
            enabled: !quiet,
            min_bytes: 64 << 20,
        }
    }
}

impl Progress for Bar {
    fn start(&self, stage: &str, total: u64) {
        if !self.enabled || total < self.min_bytes {
            return;
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(stage.to_owned());
        *self.current.lock().expect("not poisoned") = Some(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self.current.lock().expect("not poisoned").as_ref() {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.current.lock().expect("not poisoned").take() {
            bar.finish_and_clear();
        }
    }
}

/// Peak resident set size of this process (`VmHWM`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
