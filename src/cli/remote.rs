//! `remote add/list/remove`, `push`, `pull` and `ls-remote`: registries shared through an
//! object store (S3) or a shared file system.
#![allow(clippy::doc_markdown)] // clap help text, shown as written (URLs, variable names)

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use crossmerge::store::remote::RemoteConfig;

use super::commands::Context;
use super::output;
use super::progress::Bar;

#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Add a remote: s3://BUCKET/PREFIX or file:///PATH (checked, not contacted).
    Add(RemoteAddArgs),
    /// List the remotes.
    List(RemoteListArgs),
    /// Forget a remote (nothing on it changes).
    Remove(RemoteRemoveArgs),
}

#[derive(Args, Debug)]
pub struct RemoteAddArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The remote's name here (`origin`, `cluster`).
    name: String,
    /// s3://BUCKET/PREFIX (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) or
    /// file:///ABSOLUTE/PATH.
    url: String,
    /// An S3 endpoint other than AWS's (MinIO, Ceph, a test server): http(s)://HOST[:PORT].
    #[arg(long)]
    endpoint: Option<String>,
    /// Allow plain HTTP to the endpoint (servers on loopback).
    #[arg(long)]
    allow_http: bool,
}

#[derive(Args, Debug)]
pub struct RemoteListArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct RemoteRemoveArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The remote to forget.
    name: String,
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The remote (`crossmerge remote list`).
    remote: String,
    /// Checkpoints (`name`, `name@version` or an id prefix; their bases come along) or vectors
    /// (`name`, `name@version`; their two checkpoints come along, and a pulled vector is
    /// derived again from them).
    #[arg(required = true)]
    references: Vec<String>,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct LsRemoteArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The remote (`crossmerge remote list`).
    remote: String,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

impl RemoteCommand {
    pub fn reg(&self) -> &super::RegistryArg {
        match self {
            RemoteCommand::Add(a) => &a.reg,
            RemoteCommand::List(a) => &a.reg,
            RemoteCommand::Remove(a) => &a.reg,
        }
    }
}

pub fn remote(ctx: &Context, c: &RemoteCommand) -> anyhow::Result<ExitCode> {
    let reg = ctx.open()?;
    match c {
        RemoteCommand::Add(a) => {
            reg.remote_add(&RemoteConfig {
                name: a.name.clone(),
                url: a.url.clone(),
                endpoint: a.endpoint.clone(),
                allow_http: a.allow_http,
            })?;
            eprintln!("added remote {} ({})", a.name, a.url);
        }
        RemoteCommand::Remove(a) => {
            reg.remote_remove(&a.name)?;
            eprintln!("removed remote {}", a.name);
        }
        RemoteCommand::List(a) => {
            let remotes = reg.remotes()?;
            if a.json {
                let rows: Vec<serde_json::Value> = remotes
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "name": r.name, "url": r.url,
                            "endpoint": r.endpoint, "allow_http": r.allow_http,
                        })
                    })
                    .collect();
                output::json(&rows)?;
            } else {
                let mut out = io::stdout().lock();
                for r in &remotes {
                    let endpoint = r
                        .endpoint
                        .as_ref()
                        .map(|e| format!(" (endpoint {e})"))
                        .unwrap_or_default();
                    writeln!(out, "{}\t{}{endpoint}", r.name, r.url)?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn push(ctx: &Context, a: &TransferArgs) -> anyhow::Result<ExitCode> {
    let reg = ctx.open()?;
    let r = reg.push(&a.remote, &a.references, &Bar::new(ctx.quiet))?;
    if a.json {
        output::json(&r)?;
    } else {
        let vectors = and_vectors(&r.vectors);
        println!(
            "pushed {}{vectors} to {}: {} objects sent ({}), {} already there, {} records",
            r.checkpoints.join(", "),
            r.remote,
            r.objects_sent,
            output::bytes(r.bytes_sent),
            r.objects_present,
            r.records_sent
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pull(ctx: &Context, a: &TransferArgs) -> anyhow::Result<ExitCode> {
    let mut reg = ctx.open()?;
    let r = reg.pull(&a.remote, &a.references, &Bar::new(ctx.quiet))?;
    if a.json {
        output::json(&r)?;
    } else {
        let vectors = and_vectors(&r.vectors);
        println!(
            "pulled {}{vectors} from {}: {} objects received ({}), {} already here",
            r.checkpoints.join(", "),
            r.remote,
            r.objects_received,
            output::bytes(r.bytes_received),
            r.present.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn ls_remote(ctx: &Context, a: &LsRemoteArgs) -> anyhow::Result<ExitCode> {
    let reg = ctx.open()?;
    let rows = reg.ls_remote(&a.remote)?;
    if a.json {
        output::json(&rows)?;
    } else {
        let table: Vec<Vec<String>> = rows
            .checkpoints
            .iter()
            .map(|r| {
                vec![
                    format!("{}@{}", r.name, r.version),
                    r.kind.clone(),
                    r.manifest_id[..12].to_owned(),
                    r.base.clone().unwrap_or_else(|| "-".into()),
                    r.language.clone().unwrap_or_else(|| "-".into()),
                    r.task.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        output::table(
            &["checkpoint", "kind", "id", "base", "language", "task"],
            &table,
        )?;
        if !rows.vectors.is_empty() {
            println!();
            let table: Vec<Vec<String>> = rows
                .vectors
                .iter()
                .map(|v| {
                    vec![
                        format!("{}@{}", v.name, v.version),
                        v.kind.clone(),
                        v.from.clone(),
                        v.minus.clone(),
                    ]
                })
                .collect();
            output::table(&["vector", "kind", "from", "minus"], &table)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// ` and vectors a@1, b@2`, or nothing.
fn and_vectors(vectors: &[String]) -> String {
    if vectors.is_empty() {
        String::new()
    } else {
        format!(" and vectors {}", vectors.join(", "))
    }
}
