//! The `crossmerge` binary: parse, run, print, exit code. Nothing else lives here.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
