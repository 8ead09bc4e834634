//! Where a command finds its registry, and whether it may create one.

use std::path::PathBuf;

use crossmerge::Registry;

pub struct Context {
    pub registry: PathBuf,
    pub quiet: bool,
    /// The registry is the default `./registry`: no `--registry`, no `CROSSMERGE_REGISTRY`.
    pub default_location: bool,
}

impl Context {
    /// The existing registry (read commands never create one).
    pub fn open(&self) -> anyhow::Result<Registry> {
        Ok(Registry::open(&self.registry)?)
    }

    /// The registry a write command writes to: created on first use only at the default
    /// location, and said so; a named folder must have been made with `init`, so a mistyped
    /// path is an error rather than a new registry.
    pub fn open_for_write(&self) -> anyhow::Result<Registry> {
        if self.default_location && !self.registry.join("FORMAT").exists() {
            let reg = Registry::create(&self.registry)?;
            eprintln!("created a new registry at {}", self.registry.display());
            return Ok(reg);
        }
        self.open()
    }
}
