//! `crossmerge serve` against a registry the toy study filled (checkpoints of every kind,
//! vectors, merge sweeps, evaluations, a study): every page and API route over real HTTP, the
//! API bodies byte for byte against the CLI's `--json`, hostile names and paths, a server that
//! keeps serving while another process registers and merges, and a real headless Chromium
//! clicking through list → checkpoint → lineage → evaluation → trace.
#![allow(clippy::many_single_char_names)] // t: the setup, a: the address, b: the browser, …

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{bin, cm, skipped};
use crate::study::{Setup, evaluation_ids};

/// A `crossmerge serve` child, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(reg: &Path, studies: &[&Path]) -> Self {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("crossmerge"));
        cmd.args(["serve", "--registry", reg.to_str().unwrap(), "--port", "0"]);
        for s in studies {
            cmd.args(["--study", s.to_str().unwrap()]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("no address in `{line}`"))
            .parse()
            .unwrap();
        Self { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response: status, lower-cased headers, body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a fresh connection, the path sent exactly as given (no
/// normalisation, so `..` and `%2F` reach the server as an attacker would send them).
fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    let _ = write!(req, "Content-Length: {}\r\n\r\n{payload}", payload.len());
    s.write_all(req.as_bytes()).unwrap();
    // Read the head, then exactly the body its headers announce (chromedriver keeps the
    // connection open whatever `Connection: close` asks).
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the connection closed before a response head: {raw:?}"
        );
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    loop {
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + size]);
        b = &b[end + 4 + size..];
    }
}

fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, None)
}

/// A page that must answer 200 with HTML.
fn page(addr: SocketAddr, path: &str) -> String {
    let r = get(addr, path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/html"),
        "{path}"
    );
    r.text()
}

