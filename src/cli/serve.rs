//! `crossmerge serve`: the read-only web page and JSON API (the `crossmerge-web` crate).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::commands::Context;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The address to listen on. The default is loopback only; any other address shows the
    /// registry to the network (there is no authentication).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The port (0 picks a free one; the address is printed either way).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// A study's output folder (what `crossmerge study --out DIR` wrote) to show; repeatable.
    #[arg(long = "study", value_name = "DIR")]
    studies: Vec<PathBuf>,
}

pub fn serve(ctx: &Context, a: &ServeArgs) -> anyhow::Result<ExitCode> {
    let opts = crossmerge_web::ServeOptions {
        registry: ctx.registry.clone(),
        host: a.host,
        port: a.port,
        studies: a.studies.clone(),
    };
    crossmerge_web::serve(&opts, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "serving {} read-only at http://{addr}/ (Ctrl-C stops)",
            opts.registry.display()
        );
        let _ = out.flush();
    })?;
    Ok(ExitCode::SUCCESS)
}
