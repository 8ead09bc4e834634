//! `cargo xtask synth` and `cargo xtask bench`: synthetic families and throughput figures.
//!
//! Every figure is a ratio against a bound measured in the same run on the same files: the
//! time to read the input checkpoint with plain `read` and write the same number of bytes
//! with plain `write` + `fsync`. Each operation runs as a child process of the release
//! `crossmerge` binary (`--crossmerge`, built first by `cargo xtask bench`) so that its peak
//! resident memory is its own.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use crossmerge::Registry;
use crossmerge_synth::{FamilySpec, Shape, write_family};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// `tiny`, `xlmr-base` (the exact names and shapes of xlm-roberta-base, 278M parameters)
    /// or `mbert-base` (bert-base-multilingual-cased's, 178M).
    #[arg(long, default_value = "tiny")]
    shape: String,
    /// How many fine-tunes to write beside the base.
    #[arg(long, default_value_t = 1)]
    finetunes: usize,
    /// Seed of the synthetic weights: the same seed writes the same bytes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Relative noise of fine-tunes against the base.
    #[arg(long, default_value_t = 1e-3)]
    noise: f32,
    /// Give fine-tunes a token-classification head with this many labels.
    #[arg(long)]
    head_labels: Option<u64>,
    /// Output folder: `base/`, `ft-1/`, … are written inside.
    #[arg(long)]
    out: PathBuf,
}

fn shape(name: &str) -> anyhow::Result<Shape> {
    Shape::by_name(name).ok_or_else(|| {
        crossmerge::Error::invalid(
            format!("unknown shape `{name}`"),
            "use `tiny`, `xlmr-base` or `mbert-base`",
        )
        .into()
    })
}