/// The CLI's stdout for `args` on `reg`, which must succeed.
fn cli(reg: &Path, args: &[&str]) -> String {
    let out = cm(reg, args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `path` with every byte outside a small set percent-encoded, as the pages write links.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/@=+,:".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `s` as a query value (`+` is a space there, so it is encoded too).
fn qenc(s: &str) -> String {
    enc(s).replace('+', "%2B").replace('/', "%2F")
}

/// The toy study's registry and results, made once for every test here.
fn studied() -> &'static Setup {
    static SETUP: std::sync::OnceLock<Setup> = std::sync::OnceLock::new();
    SETUP.get_or_init(|| {
        let t = Setup::new();
        t.study(&[]).assert().success();
        t
    })
}

/// A registry with hostile tags and recipe text, a copy of the studied one (the shared one
/// is read by the other tests). Names cannot hold markup: `register` refuses them.
fn hostile_copy(dir: &Path) -> PathBuf {
    let t = studied();
    let reg = dir.join("reg");
    crate::common::copy_dir(&t.reg, &reg);
    let model = dir.join("tiny-export");
    cli(&reg, &["export", "tiny", "--out", model.to_str().unwrap()]);
    let refused = cm(
        &reg,
        &[
            "register",
            model.to_str().unwrap(),
            "--name",
            SCRIPT,
            "--kind",
            "base",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("hint:"));
    cli(
        &reg,
        &[
            "register",
            model.to_str().unwrap(),
            "--name",
            "hostile",
            "--kind",
            "task",
            "--task",
            "pos",
            "--base",
            "tiny",
            "--tag",
            &format!("note={SCRIPT}"),
            "--tag",
            "quote=\"'&<b>",
        ],
    );
    let vectors: Value =
        serde_json::from_str(&cli(&reg, &["list", "--vectors", "--json"])).unwrap();
    let vref = format!(
        "{}@{}",
        vectors[0]["name"].as_str().unwrap(),
        vectors[0]["version"]
    );
    let recipe = dir.join("hostile.toml");
    std::fs::write(
        &recipe,
        format!(
            "# {SCRIPT}\nname = \"hostile-merge\"\nmethod = \"task_arithmetic\"\nbase = \"tiny\"\n\n\
             [[inputs]]\nvector = \"{v}\"\nweight = 0.5\n\n[heads]\nfrom = \"{f}\"\n",
            v = vref,
            f = vectors[0]["from"].as_str().unwrap()
        ),
    )
    .unwrap();
    cli(&reg, &["merge", recipe.to_str().unwrap()]);
    reg
}

const SCRIPT: &str = "<script>alert(1)</script>";

#[test]
fn every_api_route_equals_the_cli_json_and_every_page_renders_it() {
    let t = studied();
    let server = Server::start(&t.reg, &[&t.root.join("out")]);
    let a = server.addr;
    let reg = &t.reg;

    // The API, byte for byte against the CLI's --json.
    let checkpoints: Value = serde_json::from_str(&cli(reg, &["list", "--json"])).unwrap();
    let refs: Vec<String> = checkpoints
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{}@{}", c["name"].as_str().unwrap(), c["version"]))
        .collect();
    let kinds: BTreeSet<&str> = checkpoints
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["base", "language", "merged", "task"].into_iter().collect(),
        "the toy study makes every kind"
    );
    let merged = checkpoints
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "merged")
        .map(|c| format!("{}@{}", c["name"].as_str().unwrap(), c["version"]))
        .unwrap();
    let trained = "ner-en@1";
    let vectors: Value = serde_json::from_str(&cli(reg, &["list", "--vectors", "--json"])).unwrap();
    let vrefs: Vec<String> = vectors
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("{}@{}", v["name"].as_str().unwrap(), v["version"]))
        .collect();
    let langs: Vec<&String> = vrefs.iter().filter(|v| v.contains("language")).collect();
    assert!(langs.len() >= 3, "{vrefs:?}");
    let evals: Value = serde_json::from_str(&cli(reg, &["report", "evals", "--json"])).unwrap();
    let eval_id = evals[0]["id"].as_str().unwrap().to_owned();
    let cases: Vec<(String, Vec<String>)> = vec![
        ("/api/checkpoints".into(), vec!["list", "--json"]),
        (
            "/api/checkpoints?kind=merged".into(),
            vec!["list", "--kind", "merged", "--json"],
        ),
        (
            "/api/checkpoints?task=pos&language=".into(),
            vec!["list", "--task", "pos", "--json"],
        ),
        (
            format!("/api/checkpoints/{}", enc(&merged)),
            vec!["show", &merged, "--json"],
        ),
        (
            format!("/api/checkpoints/{}?tensors=true", enc(trained)),
            vec!["show", trained, "--json", "--tensors"],
        ),
        ("/api/vectors".into(), vec!["list", "--vectors", "--json"]),
        (
            format!("/api/vectors/{}", enc(&vrefs[0])),
            vec!["show", &vrefs[0], "--json"],
        ),
        (
            format!(
                "/api/compare?vectors={}&vectors={}&vectors={}&by=layer",
                qenc(langs[0]),
                qenc(langs[1]),
                qenc(langs[2])
            ),
            vec![
                "compare", langs[0], langs[1], langs[2], "--by", "layer", "--json",
            ],
        ),
        (
            format!(
                "/api/compare?vectors={},{}&reference={}&by=module",
                qenc(langs[0]),
                qenc(langs[1]),
                qenc(langs[2])
            ),
            vec![
                "compare",
                langs[0],
                langs[1],
                "--reference",
                langs[2],
                "--by",
                "module",
                "--json",
            ],
        ),
        ("/api/evaluations".into(), vec!["report", "evals", "--json"]),
        (
            "/api/evaluations?task=ner&language=de".into(),
            vec![
                "report",
                "evals",
                "--task",
                "ner",
                "--language",
                "de",
                "--json",
            ],
        ),
        (
            format!("/api/evaluations?checkpoint={}", qenc(&merged)),
            vec!["report", "evals", "--checkpoint", &merged, "--json"],
        ),
        (
            format!("/api/trace/{eval_id}"),
            vec!["trace", &eval_id, "--json"],
        ),
        (
            format!("/api/trace/{}", &eval_id[..8]),
            vec!["trace", &eval_id[..8], "--json"],
        ),
        ("/api/du".into(), vec!["du", "--json"]),
    ]
    .into_iter()
    .map(|(p, args)| (p, args.into_iter().map(str::to_owned).collect()))
    .collect();
    for (path, args) in &cases {
        let r = get(a, path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(r.text(), cli(reg, &args), "{path} differs from `{args:?}`");
    }
    let results = std::fs::read_to_string(t.root.join("out/results.json")).unwrap();
    assert_eq!(get(a, "/api/studies/toy").text(), results);
    assert_eq!(get(a, "/api/studies").text(), "[\n  \"toy\"\n]\n");
    let lineage: Value = serde_json::from_str(&get(a, "/api/lineage").text()).unwrap();
    let nodes = lineage["nodes"].as_array().unwrap();
    for r in refs.iter().chain(&vrefs) {
        assert!(
            nodes.iter().any(|n| n["reference"] == *r.as_str()),
            "{r} not in the lineage"
        );
    }
    // Every merged checkpoint has inputs drawn into it; every vector its two checkpoints.
    let edges = lineage["edges"].as_array().unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let into = edges.iter().filter(|e| e[1] == i).count();
        match (n["kind"].as_str().unwrap(), n["detail"].as_str().unwrap()) {
            ("checkpoint", "merged") => assert!(into >= 1, "{n}"),
            ("vector", _) => assert_eq!(into, 2, "{n}"),
            _ => {}
        }
    }

    // Pages: each shows what its API returns.
    let overview = page(a, "/");
    assert!(
        overview.contains(&format!(">{}<", refs.len())),
        "{overview}"
    );
    let list = page(a, "/checkpoints");
    for r in &refs {
        assert!(
            list.contains(&format!("href=\"/checkpoints/{}\"", enc(r))),
            "{r}"
        );
    }
    let only_language = page(a, "/checkpoints?kind=language");
    assert!(!only_language.contains(&format!("href=\"/checkpoints/{}\"", enc(&merged))));
    let based = page(a, "/checkpoints?base=tiny%401");
    assert!(based.contains("ner-en@1") && !based.contains(">tiny@1</a></td><td><span"));
    let m = page(a, &format!("/checkpoints/{}", enc(&merged)));
    assert!(
        m.contains("Made by merging") && m.contains("id=\"recipe\""),
        "{m}"
    );
    assert!(
        m.contains("href=\"/vectors/"),
        "a merge's inputs link to their vectors"
    );
    assert!(m.contains("id=\"tensors\"") && m.contains("id=\"config\""));
    let tr = page(a, &format!("/checkpoints/{}", enc(trained)));
    assert!(
        tr.contains("Made by training") && tr.contains("training loss"),
        "loss curve"
    );
    assert!(tr.contains("<svg"), "inline SVG");
    let lin = page(a, "/lineage");
    for r in &refs {
        assert!(
            lin.contains(&format!("href=\"/checkpoints/{}\"", enc(r))),
            "{r}"
        );
    }
    let vp = page(a, "/vectors");
    for v in &vrefs {
        assert!(vp.contains(&format!("href=\"/vectors/{}\"", enc(v))), "{v}");
    }
    let v = page(a, &format!("/vectors/{}", enc(&vrefs[0])));
    assert!(v.contains("Norms by tensor"));
    let cmp = page(
        a,
        &format!(
            "/compare?vectors={}&vectors={}&by=layer&reference={}",
            qenc(langs[0]),
            qenc(langs[1]),
            qenc(langs[2])
        ),
    );
    assert!(
        cmp.matches("<svg").count() == 2,
        "a heatmap and a line chart"
    );
    assert!(cmp.contains("layer.0"));
    let ev = page(a, "/evaluations");
    for e in evals.as_array().unwrap() {
        let id = e["id"].as_str().unwrap();
        assert!(ev.contains(&format!("href=\"/evaluations/{id}\"")), "{id}");
    }
    // Sorting by a metric orders the rows by it.
    let sorted = page(
        a,
        "/evaluations?task=ner&sort=metric%3Aentity_f1&order=desc",
    );
    let f1s: Vec<f64> = evals
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["task"] == "ner")
        .map(|e| e["metrics"]["entity_f1"].as_f64().unwrap())
        .collect();
    let mut expected = f1s.clone();
    expected.sort_by(|x, y| y.total_cmp(x));
    let shown: Vec<f64> = sorted
        .split("<tbody>")
        .nth(1)
        .unwrap()
        .split("<tr>")
        .skip(1)
        .map(|row| {
            // The metric columns of NER rows come first of the numbers, in name order:
            // entity_f1, entity_precision, entity_recall, token_accuracy.
            let cells: Vec<&str> = row.split("<td class=\"num\">").skip(1).collect();
            cells[0].split('<').next().unwrap().parse().unwrap()
        })
        .collect();
    let rounded: Vec<f64> = expected
        .iter()
        .map(|v| format!("{v:.4}").parse().unwrap())
        .collect();
    assert_eq!(shown, rounded);
    assert_eq!(get(a, "/evaluations?sort=nonsense").status, 400);
    // The CSV download is `report evals --csv`'s file.
    let csv_file = t.root.join("evals.csv");
    cli(
        reg,
        &[
            "report",
            "evals",
            "--task",
            "pos",
            "--csv",
            csv_file.to_str().unwrap(),
        ],
    );
    let csv = get(a, "/evaluations.csv?task=pos");
    assert_eq!(csv.status, 200);
    assert!(
        csv.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );
    assert_eq!(csv.text(), std::fs::read_to_string(&csv_file).unwrap());
    let trace = page(a, &format!("/evaluations/{eval_id}"));
    assert!(trace.contains("id=\"trace\""));
    assert!(trace.contains(&format!(
        "href=\"/checkpoints/{}\"",
        enc(evals[0]["checkpoint"].as_str().unwrap())
    )));
    assert!(page(a, "/studies").contains("href=\"/studies/toy\""));
    // Every number of the study links to the evaluation that measured it.
    let study = page(a, "/studies/toy");
    let ids = evaluation_ids(&serde_json::from_str(&results).unwrap());
    assert!(!ids.is_empty());
    for id in &ids {
        assert!(
            study.contains(&format!("href=\"/evaluations/{id}\"")),
            "{id}"
        );
    }
    assert!(
        study.matches("<svg").count() >= 3,
        "λ curves, heatmap, gain plot"
    );
    // No page may run a script, whatever reached it.
    let csp = get(a, "/checkpoints");
    assert!(
        csp.header("content-security-policy")
            .is_some_and(|p| p.contains("script-src 'none'")),
        "{:?}",
        csp.headers
    );
    assert_eq!(csp.header("x-content-type-options"), Some("nosniff"));
    let css = get(a, "/style.css");
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
}

