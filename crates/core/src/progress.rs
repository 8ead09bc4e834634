//! How long operations report progress: the CLI draws bars, the library never prints.

/// Receives progress from long operations; the CLI draws bars, the library never prints.
pub trait Progress: Sync {
    /// A stage of `total` bytes begins.
    fn start(&self, _stage: &str, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}
