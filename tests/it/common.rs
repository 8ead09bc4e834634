//! Helpers: the shared data folder, tiny checkpoints built in-process, safetensors I/O, and
//! snapshots of a registry's logical state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crossmerge::{CheckpointFilter, Dtype, NoProgress, Registry};
use crossmerge_synth::{FamilySpec, Shape, write_family};

/// Says that a check skipped, and why: on stderr (captured with the test's output) and as a
/// line of `target/skipped-checks.txt`, which `.ci/run` prints at the end so no skip goes
/// unseen.
pub fn skipped(check: &str, why: &str) {
    use std::io::Write;
    eprintln!("skipping {check}: {why}");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let _ = std::fs::create_dir_all(&target);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target.join("skipped-checks.txt"))
    {
        let _ = writeln!(f, "{check}: {why}");
    }
}

/// The Python the independent checks run: `$CROSSMERGE_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("CROSSMERGE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `../shared` beside the crate, if present.
pub fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.join("models/all-MiniLM-L6-v2/model.safetensors")
        .is_file()
    {
        Some(p)
    } else {
        skipped(
            "tests on real models and data",
            "../shared (with models/all-MiniLM-L6-v2) is absent",
        );
        None
    }
}

/// Returns from the test when `../shared` is absent.
macro_rules! require_shared {
    () => {
        match $crate::common::shared() {
            Some(p) => p,
            None => return,
        }
    };
}
pub(crate) use require_shared;

pub fn minilm(shared: &Path) -> PathBuf {
    shared.join("models/all-MiniLM-L6-v2")
}

pub fn bin() -> assert_cmd::Command {
    assert_cmd::Command::new(env!("CARGO_BIN_EXE_crossmerge"))
}

/// `crossmerge --registry REG --quiet ARGS…`. A registry named on the command line must exist
/// (`init` makes it): so that tests can start from an empty folder, REG is initialised first
/// when it is absent or empty (a folder of other files is left alone, for the tests that
/// check such folders are refused).
pub fn cm(reg: &Path, args: &[&str]) -> assert_cmd::Command {
    let empty = std::fs::read_dir(reg).map_or(true, |mut d| d.next().is_none());
    if empty && args.first() != Some(&"init") {
        bin()
            .arg("--registry")
            .arg(reg)
            .args(["--quiet", "init"])
            .assert()
            .success();
    }
    let mut c = bin();
    c.arg("--registry").arg(reg).arg("--quiet").args(args);
    c
}

/// A tiny XLM-R-shaped family (base + `n` fine-tunes with relative noise 1e-3).
pub fn tiny_family(dir: &Path, n: usize, head: Option<u64>) -> Vec<PathBuf> {
    write_family(dir, &FamilySpec::new(Shape::TINY, n).head_labels(head)).expect("family written")
}

/// A family of a mid-size shape (about 3.4M parameters, 13.6 MB of F32), big enough that
/// per-object overhead does not dominate sizes.
pub fn medium_shape() -> Shape {
    Shape {
        vocab: 8000,
        hidden: 256,
        layers: 2,
        heads: 4,
        intermediate: 1024,
        max_positions: 130,
        type_vocab: 1,
        bert: false,
    }
}

/// Writes a safetensors file from (name, dtype, shape, bytes).
pub fn write_safetensors(path: &Path, tensors: &[(&str, Dtype, Vec<u64>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            (*name).to_owned(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + bytes.len() as u64]}),
        );
        offset += bytes.len() as u64;
        data.extend_from_slice(bytes);
    }
    write_raw_safetensors(path, &serde_json::to_string(&header).unwrap(), &data);
}

/// Writes a safetensors file from literal header JSON and data (for hostile inputs).
pub fn write_raw_safetensors(path: &Path, header: &str, data: &[u8]) {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// Tensors of a safetensors file: name → (dtype, shape, bytes).
pub fn read_safetensors(path: &Path) -> BTreeMap<String, (String, Vec<u64>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let off = v["data_offsets"].as_array().unwrap();
            let (a, b) = (
                off[0].as_u64().unwrap() as usize,
                off[1].as_u64().unwrap() as usize,
            );
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            (
                k,
                (
                    v["dtype"].as_str().unwrap().to_owned(),
                    shape,
                    data[a..b].to_vec(),
                ),
            )
        })
        .collect()
}

/// Every tensor of a model folder (single file or shards).
pub fn read_model_tensors(dir: &Path) -> BTreeMap<String, (String, Vec<u64>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) == Some("safetensors") {
            out.extend(read_safetensors(&p));
        }
    }
    out
}

/// The logical state of a registry: checkpoints, object rows, object files and their bytes.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub checkpoints: Vec<String>,
    pub objects: Vec<String>,
    pub files: BTreeMap<String, blake3::Hash>,
    pub du_total: (u64, u64),
}

pub fn snapshot(root: &Path) -> Snapshot {
    let reg = Registry::create(root).unwrap();
    let checkpoints = reg
        .list(&CheckpointFilter::default())
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.reference(), c.manifest_id.to_hex()))
        .collect();
    let objects = reg
        .catalog()
        .all_objects()
        .unwrap()
        .iter()
        .map(|o| format!("{o:?}"))
        .collect();
    let mut files = BTreeMap::new();
    for dir in ["objects", "tmp"] {
        for e in files_under(&root.join(dir)) {
            files.insert(
                e.strip_prefix(root).unwrap().display().to_string(),
                blake3::hash(&std::fs::read(&e).unwrap()),
            );
        }
    }
    let du = reg.du().unwrap();
    Snapshot {
        checkpoints,
        objects,
        files,
        du_total: (du.total_logical, du.total_stored),
    }
}

/// Every file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Asserts `verify` finds nothing.
pub fn assert_verify_clean(root: &Path) {
    let reg = Registry::create(root).unwrap();
    let report = reg.verify(&NoProgress).unwrap();
    assert!(report.is_clean(), "verify found: {:#?}", report.findings);
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
