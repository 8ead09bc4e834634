//! Remote registries: push, pull and ls-remote through a shared folder (always) and a real S3
//! server on loopback (moto, where it is installed).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{assert_verify_clean, cm, read_model_tensors, skipped, snapshot, tiny_family};

/// A source registry with a base and a fine-tune registered against it (stored as deltas).
struct Source {
    _dir: tempfile::TempDir,
    root: PathBuf,
    reg: PathBuf,
    family: Vec<PathBuf>,
}

impl Source {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let family = tiny_family(&root.join("family"), 1, Some(3));
        let reg = root.join("src");
        cm(
            &reg,
            &[
                "register",
                family[0].to_str().unwrap(),
                "--name",
                "base",
                "--kind",
                "base",
            ],
        )
        .assert()
        .success();
        cm(
            &reg,
            &[
                "register",
                family[1].to_str().unwrap(),
                "--name",
                "ner-en",
                "--kind",
                "task",
                "--base",
                "base",
                "--task",
                "ner",
            ],
        )
        .assert()
        .success();
        cm(
            &reg,
            &[
                "derive",
                "task",
                "--from",
                "ner-en",
                "--name",
                "ner-vec",
                "--exclude",
                "*.LayerNorm.*",
            ],
        )
        .assert()
        .success();
        Self {
            _dir: dir,
            root,
            reg,
            family,
        }
    }
}