pub fn synth(a: &SynthArgs) -> anyhow::Result<ExitCode> {
    let spec = FamilySpec::new(shape(&a.shape)?, a.finetunes)
        .seed(a.seed)
        .noise(a.noise)
        .head_labels(a.head_labels);
    let paths =
        write_family(&a.out, &spec).with_context(|| format!("writing `{}`", a.out.display()))?;
    let mut out = std::io::stdout().lock();
    for p in paths {
        writeln!(out, "{}", p.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Suite {
    /// register and export against plain file I/O (issue: registry).
    Registry,
    /// compare of 7 vectors against reading them once (issue: vectors).
    Compare,
    /// `task_arithmetic` and `ties` merges of base + 3 fine-tunes against the I/O bound and
    /// mergekit (issue: recipes).
    Merge,
    /// `crossmerge eval` throughput (MiniLM, UPOS on en PUD) against transformers on PyTorch CPU.
    Eval,
    /// `crossmerge train` throughput and peak memory (multilingual-e5-small, UPOS on EWT
    /// train) against transformers + torch on the CPU.
    Train,
    /// `push` and `pull` of a base and a fine-tune to and from a moto S3 server on loopback
    /// against `aws s3 cp --recursive` of the same safetensors folders (issue: remotes).
    Remote,
    /// `crossmerge serve` under 64 concurrent connections (wrk) against its own static
    /// stylesheet (issue: web page).
    Serve,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure: registry (register, export), compare, merge, eval or train.
    #[arg(long, value_enum, default_value = "registry")]
    pub(crate) suite: Suite,
    /// Vectors for the compare suite.
    #[arg(long, default_value_t = 7)]
    vectors: usize,
    /// `xlmr-base` (about 1.1 GB of F32) or `tiny`.
    #[arg(long, default_value = "xlmr-base")]
    shape: String,
    /// Runs per figure; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Optimizer steps per run of the train suite.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// A Python with torch and transformers, for the eval suite.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// mergekit's `mergekit-yaml` for the merge suite (skipped when absent).
    #[arg(long, default_value = "mergekit-yaml")]
    mergekit: PathBuf,
    /// Scratch folder for the family, registries and exports.
    #[arg(long, default_value = "target/bench")]
    pub(crate) workdir: PathBuf,
    /// Print the figures as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The `crossmerge` binary to measure (`cargo xtask bench` builds it in release first).
    #[arg(long, default_value = "target/release/crossmerge")]
    pub crossmerge: PathBuf,
    /// The project's shared data (MiniLM, UD treebanks), for the eval suite.
    #[arg(long, default_value = "../shared")]
    shared: PathBuf,
    /// moto's `moto_server` and awscli's `aws`, for the remote suite (`pip install
    /// "moto[server]" awscli`).
    #[arg(long, default_value = "target/ci-venv/bin/moto_server")]
    moto: PathBuf,
    /// awscli's `aws`, for the remote suite.
    #[arg(long, default_value = "target/ci-venv/bin/aws")]
    aws: PathBuf,
    /// Seconds of load per page and run, for the serve suite.
    #[arg(long, default_value_t = 30)]
    pub(crate) serve_seconds: u32,
}

/// The binary every child process runs, set once by [`bench()`].
static CROSSMERGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn crossmerge_exe() -> anyhow::Result<PathBuf> {
    CROSSMERGE
        .get()
        .cloned()
        .context("the crossmerge binary is set before any child runs")
}

/// Writes `value` as pretty JSON and a newline.
fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

#[derive(Serialize, Default, Clone)]
struct Run {
    bound_s: f64,
    register_base_s: f64,
    register_finetune_s: f64,
    export_s: f64,
    reregister_added_bytes: u64,
    finetune_stored_ratio: f64,
    base_stored_ratio: f64,
    peak_rss_register_base_mib: f64,
    peak_rss_register_finetune_mib: f64,
    peak_rss_export_mib: f64,
}

#[derive(Serialize)]
struct Summary {
    shape: String,
    input_bytes: u64,
    runs: Vec<Run>,
    median: Run,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        f64::midpoint(v[m - 1], v[m])
    }
}

/// Reads `input` with plain reads and writes as many bytes to `out`, synced: the I/O bound.
fn io_bound(input: &Path, out: &Path) -> anyhow::Result<f64> {
    settle();
    let t = Instant::now();
    let mut src = fs::File::open(input)?;
    let mut dst = fs::File::create(out)?;
    let mut buf = vec![0u8; 16 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
    }
    dst.sync_all()?;
    let s = t.elapsed().as_secs_f64();
    drop(dst);
    fs::remove_file(out)?;
    Ok(s)
}

/// Flushes dirty pages so one step's write-back is not billed to the next.
fn settle() {
    let _ = Command::new("sync").status();
}

/// Runs this binary with `args`, returning seconds and peak RSS in MiB.
fn child(args: &[&std::ffi::OsStr]) -> anyhow::Result<(f64, f64)> {
    settle();
    let exe = crossmerge_exe()?;
    let t = Instant::now();
    let out = Command::new(exe)
        .args(args)
        .env("CROSSMERGE_REPORT_PEAK_RSS", "1")
        .output()?;
    let s = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("child `{args:?}` failed: {stderr}");
    }
    let kib: f64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    Ok((s, kib / 1024.0))
}

pub fn bench(a: &BenchArgs) -> anyhow::Result<ExitCode> {
    let exe = fs::canonicalize(&a.crossmerge)
        .with_context(|| format!("no crossmerge binary at `{}`", a.crossmerge.display()))?;
    let _ = CROSSMERGE.set(exe);
    if matches!(a.suite, Suite::Merge) {
        return bench_merge(a);
    }
    if matches!(a.suite, Suite::Eval) {
        return bench_eval(a);
    }
    if matches!(a.suite, Suite::Compare) {
        return bench_compare(a);
    }
    if matches!(a.suite, Suite::Train) {
        return bench_train(a);
    }
    if matches!(a.suite, Suite::Remote) {
        return bench_remote(a);
    }
    if matches!(a.suite, Suite::Serve) {
        bail!("the serve suite runs from xtask's main");
    }
    let spec = FamilySpec::new(shape(&a.shape)?, 1).head_labels(Some(9));
    let family_dir = a.workdir.join(format!("family-{}", a.shape));
    eprintln!(
        "generating (or reusing) the synthetic family in {}",
        family_dir.display()
    );
    let paths = write_family(&family_dir, &spec)?;
    let (base, ft) = (&paths[0], &paths[1]);
    let input = base.join("model.safetensors");
    let input_bytes = fs::metadata(&input)?.len();
    let mut runs = Vec::new();
    for i in 0..a.runs.max(1) {
        let reg = a.workdir.join(format!("registry-{i}"));
        let exp = a.workdir.join(format!("export-{i}"));
        let _ = fs::remove_dir_all(&reg);
        // A named registry must exist before a child writes to it.
        Registry::create(&reg)?;
        let _ = fs::remove_dir_all(&exp);
        let mut r = Run {
            bound_s: io_bound(&input, &a.workdir.join("bound.out"))?,
            ..Run::default()
        };
        let regs = reg.as_os_str();
        let q = std::ffi::OsStr::new;
        (r.register_base_s, r.peak_rss_register_base_mib) = child(&[
            q("--registry"),
            regs,
            q("--quiet"),
            q("register"),
            base.as_os_str(),
            q("--name"),
            q("base"),
            q("--kind"),
            q("base"),
        ])?;
        (r.register_finetune_s, r.peak_rss_register_finetune_mib) = child(&[
            q("--registry"),
            regs,
            q("--quiet"),
            q("register"),
            ft.as_os_str(),
            q("--name"),
            q("ner-en"),
            q("--kind"),
            q("task"),
            q("--task"),
            q("ner"),
            q("--base"),
            q("base"),
        ])?;
        (r.export_s, r.peak_rss_export_mib) = child(&[
            q("--registry"),
            regs,
            q("--quiet"),
            q("export"),
            q("ner-en"),
            q("--out"),
            exp.as_os_str(),
        ])?;
        let before = Registry::create(&reg)?.du()?;
        child(&[
            q("--registry"),
            regs,
            q("--quiet"),
            q("register"),
            ft.as_os_str(),
            q("--name"),
            q("ner-en"),
            q("--kind"),
            q("task"),
            q("--task"),
            q("ner"),
            q("--base"),
            q("base"),
        ])?;
        let after = Registry::create(&reg)?.du()?;
        r.reregister_added_bytes = after.total_stored.saturating_sub(before.total_stored);
        for row in &after.checkpoints {
            if row.checkpoint.starts_with("ner-en@") {
                r.finetune_stored_ratio = row.ratio;
            } else if row.checkpoint.starts_with("base@") {
                r.base_stored_ratio = row.ratio;
            }
        }
        eprintln!(
            "run {}: bound {:.2}s, register base {:.2}s, fine-tune {:.2}s, export {:.2}s, fine-tune stored {:.1}%",
            i + 1,
            r.bound_s,
            r.register_base_s,
            r.register_finetune_s,
            r.export_s,
            100.0 * r.finetune_stored_ratio
        );
        fs::remove_dir_all(&reg)?;
        fs::remove_dir_all(&exp)?;
        runs.push(r);
    }
    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let median = Run {
        bound_s: m(|r| r.bound_s),
        register_base_s: m(|r| r.register_base_s),
        register_finetune_s: m(|r| r.register_finetune_s),
        export_s: m(|r| r.export_s),
        reregister_added_bytes: runs
            .iter()
            .map(|r| r.reregister_added_bytes)
            .max()
            .unwrap_or(0),
        finetune_stored_ratio: m(|r| r.finetune_stored_ratio),
        base_stored_ratio: m(|r| r.base_stored_ratio),
        peak_rss_register_base_mib: m(|r| r.peak_rss_register_base_mib),
        peak_rss_register_finetune_mib: m(|r| r.peak_rss_register_finetune_mib),
        peak_rss_export_mib: m(|r| r.peak_rss_export_mib),
    };
    let summary = Summary {
        shape: a.shape.clone(),
        input_bytes,
        runs,
        median,
    };
    if a.json {
        json(&summary)?;
    } else {
        print_markdown(&summary)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_markdown(s: &Summary) -> std::io::Result<()> {
    let m = &s.median;
    let gbps = |secs: f64| s.input_bytes as f64 / secs / 1e9;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "shape `{}`, input {:.3} GB, median of {} runs",
        s.shape,
        s.input_bytes as f64 / 1e9,
        s.runs.len()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| operation | seconds | GB/s | ÷ I/O bound | peak RSS |"
    )?;
    writeln!(out, "| --- | --- | --- | --- | --- |")?;
    writeln!(
        out,
        "| I/O bound (read input + write as many bytes, fsync) | {:.2} | {:.2} | 1.00 | - |",
        m.bound_s,
        gbps(m.bound_s)
    )?;
    for (name, secs, rss) in [
        (
            "register base",
            m.register_base_s,
            m.peak_rss_register_base_mib,
        ),
        (
            "register fine-tune `--base`",
            m.register_finetune_s,
            m.peak_rss_register_finetune_mib,
        ),
        ("export fine-tune", m.export_s, m.peak_rss_export_mib),
    ] {
        // The ratio is taken within each run (same disk state) and its median reported.
        let pick: fn(&Run) -> f64 = match name {
            "register base" => |r| r.register_base_s,
            "export fine-tune" => |r| r.export_s,
            _ => |r| r.register_finetune_s,
        };
        let ratio = median(s.runs.iter().map(|r| pick(r) / r.bound_s).collect());
        writeln!(
            out,
            "| {name} | {secs:.2} | {:.2} | {ratio:.2} | {rss:.0} MiB |",
            gbps(secs),
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "stored ÷ logical: base {:.1}%, fine-tune with `--base` {:.1}%; identical re-registration added {} bytes",
        100.0 * m.base_stored_ratio,
        100.0 * m.finetune_stored_ratio,
        m.reregister_added_bytes
    )?;
    Ok(())
}

/// `compare` of k vectors (fine-tune − base, the synthetic family) against the time to read
/// the same vectors' bytes once from the registry: every object decoded and re-hashed exactly
/// as `compare` reads it, nothing computed.
fn bench_compare(a: &BenchArgs) -> anyhow::Result<ExitCode> {
    let k = a.vectors.max(2);
    let spec = FamilySpec::new(shape(&a.shape)?, k);
    let family_dir = a.workdir.join(format!("family-{}-{k}", a.shape));
    eprintln!(
        "generating (or reusing) the synthetic family in {}",
        family_dir.display()
    );
    let paths = write_family(&family_dir, &spec)?;
    let reg_dir = a.workdir.join("registry-compare");
    let _ = fs::remove_dir_all(&reg_dir);
    Registry::create(&reg_dir)?;
    let q = std::ffi::OsStr::new;
    let regs = reg_dir.as_os_str();
    child(&[
        q("--registry"),
        regs,
        q("--quiet"),
        q("register"),
        paths[0].as_os_str(),
        q("--name"),
        q("base"),
        q("--kind"),
        q("base"),
    ])?;
    let mut names = Vec::new();
    for (i, p) in paths.iter().enumerate().skip(1) {
        let ft = format!("lm-{i}");
        child(&[
            q("--registry"),
            regs,
            q("--quiet"),
            q("register"),
            p.as_os_str(),
            q("--name"),
            q(&ft),
            q("--kind"),
            q("language"),
            q("--language"),
            q("xx"),
            q("--base"),
            q("base"),
        ])?;
        let v = format!("lang-{i}");
        child(&[
            q("--registry"),
            regs,
            q("--quiet"),
            q("derive"),
            q("language"),
            q("--from"),
            q(&ft),
            q("--name"),
            q(&v),
        ])?;
        names.push(v);
    }
    let input_bytes: u64 = paths
        .iter()
        .map(|p| fs::metadata(p.join("model.safetensors")).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    let mut rows = Vec::new();
    for i in 0..a.runs.max(1) {
        settle();
        let reg = Registry::create(&reg_dir)?;
        let t = Instant::now();
        let elements = reg.read_vectors(
            &names,
            &crossmerge::CompareOptions::default(),
            &crossmerge::NoProgress,
        )?;
        let bound = t.elapsed().as_secs_f64();
        drop(reg);
        settle();
        let t = Instant::now();
        let raw = raw_read(&paths)?;
        let raw_s = t.elapsed().as_secs_f64();
        let mut args = vec![q("--registry"), regs, q("--quiet"), q("compare")];
        args.extend(names.iter().map(|n| q(n.as_str())));
        args.push(q("--json"));
        let (secs, rss) = child(&args)?;
        eprintln!(
            "run {}: read bound {bound:.2}s, compare {secs:.2}s ({:.2}×), raw file read {raw_s:.2}s ({raw} bytes)",
            i + 1,
            secs / bound
        );
        rows.push((bound, secs, rss, raw_s, elements));
    }
    let med = |f: fn(&(f64, f64, f64, f64, u64)) -> f64| median(rows.iter().map(f).collect());
    let (bound, secs, rss, raw_s) = (med(|r| r.0), med(|r| r.1), med(|r| r.2), med(|r| r.3));
    let elements = rows.first().map_or(0, |r| r.4);
    // Ratios are taken within each run (same machine state) and their median reported.
    let ratio = med(|r| r.1 / r.0);
    let raw_ratio = med(|r| r.3 / r.0);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "compare of {k} vectors of shape `{}` ({elements} parameters each), median of {} runs",
        a.shape,
        rows.len()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "seconds are medians; ÷ read bound is the median of the per-run ratios"
    )?;
    writeln!(out)?;
    writeln!(out, "| step | seconds | ÷ read bound | peak RSS |")?;
    writeln!(out, "| --- | --- | --- | --- |")?;
    writeln!(
        out,
        "| read bound: decode + verify every object the vectors need, once | {bound:.2} | 1.00 | - |"
    )?;
    writeln!(
        out,
        "| `crossmerge compare` ({} pairs, f64) | {secs:.2} | {:.2} | {rss:.0} MiB |",
        k * (k + 1) / 2,
        ratio
    )?;
    writeln!(
        out,
        "| for scale: plain read of the {} input safetensors files ({:.1} GB) | {raw_s:.2} | {:.2} | - |",
        paths.len(),
        input_bytes as f64 / 1e9,
        raw_ratio
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Reads every input file once with plain reads; returns the bytes read.
fn raw_read(paths: &[PathBuf]) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 16 << 20];
    let mut total = 0u64;
    for p in paths {
        let mut f = fs::File::open(p.join("model.safetensors"))?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

/// Writes `bytes` zeros to `out` and syncs: the output side of the merge bound.
fn write_bound(out: &Path, bytes: u64) -> anyhow::Result<f64> {
    settle();
    let t = Instant::now();
    let mut dst = fs::File::create(out)?;
    let buf = vec![1u8; 16 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64))?;
        dst.write_all(&buf[..n])?;
        left -= n as u64;
    }
    dst.sync_all()?;
    let s = t.elapsed().as_secs_f64();
    drop(dst);
    fs::remove_file(out)?;
    Ok(s)
}

/// Runs `mergekit-yaml` on a config; seconds and peak RSS (MiB) from GNU time when present.
fn mergekit(exe: &Path, config: &Path, out: &Path) -> anyhow::Result<(f64, f64)> {
    let _ = fs::remove_dir_all(out);
    settle();
    let t = Instant::now();
    let res = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("peak_rss_kib: %M")
        .arg(exe)
        .arg(config)
        .arg(out)
        .arg("--allow-crimes")
        .output()
        .or_else(|_| {
            Command::new(exe)
                .arg(config)
                .arg(out)
                .arg("--allow-crimes")
                .output()
        })?;
    let s = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&res.stderr);
    if !res.status.success() || !out.join("model.safetensors").is_file() {
        bail!("mergekit failed: {}", stderr.lines().last().unwrap_or(""));
    }
    let kib: f64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let _ = fs::remove_dir_all(out);
    Ok((s, kib / 1024.0))
}

#[derive(Default, Clone)]
struct MergeRun {
    read_s: f64,
    raw_read_s: f64,
    write_s: f64,
    secs: Vec<(f64, f64, f64, f64)>, // crossmerge s, rss, mergekit s, rss
}

fn bench_merge(a: &BenchArgs) -> anyhow::Result<ExitCode> {
    let spec = FamilySpec::new(shape(&a.shape)?, 3);
    let family_dir = a.workdir.join(format!("family-{}-3", a.shape));
    eprintln!(
        "generating (or reusing) the synthetic family in {}",
        family_dir.display()
    );
    let paths = write_family(&family_dir, &spec)?;
    // mergekit infers tensor names from the architecture: with `XLMRobertaForMaskedLM` it
    // expects the `roberta.`-prefixed names the family has.
    for p in &paths {
        let c = p.join("config.json");
        let text =
            fs::read_to_string(&c)?.replace("\"XLMRobertaModel\"", "\"XLMRobertaForMaskedLM\"");
        fs::write(&c, text)?;
    }
    let reg_dir = a.workdir.join("registry-merge");
    let _ = fs::remove_dir_all(&reg_dir);
    Registry::create(&reg_dir)?;
    let q = std::ffi::OsStr::new;
    let regs = reg_dir.as_os_str();
    child(&[
        q("--registry"),
        regs,
        q("--quiet"),
        q("register"),
        paths[0].as_os_str(),
        q("--name"),
        q("base"),
        q("--kind"),
        q("base"),
    ])?;
    let mut vectors = Vec::new();
    for (i, p) in paths.iter().enumerate().skip(1) {
        let ft = format!("ft-{i}");
        child(&[
            q("--registry"),
            regs,
            q("--quiet"),
            q("register"),
            p.as_os_str(),
            q("--name"),
            q(&ft),
            q("--kind"),
            q("task"),
            q("--task"),
            q("pos"),
            q("--base"),
            q("base"),
        ])?;
        let v = format!("task-{i}");
        child(&[
            q("--registry"),
            regs,
            q("--quiet"),
            q("derive"),
            q("task"),
            q("--from"),
            q(&ft),
            q("--name"),
            q(&v),
        ])?;
        vectors.push(v);
    }
    let weights = [1.0, 0.5, 0.3];
    let mut toml = std::collections::BTreeMap::new();
    let mut yaml = std::collections::BTreeMap::new();
    for (method, extra_toml, extra_yaml) in [
        ("task_arithmetic", "", ""),
        ("ties", "density = 0.2\n", "      density: 0.2\n"),
    ] {
        let mut t = format!(
            "name = \"bench-{method}\"\nmethod = \"{method}\"\nbase = \"base\"\n{extra_toml}"
        );
        let mut y = String::from("models:\n");
        for (i, w) in weights.iter().enumerate() {
            // RUN is replaced per run: an identical recipe would be found already merged.
            let tw = if i == 0 {
                "RUN".to_owned()
            } else {
                w.to_string()
            };
            let _ = write!(
                t,
                "[[inputs]]\ncheckpoint = \"ft-{}\"\nweight = {tw}\n",
                i + 1
            );
            let _ = write!(
                y,
                "  - model: {}\n    parameters:\n      weight: {w}\n{extra_yaml}",
                fs::canonicalize(&paths[i + 1])?.display()
            );
        }
        let _ = write!(
            y,
            "merge_method: {method}\nbase_model: {}\ndtype: float32\n",
            fs::canonicalize(&paths[0])?.display()
        );
        if method == "ties" {
            y.push_str("parameters:\n  normalize: true\n");
        }
        let tp = a.workdir.join(format!("bench-{method}.toml"));
        let yp = a.workdir.join(format!("bench-{method}.yml"));
        fs::write(&tp, t)?;
        fs::write(&yp, y)?;
        toml.insert(method, tp);
        yaml.insert(method, yp);
    }
    let output_bytes = fs::metadata(paths[0].join("model.safetensors"))?.len();
    let have_mergekit = Command::new(&a.mergekit)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_mergekit {
        eprintln!(
            "{} not found: mergekit columns are skipped (pip install mergekit)",
            a.mergekit.display()
        );
    }
    // Per run: bound, then each method with crossmerge and mergekit.
    let methods = ["task_arithmetic", "ties"];
    let mut runs = Vec::new();
    for i in 0..a.runs.max(1) {
        settle();
        let reg = Registry::create(&reg_dir)?;
        let t = Instant::now();
        reg.read_vectors(
            &vectors,
            &crossmerge::CompareOptions::default(),
            &crossmerge::NoProgress,
        )?;
        let read_s = t.elapsed().as_secs_f64();
        drop(reg);
        settle();
        let t = Instant::now();
        raw_read(&paths)?;
        let raw_read_s = t.elapsed().as_secs_f64();
        let write_s = write_bound(&a.workdir.join("write-bound.tmp"), output_bytes)?;
        let mut run = MergeRun {
            read_s,
            raw_read_s,
            write_s,
            secs: Vec::new(),
        };
        for m in methods {
            // A fresh registry state each run: the previous result would be reused at once.
            let name = format!("bench-{m}-{i}");
            let text =
                fs::read_to_string(&toml[m])?.replace("RUN", &format!("{}", 1.0 + i as f64 * 1e-3));
            let run_toml = a.workdir.join(format!("bench-{m}-run.toml"));
            fs::write(&run_toml, text)?;
            let (s, rss) = child(&[
                q("--registry"),
                regs,
                q("--quiet"),
                q("merge"),
                run_toml.as_os_str(),
                q("--name"),
                q(&name),
            ])?;
            let (ms, mrss) = if have_mergekit {
                mergekit(&a.mergekit, &yaml[m], &a.workdir.join("mergekit-out"))?
            } else {
                (f64::NAN, f64::NAN)
            };
            eprintln!(
                "run {}: {m}: crossmerge {s:.2}s ({rss:.0} MiB), mergekit {ms:.2}s ({mrss:.0} MiB); bound {:.2}s (registry read {read_s:.2}s + write {write_s:.2}s), raw bound {:.2}s",
                i + 1,
                read_s + write_s,
                raw_read_s + write_s
            );
            run.secs.push((s, rss, ms, mrss));
        }
        runs.push(run);
    }
    let med = |f: &dyn Fn(&MergeRun) -> f64| median(runs.iter().map(f).collect());
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "merge of base + 3 fine-tunes, shape `{}` (F32, {:.2} GB per model), median of {} runs",
        a.shape,
        output_bytes as f64 / 1e9,
        runs.len()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "bound = decode + verify the 4 inputs from the registry once + write one output-sized file, synced; raw bound = plain read of the 4 input files + the same write. Ratios are medians of per-run ratios."
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| method | crossmerge s | ÷ bound | ÷ raw bound | peak RSS | mergekit s | mergekit ÷ crossmerge | mergekit peak RSS |"
    )?;
    writeln!(out, "| --- | --- | --- | --- | --- | --- | --- | --- |")?;
    for (k, m) in methods.iter().enumerate() {
        writeln!(
            out,
            "| {m} | {:.2} | {:.2} | {:.2} | {:.0} MiB | {:.2} | {:.1}× | {:.0} MiB |",
            med(&|r| r.secs[k].0),
            med(&|r| r.secs[k].0 / (r.read_s + r.write_s)),
            med(&|r| r.secs[k].0 / (r.raw_read_s + r.write_s)),
            med(&|r| r.secs[k].1),
            med(&|r| r.secs[k].2),
            med(&|r| r.secs[k].2 / r.secs[k].0),
            med(&|r| r.secs[k].3),
        )?;
    }
    writeln!(
        out,
        "| bound (registry read + write) | {:.2} | 1.00 | | | | | |",
        med(&|r| r.read_s + r.write_s)
    )?;
    writeln!(
        out,
        "| raw bound (file read + write) | {:.2} | | 1.00 | | | | |",
        med(&|r| r.raw_read_s + r.write_s)
    )?;
    Ok(ExitCode::SUCCESS)
}

fn bench_eval(a: &BenchArgs) -> anyhow::Result<ExitCode> {
    let root = Path::new(".");
    let shared = a.shared.clone();
    let minilm = shared.join("models/all-MiniLM-L6-v2");
    let data = shared.join("data/ud/UD_English-PUD/en_pud-ud-test.conllu");
    if !minilm.is_dir() || !data.is_file() {
        bail!(
            "the eval suite needs {} (MiniLM and UD_English-PUD); give --shared DIR",
            shared.display()
        );
    }
    let script = root.join("scripts/reference/hf_eval_speed.py");
    let model_dir = a.workdir.join("minilm-pos");
    fs::create_dir_all(&a.workdir)?;
    let status = Command::new(&a.python)
        .arg(&script)
        .arg("prepare")
        .arg(&minilm)
        .arg(&model_dir)
        .status()?;
    if !status.success() {
        bail!(
            "{} could not prepare the model (needs torch and transformers)",
            a.python.display()
        );
    }
    let reg_dir = a.workdir.join("registry-eval");
    let _ = fs::remove_dir_all(&reg_dir);
    Registry::create(&reg_dir)?;
    let q = std::ffi::OsStr::new;
    let regs = reg_dir.as_os_str();
    child(&[
        q("--registry"),
        regs,
        q("--quiet"),
        q("register"),
        model_dir.as_os_str(),
        q("--name"),
        q("minilm-pos"),
        q("--kind"),
        q("task"),
        q("--task"),
        q("pos"),
    ])?;
    let runs = a.runs.max(1);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut accuracy = String::new();
    let mut hf_accuracy = String::new();
    // Interleaved, one run each per round, so a noisy spell on the machine hits both sides.
    for _ in 0..runs {
        let exe = crossmerge_exe()?;
        let out = Command::new(exe)
            .args([
                q("--registry"),
                regs,
                q("--quiet"),
                q("eval"),
                q("minilm-pos"),
                q("--task"),
                q("pos"),
                q("--data"),
                data.as_os_str(),
                q("--json"),
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "crossmerge eval failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        // The evaluation's own time (model loading excluded, as on the Python side).
        ours.push(v["duration_s"].as_f64().unwrap_or(f64::NAN));
        accuracy = format!(
            "{:.4}",
            v["metrics"]["upos_accuracy"].as_f64().unwrap_or(f64::NAN)
        );
        let out = Command::new(&a.python)
            .arg(&script)
            .arg("time")
            .arg(&model_dir)
            .arg(&data)
            .arg("1")
            .output()?;
        if !out.status.success() {
            bail!(
                "transformers timing failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or("");
        let mut cols = line.split_whitespace();
        theirs.push(cols.next().and_then(|c| c.parse().ok()).unwrap_or(f64::NAN));
        cols.nth(1).unwrap_or("?").clone_into(&mut hf_accuracy);
    }
    let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(m, h)| h / m).collect();
    let sentences = 1000.0;
    let (mine, hf) = (median(ours.clone()), median(theirs.clone()));
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "UPOS tagging of UD_English-PUD (1000 sentences) with MiniLM + a seeded random POS head, CPU, median of {runs} runs"
    )?;
    writeln!(o)?;
    writeln!(
        o,
        "| implementation | seconds | sentences/s | UPOS accuracy (random head) |"
    )?;
    writeln!(o, "| --- | --- | --- | --- |")?;
    writeln!(
        o,
        "| crossmerge eval (candle) | {mine:.2} | {:.0} | {accuracy} |",
        sentences / mine
    )?;
    writeln!(
        o,
        "| transformers (PyTorch) | {hf:.2} | {:.0} | {hf_accuracy} |",
        sentences / hf
    )?;
    writeln!(o)?;
    writeln!(
        o,
        "crossmerge ÷ transformers throughput: {:.2}× (ratio of the medians); per round {:.2}× (median of the {runs} interleaved rounds: {}); seconds ours {ours:.2?}, transformers {theirs:.2?}",
        hf / mine,
        median(ratios.clone()),
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Training throughput and peak memory of `crossmerge train` against transformers + torch
/// (`scripts/reference/hf_train.py speed`) on this CPU: multilingual-e5-small, UPOS tagging
/// on UD_English-EWT train, batches of 32 random sentences cut to 128 subwords, dropout on,
/// the machine's threads; `--steps` timed optimizer steps per run on each side, after one
/// untimed first step (the warm-up), interleaved runs, medians.
fn bench_train(a: &BenchArgs) -> anyhow::Result<ExitCode> {
    let root = Path::new(".");
    let e5 = a.shared.join("models/multilingual-e5-small");
    let data = a
        .shared
        .join("data/ud/UD_English-EWT/en_ewt-ud-train.conllu");
    if !e5.is_dir() || !data.is_file() {
        bail!(
            "the train suite needs {} (multilingual-e5-small and UD_English-EWT train); give --shared DIR",
            a.shared.display()
        );
    }
    let script = root.join("scripts/reference/hf_train.py");
    fs::create_dir_all(&a.workdir)?;
    let reg_dir = a.workdir.join("registry-train");
    let _ = fs::remove_dir_all(&reg_dir);
    Registry::create(&reg_dir)?;
    let q = std::ffi::OsStr::new;
    let regs = reg_dir.as_os_str();
    child(&[
        q("--registry"),
        regs,
        q("--quiet"),
        q("register"),
        e5.as_os_str(),
        q("--name"),
        q("e5"),
        q("--kind"),
        q("base"),
    ])?;
    let steps = a.steps.to_string();
    // Ours: the first step, then `steps` timed ones (`steady_tokens_per_s`).
    let our_steps = (a.steps + 1).to_string();
    let runs = a.runs.max(1);
    let (mut ours, mut theirs, mut our_mib, mut their_mib) = (vec![], vec![], vec![], vec![]);
    let mut ours_all = vec![];
    for run in 0..runs {
        settle();
        let name = format!("bench-{run}");
        let out = Command::new(crossmerge_exe()?)
            .args([
                q("--registry"),
                regs,
                q("--quiet"),
                q("train"),
                q("e5"),
                q("--task"),
                q("pos"),
                q("--data"),
                data.as_os_str(),
                q("--name"),
                q(&name),
                q("--max-steps"),
                q(&our_steps),
                q("--batch-size"),
                q("32"),
                q("--max-length"),
                q("128"),
                q("--save-every"),
                q("0"),
                q("--seed"),
                q(&(42 + run).to_string()),
                q("--json"),
            ])
            .env("CROSSMERGE_REPORT_PEAK_RSS", "1")
            .output()?;
        if !out.status.success() {
            bail!(
                "crossmerge train failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        // The steps after the first, as transformers' figure below (its first step is not timed).
        ours.push(v["steady_tokens_per_s"].as_f64().unwrap_or(f64::NAN));
        ours_all.push(v["tokens_per_s"].as_f64().unwrap_or(f64::NAN));
        let kib: f64 = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| l.strip_prefix("peak_rss_kib: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN);
        our_mib.push(kib / 1024.0);
        settle();
        let out = Command::new(&a.python)
            .arg(&script)
            .args([
                q("speed"),
                q("--model"),
                e5.as_os_str(),
                q("--train"),
                data.as_os_str(),
            ])
            .args([
                q("--steps"),
                q(&steps),
                q("--batch"),
                q("32"),
                q("--seed"),
                q(&(42 + run).to_string()),
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "transformers timing failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut cols = text.lines().last().unwrap_or("").split_whitespace();
        theirs.push(cols.next().and_then(|c| c.parse().ok()).unwrap_or(f64::NAN));
        their_mib.push(
            cols.next()
                .and_then(|c| c.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
                / 1024.0,
        );
        eprintln!(
            "round {}: crossmerge {:.0} tokens/s ({:.0} with its first step), {:.0} MiB; transformers {:.0} tokens/s, {:.0} MiB",
            run + 1,
            ours[run],
            ours_all[run],
            our_mib[run],
            theirs[run],
            their_mib[run]
        );
    }
    let speed: Vec<f64> = ours.iter().zip(&theirs).map(|(m, h)| m / h).collect();
    let memory: Vec<f64> = our_mib.iter().zip(&their_mib).map(|(m, h)| m / h).collect();
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "Training multilingual-e5-small on UPOS (UD_English-EWT train, batch 32, max length 128, {steps} steps, dropout on), CPU, median of {runs} interleaved rounds; tokens/s over the steps after the first on both sides (crossmerge with its first step: {:.0})",
        median(ours_all.clone())
    )?;
    writeln!(o)?;
    writeln!(o, "| implementation | tokens/s | peak memory (MiB) |")?;
    writeln!(o, "| --- | --- | --- |")?;
    writeln!(
        o,
        "| crossmerge train (candle) | {:.0} | {:.0} |",
        median(ours.clone()),
        median(our_mib.clone())
    )?;
    writeln!(
        o,
        "| transformers + torch | {:.0} | {:.0} |",
        median(theirs.clone()),
        median(their_mib.clone())
    )?;
    writeln!(o)?;
    writeln!(
        o,
        "crossmerge ÷ transformers: throughput {:.2}× (median of per-round ratios {}), peak memory {:.2}× ({})",
        median(speed.clone()),
        speed
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        median(memory.clone()),
        memory
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(ExitCode::SUCCESS)
}

/// moto's S3 server on a free loopback port with one bucket; stopped when dropped.
struct MotoServer {
    child: std::process::Child,
    endpoint: String,
}

impl MotoServer {
    fn start(exe: &Path, bucket: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting `{}`", exe.display()))?;
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                write!(
                    s,
                    "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                if !reply.starts_with("HTTP/1.1 200") {
                    bail!("moto refused the bucket: {reply}");
                }
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("moto did not start");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn folder_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        n += e?.metadata()?.len();
    }
    Ok(n)
}

/// `aws s3 cp --recursive FROM TO` against the server: seconds.
fn aws_cp(aws: &Path, endpoint: &str, from: &str, to: &str) -> anyhow::Result<f64> {
    settle();
    let t = Instant::now();
    let out = Command::new(aws)
        .args([
            "s3",
            "cp",
            "--recursive",
            "--only-show-errors",
            "--endpoint-url",
            endpoint,
            from,
            to,
        ])
        .envs(S3_KEYS)
        .output()
        .with_context(|| format!("running `{}`", aws.display()))?;
    if !out.status.success() {
        bail!("aws s3 cp failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

const S3_KEYS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "bench"),
    ("AWS_SECRET_ACCESS_KEY", "bench"),
    ("AWS_REGION", "us-east-1"),
];

/// `crossmerge ARGS`, which must succeed.
fn run_cm(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(crossmerge_exe()?).args(args).output()?;
    if !out.status.success() {
        bail!(
            "`crossmerge {args:?}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `crossmerge ARGS --json` with the S3 keys: seconds and the JSON it printed.
fn timed_json(args: &[&str]) -> anyhow::Result<(f64, serde_json::Value)> {
    settle();
    let exe = crossmerge_exe()?;
    let t = Instant::now();
    let out = Command::new(exe)
        .args(args)
        .arg("--json")
        .envs(S3_KEYS)
        .output()?;
    let s = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "`crossmerge {args:?}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((s, serde_json::from_slice(&out.stdout)?))
}

#[derive(Serialize)]
struct RemoteRound {
    push_base_s: f64,
    aws_up_base_s: f64,
    push_ft_s: f64,
    push_ft_bytes: u64,
    aws_up_ft_s: f64,
    pull_base_s: f64,
    aws_down_base_s: f64,
    pull_ft_s: f64,
    pull_ft_bytes: u64,
    aws_down_ft_s: f64,
}

/// Push and pull against `aws s3 cp --recursive` of the same folders, on one moto server per
/// round (a new, empty one each time: moto keeps everything in memory).
fn bench_remote(a: &BenchArgs) -> anyhow::Result<ExitCode> {
    let spec = FamilySpec::new(shape(&a.shape)?, 1).head_labels(Some(9));
    let family_dir = a.workdir.join(format!("family-{}", a.shape));
    if !family_dir.join("ft-1").is_dir() {
        eprintln!(
            "writing the {} family into {}",
            a.shape,
            family_dir.display()
        );
        write_family(&family_dir, &spec)?;
    }
    let base = family_dir.join("base");
    let ft = family_dir.join("ft-1");
    let (base_bytes, ft_bytes) = (folder_bytes(&base)?, folder_bytes(&ft)?);
    let src = a
        .workdir
        .join(format!("remote-src-{}", a.shape))
        .to_string_lossy()
        .into_owned();
    let (base_s, ft_s) = (base.to_string_lossy(), ft.to_string_lossy());
    if !Path::new(&src).is_dir() {
        run_cm(&["--registry", &src, "init"])?;
        run_cm(&[
            "--registry",
            &src,
            "register",
            &base_s,
            "--name",
            "base",
            "--kind",
            "base",
        ])?;
        run_cm(&[
            "--registry",
            &src,
            "register",
            &ft_s,
            "--name",
            "ft",
            "--kind",
            "task",
            "--task",
            "ner",
            "--base",
            "base",
        ])?;
    }
    let mut rounds = Vec::new();
    for round in 0..a.runs {
        let moto = MotoServer::start(&a.moto, "bench")?;
        let url = format!("s3://bench/r{round}");
        let dst = a.workdir.join(format!("remote-dst-{round}"));
        let down = a.workdir.join(format!("remote-aws-{round}"));
        let _ = fs::remove_dir_all(&dst);
        let _ = fs::remove_dir_all(&down);
        let dst_s = dst.to_string_lossy().into_owned();
        run_cm(&["--registry", &dst_s, "init"])?;
        let _ = run_cm(&["--registry", &src, "remote", "remove", "bench"]);
        for reg in [&src, &dst_s] {
            run_cm(&[
                "--registry",
                reg,
                "remote",
                "add",
                "bench",
                &url,
                "--endpoint",
                &moto.endpoint,
                "--allow-http",
            ])?;
        }
        // Interleaved: crossmerge, then aws, for each step.
        let (push_base_s, _) = timed_json(&["--registry", &src, "push", "bench", "base"])?;
        let aws_up_base_s = aws_cp(
            &a.aws,
            &moto.endpoint,
            &base.to_string_lossy(),
            &format!("s3://bench/aws{round}/base"),
        )?;
        let (push_ft_s, pushed) = timed_json(&["--registry", &src, "push", "bench", "ft"])?;
        let aws_up_ft_s = aws_cp(
            &a.aws,
            &moto.endpoint,
            &ft.to_string_lossy(),
            &format!("s3://bench/aws{round}/ft"),
        )?;
        let (pull_base_s, _) = timed_json(&["--registry", &dst_s, "pull", "bench", "base"])?;
        let aws_down_base_s = aws_cp(
            &a.aws,
            &moto.endpoint,
            &format!("s3://bench/aws{round}/base"),
            &down.join("base").to_string_lossy(),
        )?;
        let (pull_ft_s, pulled) = timed_json(&["--registry", &dst_s, "pull", "bench", "ft"])?;
        let aws_down_ft_s = aws_cp(
            &a.aws,
            &moto.endpoint,
            &format!("s3://bench/aws{round}/ft"),
            &down.join("ft").to_string_lossy(),
        )?;
        let r = RemoteRound {
            push_base_s,
            aws_up_base_s,
            push_ft_s,
            push_ft_bytes: pushed["bytes_sent"].as_u64().unwrap_or(0),
            aws_up_ft_s,
            pull_base_s,
            aws_down_base_s,
            pull_ft_s,
            pull_ft_bytes: pulled["bytes_received"].as_u64().unwrap_or(0),
            aws_down_ft_s,
        };
        eprintln!(
            "round {}: push base {:.1} s (aws {:.1}), push ft {:.1} s, {} B (aws {:.1} s, {} B), pull base {:.1} s (aws {:.1}), pull ft {:.1} s (aws {:.1})",
            round + 1,
            r.push_base_s,
            r.aws_up_base_s,
            r.push_ft_s,
            r.push_ft_bytes,
            r.aws_up_ft_s,
            ft_bytes,
            r.pull_base_s,
            r.aws_down_base_s,
            r.pull_ft_s,
            r.aws_down_ft_s
        );
        rounds.push(r);
        drop(moto);
        let _ = fs::remove_dir_all(&dst);
        let _ = fs::remove_dir_all(&down);
    }
    let m = |f: &dyn Fn(&RemoteRound) -> f64| median(rounds.iter().map(f).collect());
    let figures = serde_json::json!({
        "suite": "remote",
        "shape": a.shape,
        "base_bytes": base_bytes,
        "ft_bytes": ft_bytes,
        "runs": rounds,
        "median": {
            "push_base_speed_vs_aws": m(&|r| r.aws_up_base_s / r.push_base_s),
            "pull_base_speed_vs_aws": m(&|r| r.aws_down_base_s / r.pull_base_s),
            "push_ft_time_vs_aws": m(&|r| r.push_ft_s / r.aws_up_ft_s),
            "pull_ft_time_vs_aws": m(&|r| r.pull_ft_s / r.aws_down_ft_s),
            "push_ft_bytes_vs_file": m(&|r| r.push_ft_bytes as f64 / ft_bytes as f64),
            "pull_ft_bytes_vs_file": m(&|r| r.pull_ft_bytes as f64 / ft_bytes as f64),
            "push_base_mb_s": m(&|r| base_bytes as f64 / 1e6 / r.push_base_s),
            "aws_up_base_mb_s": m(&|r| base_bytes as f64 / 1e6 / r.aws_up_base_s),
        },
    });
    json(&figures)?;
    Ok(ExitCode::SUCCESS)
}
