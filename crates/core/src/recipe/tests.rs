use std::path::Path;

use super::*;

const SEED_STUDY: &str = r#"name = "pos-en+es"
method = "task_arithmetic"
base = "xlmr-base"

[[inputs]]
vector = "task/pos-en"
weight = 1.0

[[inputs]]
vector = "language/es"
weight = { sweep = [0.0, 0.5, 1.0] }

[heads]
from = "xlmr-pos-en"

[[parameters]]
match = "*.embeddings.*"
weight = 0.0
"#;

fn err(text: &str) -> (Option<usize>, String, String) {
    match parse(Path::new("r.toml"), text).unwrap_err() {
        Error::Recipe {
            line,
            problem,
            hint,
            ..
        } => (line, problem, hint),
        other => panic!("not a recipe error: {other}"),
    }
}

#[test]
fn the_seed_study_parses_and_sweeps() {
    let r = parse(Path::new("r.toml"), SEED_STUDY).unwrap();
    assert_eq!(r.method.name(), "task_arithmetic");
    assert_eq!(r.heads.as_ref().unwrap().line, Some(14));
    let points = r.points();
    let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["pos-en+es/es=0", "pos-en+es/es=0.5", "pos-en+es/es=1"]
    );
    assert_eq!(points[1].weights, vec![1.0, 0.5]);
    assert_eq!(
        r.override_for("roberta.embeddings.word_embeddings.weight", |o| o.weight),
        Some(0.0)
    );
    assert_eq!(
        r.override_for("roberta.encoder.layer.0.output.dense.weight", |o| o.weight),
        None
    );
}

#[test]
fn two_sweeps_make_a_grid() {
    let text = r#"name = "g"
method = "ties"
base = "b"
density = { sweep = [0.2, 0.4] }
[[inputs]]
checkpoint = "x"
weight = { sweep = [0.5, 1.0, 1.5] }
"#;
    let points = parse(Path::new("g.toml"), text).unwrap().points();
    assert_eq!(points.len(), 6);
    assert_eq!(points[0].name, "g/x=0.5_density=0.2");
    assert_eq!(points[5].density, Some(0.4));
    assert_eq!(points[5].weights, vec![1.5]);
}

#[test]
fn errors_name_the_line_and_give_a_hint() {
    let (line, problem, hint) = err(&SEED_STUDY.replace("weight = 1.0", "wieght = 1.0"));
    assert_eq!(line, Some(7));
    assert!(problem.contains("unknown field `wieght`"), "{problem}");
    assert!(hint.contains("schema"), "{hint}");

    let (line, problem, hint) = err(&SEED_STUDY.replace("task_arithmetic", "task_arithmetics"));
    assert_eq!(line, Some(2));
    assert!(problem.contains("unknown method `task_arithmetics`"));
    assert!(
        hint.starts_with("did you mean `task_arithmetic`?"),
        "{hint}"
    );

    let (line, problem, _) =
        err(&SEED_STUDY.replace("method = \"task_arithmetic\"", "method = \"ties\""));
    assert_eq!(line, Some(2));
    assert!(problem.contains("needs a `density`"));

    let (line, problem, _) = err(&SEED_STUDY.replace("weight = 1.0", "weight = \"one\""));
    assert_eq!(line, Some(7));
    assert!(problem.contains("expected a number"), "{problem}");

    let (_, problem, _) = err(
        "name = \"x\"\nmethod = \"dare_ties\"\nbase = \"b\"\ndensity = 0.5\n[[inputs]]\ncheckpoint = \"c\"\n",
    );
    assert!(problem.contains("needs a seed"));

    let (line, problem, _) = err(
        "name = \"x\"\nmethod = \"ties\"\nbase = \"b\"\ndensity = 1.5\n[[inputs]]\ncheckpoint = \"c\"\n",
    );
    assert_eq!(line, Some(4));
    assert!(problem.contains("outside [0, 1]"));

    let (line, problem, _) = err(
        "name = \"x\"\nmethod = \"task_arithmetic\"\nbase = \"b\"\nt = 0.5\n[[inputs]]\ncheckpoint = \"c\"\n",
    );
    assert_eq!(line, Some(4));
    assert!(problem.contains("`t` does not apply"));
}