#[test]
fn hostile_names_render_as_text_and_hostile_paths_get_404() {
    let dir = tempfile::tempdir().unwrap();
    let reg = hostile_copy(dir.path());
    let before = crate::common::snapshot(&reg);
    let server = Server::start(&reg, &[]);
    let a = server.addr;
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    for path in [
        "/checkpoints",
        "/checkpoints/hostile@1",
        "/checkpoints/hostile-merge@1",
    ] {
        let body = page(a, path);
        assert!(!body.contains("<script>"), "{path} holds a live script tag");
        assert!(body.contains(escaped), "{path}");
    }
    let c = page(a, "/checkpoints/hostile@1");
    assert!(c.contains(&format!("note={escaped}")), "{c}");
    assert!(c.contains("quote=&quot;'&amp;&lt;b&gt;"), "{c}");
    let m = page(a, "/checkpoints/hostile-merge@1");
    assert!(
        m.contains(&format!("# {escaped}")),
        "the recipe text, escaped"
    );
    // The API carries the tag as JSON data, as `show --json` does.
    assert_eq!(
        get(a, "/api/checkpoints/hostile@1").text(),
        cli(&reg, &["show", "hostile@1", "--json"])
    );
    // Paths: only names and ids reach the catalog; nothing is a file.
    let root = reg.to_str().unwrap();
    for path in [
        "/checkpoints/..",
        "/checkpoints/../../../../etc/passwd",
        "/checkpoints/..%2F..%2F..%2Fetc%2Fpasswd",
        "/checkpoints/%2e%2e%2fcatalog.sqlite3",
        "/api/checkpoints/..%2FFORMAT",
        "/api/checkpoints/%2Fetc%2Fpasswd",
        "/vectors/..%2F..%2Fcatalog.sqlite3",
        "/api/vectors/../objects",
        "/evaluations/..%2F..%2Fcatalog.sqlite3",
        "/evaluations/0000000000000000000000000000000000000000000000000000000000000000",
        "/api/trace/ffffffffffff",
        "/api/trace/..%2Fcatalog.sqlite3",
        "/studies/..%2F..%2Fetc",
        "/api/studies/toy",
        "/style.css/..%2Fcatalog.sqlite3",
        "/objects",
        "/catalog.sqlite3",
        "/checkpoints/nope@1",
        "/api/checkpoints/deadbeefdeadbeef",
    ] {
        let r = get(a, path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        let body = r.text();
        assert!(!body.contains(root), "{path} shows the registry's path");
        assert!(!body.contains("root:"), "{path} shows /etc/passwd");
        assert!(!body.contains("SQLite format"), "{path}");
    }
    // No write endpoint: every other method is refused.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in [
            "/checkpoints",
            "/api/checkpoints",
            "/api/checkpoints/tiny@1",
        ] {
            let r = request(a, method, path, Some(&json!({"name": "x"})));
            assert_eq!(r.status, 405, "{method} {path}");
        }
    }
    assert_eq!(get(a, "/api/checkpoints?kind=nonsense").status, 400);
    assert_eq!(get(a, "/api/compare?vectors=a").status, 400);
    assert_eq!(get(a, "/api/compare?vectors=a,b&by=row").status, 400);
    drop(server);
    // Serving wrote nothing into the registry.
    assert_eq!(crate::common::snapshot(&reg), before);
}

