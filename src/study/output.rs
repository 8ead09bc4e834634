//! The study's results are assembled here (from the study file and what was measured); their
//! types, tables and plots are [`crossmerge_core::results`], which the web page shares.

pub use crossmerge_core::results::*;

use super::file::Study;

pub fn assemble(
    study: &Study,
    command: &str,
    base: ModelRef,
    tasks: Vec<TaskResults>,
    perplexity: Vec<Perplexity>,
    cosine: Option<Cosine>,
) -> Results {
    let correlations = match &cosine {
        Some(c) => tasks
            .iter()
            .map(|t| {
                let points: Vec<(String, f64, f64)> = t
                    .transfers
                    .iter()
                    .filter_map(|x| {
                        let cos = c.overall.iter().find(|(l, _)| *l == x.language)?.1?;
                        Some((x.language.clone(), cos, x.gain))
                    })
                    .collect();
                let (a, b): (Vec<f64>, Vec<f64>) = points.iter().map(|p| (p.1, p.2)).unzip();
                Correlation {
                    task: t.task.clone(),
                    spearman: spearman(&a, &b),
                    points,
                }
            })
            .collect(),
        None => Vec::new(),
    };
    Results {
        format: "crossmerge.study.v1".to_owned(),
        study: study.name.clone(),
        description: study.description.clone(),
        command: command.to_owned(),
        crossmerge_version: env!("CARGO_PKG_VERSION").to_owned(),
        study_file: blake3::hash(study.text.as_bytes()).to_hex().to_string(),
        base,
        merge: serde_json::to_value(&study.merge).expect("TOML values serialise"),
        lambdas: study.lambdas.clone(),
        selection: SELECTION.to_owned(),
        tasks,
        perplexity,
        cosine,
        correlations,
    }
}
