//! `cargo xtask bench --suite serve`: `crossmerge serve` under load, on loopback only.
//!
//! A registry of the xlm-roberta-base-shaped synthetic family (base, three fine-tunes, two
//! vectors, one merge) is served by the release binary; `wrk` (Debian's package) runs 64
//! connections for `--serve-seconds` (30) against the checkpoint list, a checkpoint page (its
//! ~200 tensors), and, as the bound measured in the same run, the static stylesheet (the same
//! server and HTTP stack, no registry read). Runs are interleaved; medians are reported.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};
use crossmerge_synth::{FamilySpec, Shape, write_family};
use serde::Serialize;

use crate::bench::BenchArgs;

/// What one `wrk` run measured.
#[derive(Clone, Debug, Default, Serialize)]
struct Load {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Non-2xx/3xx responses plus socket errors.
    errors: u64,
}

#[derive(Debug, Serialize)]
struct Figures {
    connections: u32,
    seconds: u32,
    runs: usize,
    checkpoints: usize,
    /// Medians over runs, per page.
    pages: Vec<(String, Load)>,
    /// Each page's requests/s ÷ the stylesheet's (the same server without a registry read).
    ratio_to_static: Vec<(String, f64)>,
}

/// Kills the server on drop.
struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cm(exe: &Path, reg: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(exe)
        .arg("--registry")
        .arg(reg)
        .arg("--quiet")
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "crossmerge {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The served registry, made once under the work folder and reused.
fn registry(exe: &Path, workdir: &Path) -> anyhow::Result<PathBuf> {
    let reg = workdir.join("serve-registry");
    if reg.join("done").exists() {
        return Ok(reg);
    }
    let _ = std::fs::remove_dir_all(&reg);
    let shape = Shape::by_name("xlmr-base").context("the xlmr-base shape")?;
    let family = workdir.join("family-serve");
    eprintln!("generating the family in {}", family.display());
    let paths = write_family(&family, &FamilySpec::new(shape, 3).head_labels(Some(9)))?;
    let p = |i: usize| paths[i].to_str().unwrap_or_default().to_owned();
    crossmerge::Registry::create(&reg)?;
    cm(
        exe,
        &reg,
        &["register", &p(0), "--name", "xlmr-base", "--kind", "base"],
    )?;
    for (i, lang) in [(1, "es"), (2, "de")] {
        cm(
            exe,
            &reg,
            &[
                "register",
                &p(i),
                "--name",
                &format!("lm-{lang}"),
                "--kind",
                "language",
                "--language",
                lang,
                "--base",
                "xlmr-base",
            ],
        )?;
        cm(
            exe,
            &reg,
            &[
                "derive",
                "language",
                "--from",
                &format!("lm-{lang}"),
                "--name",
                &format!("language/{lang}"),
            ],
        )?;
    }
    cm(
        exe,
        &reg,
        &[
            "register",
            &p(3),
            "--name",
            "pos-en",
            "--kind",
            "task",
            "--task",
            "pos",
            "--base",
            "xlmr-base",
        ],
    )?;
    let recipe = workdir.join("serve-merge.toml");
    std::fs::write(
        &recipe,
        "name = \"pos-en+es\"\nmethod = \"task_arithmetic\"\nbase = \"xlmr-base\"\n\n\
         [[inputs]]\ncheckpoint = \"pos-en\"\n\n[[inputs]]\nvector = \"language/es\"\nweight = 0.5\n\n\
         [heads]\nfrom = \"pos-en\"\n",
    )?;
    cm(exe, &reg, &["merge", recipe.to_str().unwrap_or_default()])?;
    std::fs::write(reg.join("done"), "")?;
    Ok(reg)
}

fn start(exe: &Path, reg: &Path) -> anyhow::Result<Server> {
    let mut child = Command::new(exe)
        .args(["serve", "--port", "0", "--registry"])
        .arg(reg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("the server's stdout")?).read_line(&mut line)?;
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| format!("no address in `{line}`"))?
        .trim_end_matches('/')
        .to_owned();
    Ok(Server(child, base))
}

/// `12.3us`, `4.5ms`, `1.2s` in milliseconds.
fn millis(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1e3,
        "ms" => v,
        "s" => v * 1e3,
        "m" => v * 60e3,
        _ => return None,
    })
}

fn wrk(url: &str, connections: u32, seconds: u32) -> anyhow::Result<Load> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .context("running wrk (Debian: apt-get install wrk)")?;
    if !out.status.success() {
        bail!("wrk: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut load = Load::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => load.p50_ms = millis(v).unwrap_or(f64::NAN),
            ["99%", v] => load.p99_ms = millis(v).unwrap_or(f64::NAN),
            ["Requests/sec:", v] => load.requests_per_s = v.parse().unwrap_or(f64::NAN),
            ["Non-2xx", "or", "3xx", "responses:", n] => load.errors += n.parse::<u64>()?,
            _ if line.starts_with("Socket errors:") => {
                load.errors += line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if load.requests_per_s.is_nan() || load.requests_per_s == 0.0 {
        bail!("wrk printed no figures:\n{text}");
    }
    Ok(load)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: &BenchArgs, exe: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.workdir)?;
    let reg = registry(exe, &a.workdir)?;
    let server = start(exe, &reg)?;
    let pages = [
        ("static /style.css", "/style.css".to_owned()),
        ("/checkpoints", "/checkpoints".to_owned()),
        (
            "/checkpoints/xlmr-base@1",
            "/checkpoints/xlmr-base@1".to_owned(),
        ),
        ("/api/checkpoints", "/api/checkpoints".to_owned()),
    ];
    let (connections, seconds) = (64, a.serve_seconds);
    let mut loads: Vec<Vec<Load>> = vec![Vec::new(); pages.len()];
    for run in 0..a.runs.max(1) {
        for (i, (name, path)) in pages.iter().enumerate() {
            let l = wrk(&format!("{}{path}", server.1), connections, seconds)?;
            eprintln!(
                "run {run} {name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                l.requests_per_s, l.p50_ms, l.p99_ms, l.errors
            );
            loads[i].push(l);
        }
    }
    let med: Vec<(String, Load)> = pages
        .iter()
        .zip(&loads)
        .map(|((name, _), ls)| {
            (
                (*name).to_owned(),
                Load {
                    requests_per_s: median(ls.iter().map(|l| l.requests_per_s).collect()),
                    p50_ms: median(ls.iter().map(|l| l.p50_ms).collect()),
                    p99_ms: median(ls.iter().map(|l| l.p99_ms).collect()),
                    errors: ls.iter().map(|l| l.errors).sum(),
                },
            )
        })
        .collect();
    let bound = med[0].1.requests_per_s;
    let figures = Figures {
        connections,
        seconds,
        runs: a.runs.max(1),
        checkpoints: 5,
        ratio_to_static: med[1..]
            .iter()
            .map(|(n, l)| (n.clone(), l.requests_per_s / bound))
            .collect(),
        pages: med,
    };
    println!("{}", serde_json::to_string_pretty(&figures)?);
    println!("\n| page | requests/s | p50 | p99 | errors | req/s ÷ static |");
    println!("|---|---|---|---|---|---|");
    for (n, l) in &figures.pages {
        let ratio = l.requests_per_s / bound;
        println!(
            "| {n} | {:.0} | {:.2} ms | {:.2} ms | {} | {ratio:.2} |",
            l.requests_per_s, l.p50_ms, l.p99_ms, l.errors
        );
    }
    drop(server);
    Ok(ExitCode::SUCCESS)
}