#[test]
fn the_server_keeps_serving_while_another_process_registers_and_merges() {
    let t = studied();
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("reg");
    crate::common::copy_dir(&t.reg, &reg);
    let model = dir.path().join("tiny-export");
    cli(&reg, &["export", "tiny", "--out", model.to_str().unwrap()]);
    let vectors: Value =
        serde_json::from_str(&cli(&reg, &["list", "--vectors", "--json"])).unwrap();
    let vrefs: Vec<String> = vectors
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("{}@{}", v["name"].as_str().unwrap(), v["version"]))
        .collect();
    let server = Server::start(&reg, &[]);
    let a = server.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|k| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let paths = [
                    "/checkpoints",
                    "/api/checkpoints",
                    "/lineage",
                    "/evaluations",
                    "/api/du",
                ];
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let p = paths[(n + k) % paths.len()];
                    let r = get(a, p);
                    assert_eq!(r.status, 200, "{p} during writes: {}", r.text());
                    n += 1;
                }
                n
            })
        })
        .collect();
    let started = Instant::now();
    for i in 0..4 {
        cli(
            &reg,
            &[
                "register",
                model.to_str().unwrap(),
                "--name",
                &format!("written-{i}"),
                "--kind",
                "language",
                "--language",
                "xx",
                "--base",
                "tiny",
            ],
        );
        let recipe = dir.path().join(format!("m{i}.toml"));
        std::fs::write(
            &recipe,
            format!(
                "name = \"live-merge-{i}\"\nmethod = \"task_arithmetic\"\nbase = \"tiny\"\n\n\
                 [[inputs]]\nvector = \"{v}\"\nweight = {}\n\n[heads]\nfrom = \"{f}\"\n",
                0.1 * f64::from(i + 1),
                v = vrefs[0],
                f = vectors[0]["from"].as_str().unwrap()
            ),
        )
        .unwrap();
        cli(&reg, &["merge", recipe.to_str().unwrap()]);
        // What was just written is served at once.
        let list = get(a, "/api/checkpoints").text();
        assert!(list.contains(&format!("\"written-{i}\"")));
        assert!(list.contains(&format!("\"live-merge-{i}\"")));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: usize = readers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(served > 0);
    eprintln!(
        "served {served} requests in {:.1} s while registering and merging",
        started.elapsed().as_secs_f64()
    );
    crate::common::assert_verify_clean(&reg);
}