fn json_env(reg: &Path, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut c = cm(reg, args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The whole exchange, against the remote at `url` (with `add` extra `remote add` arguments
/// and `env` for every command).
fn round_trip(s: &Source, url: &str, add: &[&str], env: &[(&str, &str)]) {
    let with = |reg: &Path, args: &[&str]| json_env(reg, args, env);
    let mut args = vec!["remote", "add", "origin", url];
    args.extend_from_slice(add);
    cm(&s.reg, &args).assert().success();

    // The base first, then the fine-tune: only its own objects move.
    let base = with(&s.reg, &["push", "origin", "base", "--json"]);
    assert!(base["objects_sent"].as_u64().unwrap() > 0);
    assert_eq!(base["objects_present"], 0);
    let ft = with(&s.reg, &["push", "origin", "ner-en", "--json"]);
    assert_eq!(ft["checkpoints"], serde_json::json!(["base@1", "ner-en@1"]));
    assert!(
        ft["objects_present"].as_u64().unwrap() >= base["objects_sent"].as_u64().unwrap() - 1,
        "the base's objects were there already: {ft}"
    );
    let file_size: u64 = std::fs::read_dir(&s.family[1])
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let sent = ft["bytes_sent"].as_u64().unwrap();
    assert!(
        sent * 10 <= file_size * 6,
        "a fine-tune over a remote base sends its deltas: {sent} bytes of {file_size}"
    );
    // Twice: nothing moves.
    let again = with(&s.reg, &["push", "origin", "ner-en", "--json"]);
    assert_eq!(again["objects_sent"], 0);
    assert_eq!(again["bytes_sent"], 0);
    assert_eq!(again["records_sent"], 0);

    // A fresh registry pulls the fine-tune and gets its base with it.
    let dst = s.root.join(format!("dst-{}", url.len()));
    cm(&dst, &["init"]).assert().success();
    cm(&dst, &args).assert().success();
    let listed = with(&dst, &["ls-remote", "origin", "--json"]);
    let names: Vec<&str> = listed["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "ner-en"]);
    let pulled = with(&dst, &["pull", "origin", "ner-en", "--json"]);
    assert_eq!(
        pulled["checkpoints"],
        serde_json::json!(["base@1", "ner-en@1"])
    );
    assert_eq!(
        pulled["bytes_received"].as_u64().unwrap(),
        base["bytes_sent"].as_u64().unwrap() + sent
    );
    let shown = &with(&dst, &["show", "ner-en", "--json"])["checkpoint"];
    assert_eq!(shown["base"], "base@1");
    assert_eq!(shown["kind"], "task");
    assert_eq!(shown["task"], "ner");
    // Exports of both sides are the same bytes, and the tensors are the source folder's.
    for name in ["base", "ner-en"] {
        let a = s.root.join(format!("exp-src-{name}"));
        let b = s.root.join(format!("exp-dst-{name}-{}", url.len()));
        cm(&s.reg, &["export", name, "--out", a.to_str().unwrap()])
            .assert()
            .success();
        cm(&dst, &["export", name, "--out", b.to_str().unwrap()])
            .assert()
            .success();
        for f in ["model.safetensors", "config.json"] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{name}/{f}"
            );
        }
    }
    assert_eq!(
        read_model_tensors(&s.root.join(format!("exp-dst-ner-en-{}", url.len()))),
        read_model_tensors(&s.family[1])
    );
    assert_verify_clean(&s.reg);
    assert_verify_clean(&dst);
    // A vector travels as its definition with its checkpoints and is derived again here.
    let pushed = with(&s.reg, &["push", "origin", "ner-vec", "--json"]);
    assert_eq!(pushed["vectors"], serde_json::json!(["ner-vec@1"]));
    assert_eq!(
        pushed["objects_sent"], 0,
        "its checkpoints are there already"
    );
    let listed = with(&dst, &["ls-remote", "origin", "--json"]);
    assert_eq!(listed["vectors"][0]["name"], "ner-vec");
    let pulled = with(&dst, &["pull", "origin", "ner-vec", "--json"]);
    assert_eq!(pulled["vectors"], serde_json::json!(["ner-vec@1"]));
    let a = &with(&s.reg, &["show", "ner-vec", "--json"])["vector"];
    let b = &with(&dst, &["show", "ner-vec", "--json"])["vector"];
    for k in ["definition", "l2_norm", "tensor_count", "exclude", "kind"] {
        assert_eq!(a[k], b[k], "{k}: {a} / {b}");
    }
    // Pulling again moves nothing.
    let again = with(&dst, &["pull", "origin", "ner-en", "--json"]);
    assert_eq!(again["objects_received"], 0);
    assert_eq!(again["present"], serde_json::json!(["base@1", "ner-en@1"]));
}

#[test]
fn a_folder_remote_round_trips_a_fine_tune_and_moves_only_what_is_missing() {
    let s = Source::new();
    let url = format!("file://{}", s.root.join("remote").display());
    round_trip(&s, &url, &[], &[]);
}

/// Runs `args` and returns its stderr; it must fail with exit 1, one error line and a hint.
fn refused(reg: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = cm(reg, args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("registry at"))
        .collect();
    assert_eq!(lines.len(), 2, "{args:?}: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[1].starts_with("hint: "),
        "{err}"
    );
    err
}

#[test]
fn bad_remotes_and_damaged_objects_are_refused_and_change_nothing() {
    let s = Source::new();
    let remote = s.root.join("remote");
    let url = format!("file://{}", remote.display());
    cm(&s.reg, &["remote", "add", "origin", &url])
        .assert()
        .success();
    cm(&s.reg, &["push", "origin", "ner-en"]).assert().success();

    let dst = s.root.join("dst");
    cm(&dst, &["init"]).assert().success();
    let no_env: &[(&str, &str)] = &[];
    // Unknown schemes, bad bucket names and endpoints are refused when added.
    for bad in [
        vec!["remote", "add", "x", "gs://bucket/p"],
        vec!["remote", "add", "x", "s3://UPPER/p"],
        vec!["remote", "add", "x", "file://relative"],
        vec![
            "remote",
            "add",
            "x",
            "s3://bucket/p",
            "--endpoint",
            "ftp://h",
        ],
    ] {
        refused(&dst, &bad, no_env);
    }
    refused(&dst, &["remote", "remove", "nope"], no_env);
    refused(&dst, &["pull", "nope", "base"], no_env);
    // A folder that holds no registry.
    let empty = s.root.join("empty");
    cm(
        &dst,
        &[
            "remote",
            "add",
            "empty",
            &format!("file://{}", empty.display()),
        ],
    )
    .assert()
    .success();
    let err = refused(&dst, &["ls-remote", "empty"], no_env);
    assert!(err.contains("holds no registry"), "{err}");
    // S3 without credentials, and S3 at an endpoint nobody listens on: the message names no
    // secret.
    let port = free_port();
    cm(
        &dst,
        &[
            "remote",
            "add",
            "s3",
            "s3://bucket/prefix",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--allow-http",
        ],
    )
    .assert()
    .success();
    let err = refused(
        &dst,
        &["ls-remote", "s3"],
        &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")],
    );
    assert!(err.contains("no S3 credentials"), "{err}");
    let secret = "s3cr3t-v4lue-never-printed";
    let started = Instant::now();
    let err = refused(
        &dst,
        &["pull", "s3", "base"],
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ],
    );
    assert!(!err.contains(secret), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "{err}");

    cm(&dst, &["remote", "add", "origin", &url])
        .assert()
        .success();
    let before = snapshot(&dst);
    refused(&dst, &["pull", "origin", "no-such-model"], no_env);
    // An object damaged on the remote: refused by name, nothing added here.
    let objects: Vec<PathBuf> = crate::common::files_under(&remote.join("objects"));
    let victim = objects
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();
    let err = refused(&dst, &["pull", "origin", "ner-en"], no_env);
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains("damaged") && err.contains(&name[..12]),
        "{err}"
    );
    // The registry is as it was; what arrived intact stays staged under tmp/ for the next
    // pull, the damaged object does not.
    let mut after = snapshot(&dst);
    let staged: Vec<String> = after
        .files
        .keys()
        .filter(|f| f.starts_with("tmp/"))
        .cloned()
        .collect();
    assert!(
        !staged.is_empty() && staged.iter().all(|f| !f.ends_with(name)),
        "{staged:?}"
    );
    after.files.retain(|f, _| !f.starts_with("tmp/"));
    assert_eq!(after, before);
    assert_verify_clean(&dst);
    // A push trusts the keys it lists (it does not download to check them): with the damaged
    // object removed from the remote, pushing again puts it back and the pull completes.
    std::fs::remove_file(victim).unwrap();
    cm(&s.reg, &["push", "origin", "ner-en"]).assert().success();
    cm(&dst, &["pull", "origin", "ner-en"]).assert().success();
    assert_verify_clean(&dst);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// moto's S3 server on loopback, stopped when dropped.
pub(crate) struct Moto {
    child: Child,
    port: u16,
    exe: PathBuf,
}

impl Moto {
    pub(crate) fn start() -> Option<Self> {
        let python = crate::common::python();
        let beside = Path::new(&python).with_file_name("moto_server");
        let exe = if beside.is_file() {
            beside
        } else {
            PathBuf::from("moto_server")
        };
        let port = free_port();
        let child = Self::spawn(&exe, port)?;
        let mut m = Self { child, port, exe };
        m.wait_ready().then_some(())?;
        m.create_bucket("crossmerge-test");
        Some(m)
    }

    fn spawn(exe: &Path, port: u16) -> Option<Child> {
        Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new, empty server on the same port, with the test bucket.
    fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(&self.exe, self.port).expect("moto starts again");
        assert!(self.wait_ready(), "moto did not come back");
        self.create_bucket("crossmerge-test");
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// moto takes an unsigned `PUT /bucket`.
    fn create_bucket(&mut self, bucket: &str) {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn an_s3_remote_round_trips_through_a_real_server() {
    let Some(moto) = Moto::start() else {
        skipped(
            "remote::an_s3_remote_round_trips_through_a_real_server",
            "moto_server (pip install \"moto[server]\") is not installed beside $CROSSMERGE_PYTHON or on PATH",
        );
        return;
    };
    let s = Source::new();
    let endpoint = moto.endpoint();
    round_trip(
        &s,
        "s3://crossmerge-test/team/registry",
        &["--endpoint", &endpoint, "--allow-http"],
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
}

/// Credentials moto accepts (it checks none).
pub(crate) const TEST_KEYS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

fn with_keys(mut c: assert_cmd::Command) -> assert_cmd::Command {
    for (k, v) in TEST_KEYS {
        c.env(k, v);
    }
    c
}

/// `remote add s3 URL --endpoint ENDPOINT --allow-http` in `reg`.
pub(crate) fn add_s3(reg: &Path, url: &str, endpoint: &str) {
    cm(
        reg,
        &[
            "remote",
            "add",
            "s3",
            url,
            "--endpoint",
            endpoint,
            "--allow-http",
        ],
    )
    .assert()
    .success();
}

fn spawn(reg: &Path, args: &[&str]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crossmerge"));
    c.arg("--quiet").args(args).arg("--registry").arg(reg);
    for (k, v) in TEST_KEYS {
        c.env(k, v);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn concurrent_pushes_a_killed_server_and_killed_pulls_lose_nothing() {
    let Some(mut moto) = Moto::start() else {
        skipped(
            "remote::concurrent_pushes_a_killed_server_and_killed_pulls_lose_nothing",
            "moto_server (pip install \"moto[server]\") is not installed beside $CROSSMERGE_PYTHON or on PATH",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fam = crossmerge_synth::write_family(
        &dir.path().join("family"),
        &crossmerge_synth::FamilySpec::new(crate::common::medium_shape(), 4),
    )
    .unwrap();
    // Four registries, each with the base and one fine-tune.
    let url = "s3://crossmerge-test/shared";
    let mut regs = Vec::new();
    for (i, ft) in fam[1..].iter().enumerate() {
        let reg = dir.path().join(format!("src{i}"));
        cm(
            &reg,
            &[
                "register",
                fam[0].to_str().unwrap(),
                "--name",
                "base",
                "--kind",
                "base",
            ],
        )
        .assert()
        .success();
        let name = format!("lm-{i}");
        cm(
            &reg,
            &[
                "register",
                ft.to_str().unwrap(),
                "--name",
                &name,
                "--kind",
                "language",
                "--language",
                ["es", "de", "fr", "hi"][i],
                "--base",
                "base",
            ],
        )
        .assert()
        .success();
        add_s3(&reg, url, &moto.endpoint());
        regs.push((reg, name));
    }
    // Four processes push at once (the same base from each, a different fine-tune).
    let children: Vec<Child> = regs
        .iter()
        .map(|(reg, name)| spawn(reg, &["push", "s3", name]))
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dst = dir.path().join("dst");
    cm(&dst, &["init"]).assert().success();
    let endpoint = moto.endpoint();
    add_s3(&dst, url, &endpoint);
    let names: Vec<&str> = regs.iter().map(|(_, n)| n.as_str()).collect();
    let mut pull = vec!["pull", "s3"];
    pull.extend(&names);
    let mut pull_json = pull.clone();
    pull_json.push("--json");
    let out = with_keys(cm(&dst, &pull_json)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = serde_json::from_slice::<Value>(&out.stdout).unwrap()["bytes_received"]
        .as_u64()
        .unwrap();
    assert_verify_clean(&dst);
    for (i, name) in names.iter().enumerate() {
        let out = dir.path().join(format!("exp-{name}"));
        cm(&dst, &["export", name, "--out", out.to_str().unwrap()])
            .assert()
            .success();
        assert_eq!(read_model_tensors(&out), read_model_tensors(&fam[i + 1]));
    }

    // A pull killed at random moments leaves a valid registry; the next one completes.
    let fresh = dir.path().join("fresh");
    cm(&fresh, &["init"]).assert().success();
    add_s3(&fresh, url, &endpoint);
    let mut rng = crate::toy::Rng(14);
    let mut landed = 0;
    for _ in 0..5 {
        let mut child = spawn(&fresh, &pull);
        std::thread::sleep(Duration::from_millis(20 + rng.next() % 300));
        if child.try_wait().unwrap().is_none() {
            landed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_verify_clean(&fresh);
    }
    assert!(
        landed >= 3,
        "only {landed} kills landed before the pull ended"
    );
    // What arrived before the kills (staged objects, committed checkpoints) is not fetched
    // again.
    let staged = crate::common::files_under(&fresh.join("tmp"))
        .iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "objects"))
        .count();
    let committed = crate::common::bin()
        .args(["list", "--json", "--registry"])
        .arg(&fresh)
        .output()
        .unwrap();
    let committed = serde_json::from_slice::<Value>(&committed.stdout).unwrap();
    let out = with_keys(cm(&fresh, &pull_json)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received = serde_json::from_slice::<Value>(&out.stdout).unwrap()["bytes_received"]
        .as_u64()
        .unwrap();
    if staged > 0 || !committed.as_array().unwrap().is_empty() {
        assert!(
            received < total,
            "{received} of {total} bytes fetched again ({staged} staged)"
        );
    }
    eprintln!(
        "resumed pull: {staged} objects staged before it, {received} of {total} bytes fetched"
    );
    assert_verify_clean(&fresh);
    let left: Vec<PathBuf> = crate::common::files_under(&fresh.join("tmp"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/pull-"))
        .collect();
    assert!(
        left.is_empty(),
        "a completed pull leaves no staging behind: {left:?}"
    );
    let listed = crate::common::bin()
        .args(["list", "--json", "--registry"])
        .arg(&fresh)
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 5, "{listed}");

    // The server dies in the middle of a push (to a new, empty server: moto keeps nothing):
    // the push fails with one line and a hint; with the server back, the push run again
    // completes and a fresh registry pulls what it sent.
    let (reg, name) = &regs[0];
    moto.restart();
    let mut child = spawn(reg, &["push", "s3", name]);
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the push ended before the server was stopped"
    );
    moto.stop();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("hint: "), "{err}");
    moto.restart();
    with_keys(cm(reg, &["push", "s3", name])).assert().success();
    let again = dir.path().join("again");
    cm(&again, &["init"]).assert().success();
    add_s3(&again, url, &endpoint);
    with_keys(cm(&again, &["pull", "s3", name]))
        .assert()
        .success();
    assert_verify_clean(&again);
}

/// MiniLM's folder with every F32 tensor nudged in its lowest mantissa bits (a fine-tune as
/// far as storage goes: the same names, shapes and nearly the same values).
fn minilm_fine_tune(minilm: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let tensors = crate::common::read_safetensors(&minilm.join("model.safetensors"));
    let mut written = Vec::new();
    for (i, (name, (dtype, shape, mut bytes))) in tensors.into_iter().enumerate() {
        if dtype == "F32" {
            for (j, b) in bytes.iter_mut().step_by(4).enumerate() {
                *b ^= ((i * 7 + j * 13) % 5) as u8;
            }
        }
        let dtype = crossmerge::Dtype::from_name(&dtype).unwrap();
        written.push((name, dtype, shape, bytes));
    }
    let refs: Vec<(&str, crossmerge::Dtype, Vec<u64>, Vec<u8>)> = written
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    crate::common::write_safetensors(&out.join("model.safetensors"), &refs);
    for f in MINILM_FILES {
        std::fs::copy(minilm.join(f), out.join(f)).unwrap();
    }
}

const MINILM_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

#[test]
fn the_shared_minilm_and_a_fine_tune_round_trip_bit_for_bit() {
    let shared = crate::common::require_shared!();
    let minilm = crate::common::minilm(&shared);
    let dir = tempfile::tempdir().unwrap();
    let ft = dir.path().join("minilm-ft");
    minilm_fine_tune(&minilm, &ft);
    let src = dir.path().join("src");
    cm(
        &src,
        &[
            "register",
            minilm.to_str().unwrap(),
            "--name",
            "minilm",
            "--kind",
            "base",
        ],
    )
    .assert()
    .success();
    cm(
        &src,
        &[
            "register",
            ft.to_str().unwrap(),
            "--name",
            "minilm-ft",
            "--kind",
            "task",
            "--task",
            "pos",
            "--base",
            "minilm",
        ],
    )
    .assert()
    .success();
    let moto = Moto::start();
    let mut remotes = vec![(
        "folder",
        format!("file://{}", dir.path().join("remote").display()),
        Vec::new(),
    )];
    match &moto {
        Some(m) => remotes.push((
            "s3",
            "s3://crossmerge-test/minilm".to_owned(),
            vec![
                "--endpoint".to_owned(),
                m.endpoint(),
                "--allow-http".to_owned(),
            ],
        )),
        None => skipped(
            "remote::the_shared_minilm_and_a_fine_tune_round_trip_bit_for_bit (S3 half)",
            "moto_server is not installed beside $CROSSMERGE_PYTHON or on PATH",
        ),
    }
    for (name, url, extra) in &remotes {
        let mut add = vec!["remote", "add", name, url.as_str()];
        add.extend(extra.iter().map(String::as_str));
        cm(&src, &add).assert().success();
        with_keys(cm(&src, &["push", name, "minilm-ft"]))
            .assert()
            .success();
        let dst = dir.path().join(format!("dst-{name}"));
        cm(&dst, &["init"]).assert().success();
        cm(&dst, &add).assert().success();
        with_keys(cm(&dst, &["pull", name, "minilm-ft"]))
            .assert()
            .success();
        for (reference, folder) in [("minilm", &minilm), ("minilm-ft", &ft)] {
            let out = dir.path().join(format!("exp-{name}-{reference}"));
            cm(&dst, &["export", reference, "--out", out.to_str().unwrap()])
                .assert()
                .success();
            assert_eq!(
                read_model_tensors(&out),
                read_model_tensors(folder),
                "{reference} through {name}"
            );
            for f in MINILM_FILES {
                assert_eq!(
                    std::fs::read(folder.join(f)).unwrap(),
                    std::fs::read(out.join(f)).unwrap(),
                    "{reference}/{f} through {name}"
                );
            }
        }
        assert_verify_clean(&dst);
    }
    assert_verify_clean(&src);
}