#[test]
fn mergekit_yaml_imports() {
    let yaml = "models:\n  - model: xlmr-base\n  - model: ft-a\n    parameters:\n      weight: 0.5\n      density: 0.3\n  - model: ft-b\n    parameters:\n      weight: 0.7\nmerge_method: ties\nbase_model: xlmr-base\nparameters:\n  density: 0.5\n  normalize: true\n  int8_mask: true\ndtype: float32\n";
    let r = mergekit::parse(Path::new("study/ties3.yml"), yaml).unwrap();
    assert_eq!(r.method.name(), "ties");
    assert_eq!(r.name.value, "ties3");
    assert_eq!(r.inputs.len(), 2);
    assert_eq!(r.inputs[0].density, Some(0.3));
    assert_eq!(r.inputs[1].weight, Param::Fixed(0.7));
    assert_eq!(r.inputs[1].source.reference().line, Some(7));
    assert_eq!(r.output.dtype, Some(Dtype::F32));

    let bad = yaml.replace("dtype: float32", "tokenizer_source: base");
    let Err(Error::Recipe { line, problem, .. }) = mergekit::parse(Path::new("m.yml"), &bad) else {
        panic!("unsupported key accepted")
    };
    assert_eq!(line, Some(16));
    assert!(problem.contains("tokenizer_source"), "{problem}");
}

#[test]
fn the_committed_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/recipe.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if std::env::var_os("CROSSMERGE_BLESS").is_some() {
        std::fs::write(&path, json_schema()).unwrap();
        return;
    }
    assert!(
        committed == json_schema(),
        "schemas/recipe.schema.json is stale: run `CROSSMERGE_BLESS=1 cargo test --lib recipe` and commit it"
    );
}

#[test]
fn mergekit_yaml_takes_mergekits_defaults_and_flow_style_like_block_style() {
    let yaml = |method: &str, params: &str| {
        let base = if method == "linear" {
            ""
        } else {
            "base_model: b\n"
        };
        let density = if ["ties", "dare_ties", "dare_linear", "breadcrumbs"].contains(&method) {
            "      density: 0.5\n"
        } else {
            ""
        };
        format!(
            "models:\n  - model: a\n    parameters:\n      weight: 1.0\n{density}\
             merge_method: {method}\n{base}{params}"
        )
    };
    let load = |text: &str| mergekit::parse(Path::new("m.yml"), text);
    // mergekit 0.1.5's defaults: normalize on for ties and linear only; rescale for DARE.
    for (method, normalize, rescale) in [
        ("task_arithmetic", false, false),
        ("ties", true, false),
        ("dare_ties", false, true),
        ("dare_linear", false, true),
        ("breadcrumbs", false, false),
        ("linear", true, false),
    ] {
        let r = load(&yaml(method, "")).unwrap();
        assert_eq!((r.normalize, r.rescale), (normalize, rescale), "{method}");
        assert_eq!(
            r.rescale_norm,
            RescaleNorm::L1,
            "mergekit rescales DARE to the L1 norm"
        );
    }
    // The same parameters in flow and block style give the same recipe, or the same error.
    for (method, flow, block) in [
        ("task_arithmetic", "{normalize: true}", "normalize: true"),
        ("ties", "{rescale: true}", "rescale: true"),
        ("ties", "{rescale: false}", "rescale: false"),
        ("linear", "{lambda: 0.5}", "lambda: 0.5"),
        (
            "dare_ties",
            "{normalize: true, rescale: false}",
            "normalize: true\n  rescale: false",
        ),
    ] {
        let f = load(&yaml(method, &format!("parameters: {flow}\n")));
        let b = load(&yaml(method, &format!("parameters:\n  {block}\n")));
        match (&f, &b) {
            (Ok(f), Ok(b)) => {
                assert_eq!(
                    (f.normalize, f.rescale),
                    (b.normalize, b.rescale),
                    "{method} {flow}"
                );
                assert_eq!(format!("{:?}", f.lambda), format!("{:?}", b.lambda));
            }
            (Err(f), Err(b)) => assert_eq!(
                f.to_string().split(':').nth(2),
                b.to_string().split(':').nth(2),
                "{method} {flow}"
            ),
            _ => panic!("{method}: flow {f:?} but block {b:?}"),
        }
    }
    // What mergekit applies, crossmerge applies.
    let r = load(&yaml("task_arithmetic", "parameters: {normalize: true}\n")).unwrap();
    assert!(r.normalize);
    // Fractions are fractions, per model too.
    for bad in ["      density: 0.5\n", "parameters:\n  density: 1.5\n"] {
        let text = if bad.starts_with("parameters") {
            yaml("ties", bad)
        } else {
            yaml("ties", "").replace("density: 0.5", "density: 1.5")
        };
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("outside [0, 1]"), "{err}");
    }
    assert!(
        load(&yaml("magnitude_prune", ""))
            .unwrap_err()
            .to_string()
            .contains("no `magnitude_prune`")
    );
}