#[test]
fn serve_refuses_what_it_cannot_serve_with_one_line_and_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing");
    let out = bin()
        .args([
            "serve",
            "--registry",
            missing.to_str().unwrap(),
            "--port",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.lines().count() == 2 && err.contains("hint:"), "{err}");
    assert!(!missing.exists(), "serve never creates a registry");
    let t = studied();
    let bad = dir.path().join("not-a-study");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("results.json"), "{\"study\": 1}").unwrap();
    let out = cm(
        &t.reg,
        &["serve", "--port", "0", "--study", bad.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("results.json") && err.contains("hint:"),
        "{err}"
    );
}

/// A minimal `WebDriver` client (W3C protocol over HTTP/JSON) for chromedriver.
struct Browser {
    _driver: Driver,
    addr: SocketAddr,
    session: String,
}

/// chromedriver in a process group of its own, killed with every Chromium it started when
/// dropped (also when the test fails before a session exists), so that no browser outlives
/// the test.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // `-s KILL --` spelled out: procps-ng's kill reads `kill -KILL -1234` as the option
        // `-1` and sends SIGKILL to pid -1, that is to every process on the machine (it took
        // CI down whenever chromedriver's pid began with 1).
        let group = self.0.id();
        if group > 1 {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{group}")])
                .status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Browser {
    fn start(profile: &Path) -> Option<Self> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            skipped(
                "serve::a_browser",
                "Debian's chromium and chromium-driver are not installed (.ci/run installs them as root)",
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Driver(
            Command::new(driver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap(),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let r = request(addr, "POST", "/session", Some(&caps));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Some(Self {
            _driver: driver,
            addr,
            session,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let r = request(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        );
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(r.status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn count(&self, css: &str) -> usize {
        self.call(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .unwrap()
        .len()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(&json!({})));
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap().to_owned()
    }

    fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes Chromium cleanly; the driver's group is killed after (field drop).
        let _ = request(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| u32::from(value(c))).collect();
        let n = v.iter().fold(0u32, |acc, x| (acc << 6) | x) << (6 * (4 - v.len()));
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..v.len()]);
    }
    out
}

#[test]
fn a_browser_goes_from_the_list_to_a_checkpoint_its_lineage_an_evaluation_and_its_trace() {
    let t = studied();
    let profile = tempfile::tempdir().unwrap();
    let Some(b) = Browser::start(profile.path()) else {
        return;
    };
    let server = Server::start(&t.reg, &[&t.root.join("out")]);
    let base = format!("http://{}", server.addr);
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/serve-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    b.go(&format!("{base}/checkpoints"));
    assert_eq!(b.text("h1"), "Checkpoints");
    let rows = b.count("#checkpoints tbody tr");
    let listed: Value = serde_json::from_str(&cli(&t.reg, &["list", "--json"])).unwrap();
    assert_eq!(rows, listed.as_array().unwrap().len());
    b.screenshot(&shots.join("1-checkpoints.png"));

    // A merged checkpoint, by clicking its link in the list.
    let merged = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "merged")
        .map(|c| format!("{}@{}", c["name"].as_str().unwrap(), c["version"]))
        .unwrap();
    b.click(&format!(
        "#checkpoints a[href=\"/checkpoints/{}\"]",
        enc(&merged)
    ));
    assert_eq!(b.text("h1"), merged);
    assert!(b.text("#recipe").contains("task_arithmetic"));
    assert!(b.count("#inputs a") >= 1);
    b.screenshot(&shots.join("2-checkpoint.png"));

    // The lineage graph, from the navigation; a node is a link to its page.
    b.click("header a[href=\"/lineage\"]");
    assert_eq!(b.text("h1"), "Lineage");
    assert!(b.count("#lineage svg a.node") >= rows);
    b.screenshot(&shots.join("3-lineage.png"));
    b.click("#lineage a.node[href=\"/checkpoints/ner-en@1\"]");
    assert_eq!(b.text("h1"), "ner-en@1");

    // An evaluation of that checkpoint, then its trace.
    b.click("#evaluations tbody a[href^=\"/evaluations/\"]");
    assert!(b.url().contains("/evaluations/"));
    assert!(b.text("h1").starts_with("Evaluation "));
    assert!(b.text("#evaluation").contains("ner-en@1"));
    let trace = b.text("#trace");
    assert!(
        trace.contains("ner-en@1") && trace.contains("tiny@1"),
        "{trace}"
    );
    b.screenshot(&shots.join("4-trace.png"));

    // The study page, with its plots.
    b.go(&format!("{base}/studies/toy"));
    assert!(b.count(".plot svg") >= 3);
    b.screenshot(&shots.join("5-study.png"));

    // On a phone's width, the pages fit: wide tables and graphs scroll in their own boxes.
    b.call(
        "POST",
        "/window/rect",
        Some(&json!({"width": 390, "height": 844})),
    );
    for (path, shot) in [
        ("/checkpoints", "6-phone-checkpoints.png"),
        (
            &*format!("/checkpoints/{}", enc(&merged)),
            "7-phone-checkpoint.png",
        ),
        ("/evaluations", "8-phone-evaluations.png"),
    ] {
        b.go(&format!("{base}{path}"));
        let fits = b.call(
            "POST",
            "/execute/sync",
            Some(&json!({
                "script": "return document.documentElement.scrollWidth <= window.innerWidth + 1",
                "args": []
            })),
        );
        assert_eq!(fits, json!(true), "{path} is wider than a phone's screen");
        b.screenshot(&shots.join(shot));
    }
    eprintln!("screenshots in {}", shots.display());
}
