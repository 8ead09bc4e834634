//! `/api/…`: JSON bodies equal to the CLI's `--json` for the same question
//! (`list`, `show`, `list --vectors`, `compare`, `report evals`, `trace`, `du`), plus the
//! lineage graph and the studies' results.json.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use crossmerge_core::{CompareOptions, NoProgress};
use serde::Deserialize;

use crate::{App, WebError, cli_json};

/// A JSON body (or a JSON error: `{"error": …, "hint": …}` with the status).
pub(crate) struct Json(Result<String, WebError>);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => {
                let body = cli_json(&serde_json::json!({ "error": e.message, "hint": e.hint }));
                (e.status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
        }
    }
}

/// The filters `list` takes.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    pub kind: Option<String>,
    pub language: Option<String>,
    pub task: Option<String>,
    pub base: Option<String>,
}

impl ListQuery {
    fn filter(&self) -> Result<crossmerge_core::CheckpointFilter, WebError> {
        let mut f = crossmerge_core::CheckpointFilter::default();
        f.kind = match self.kind.as_deref().filter(|k| !k.is_empty()) {
            None => None,
            Some(k) => Some(crossmerge_core::CheckpointKind::parse(k).ok_or_else(|| {
                WebError::bad_request(format!(
                    "no checkpoint kind is named `{k}` (base, language, task, merged)"
                ))
            })?),
        };
        f.language = self.language.clone().filter(|s| !s.is_empty());
        f.task = self.task.clone().filter(|s| !s.is_empty());
        Ok(f)
    }

    /// `list`'s rows for these filters, then those of the base asked for.
    pub(crate) fn rows(
        &self,
        reg: &crossmerge_core::Registry,
    ) -> Result<Vec<crossmerge_core::catalog::CheckpointRow>, WebError> {
        let mut rows = reg.list(&self.filter()?)?;
        if let Some(b) = self.base.as_deref().filter(|s| !s.is_empty()) {
            rows.retain(|r| r.base.as_deref() == Some(b));
        }
        Ok(rows)
    }

    /// The filters as a query string, for links that keep them.
    pub(crate) fn query(&self) -> String {
        crate::html::query_string(&[
            ("kind", &self.kind),
            ("language", &self.language),
            ("task", &self.task),
            ("base", &self.base),
        ])
    }
}

/// `crossmerge list [--kind K] [--language L] [--task T] --json` (and a base filter).
pub(crate) async fn checkpoints(State(app): State<App>, Query(q): Query<ListQuery>) -> Json {
    Json(
        app.with_registry(move |reg| Ok(cli_json(&q.rows(reg)?)))
            .await,
    )
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct TensorsQuery {
    #[serde(default)]
    pub tensors: bool,
}

/// `crossmerge show REF --json [--tensors]` for a checkpoint.
pub(crate) async fn checkpoint(
    State(app): State<App>,
    Path(reference): Path<String>,
    Query(q): Query<TensorsQuery>,
) -> Json {
    let cache = app.clone();
    Json(
        app.with_registry(move |reg| {
            let mut d = cache.show(reg, &reference)?;
            if !q.tensors {
                d.tensors.clear();
            }
            Ok(cli_json(&d))
        })
        .await,
    )
}

/// The lineage graph (no CLI counterpart; `trace` walks one evaluation's part of it).
pub(crate) async fn lineage(State(app): State<App>) -> Json {
    Json(app.with_registry(|reg| Ok(cli_json(&reg.lineage()?))).await)
}

/// `crossmerge du --json`.
pub(crate) async fn du(State(app): State<App>) -> Json {
    Json(app.with_registry(|reg| Ok(cli_json(&reg.du()?))).await)
}

/// `crossmerge list --vectors --json`.
pub(crate) async fn vectors(State(app): State<App>) -> Json {
    Json(app.with_registry(|reg| Ok(cli_json(&reg.vectors()?))).await)
}

/// `crossmerge show VECTOR --json [--tensors]`.
pub(crate) async fn vector(
    State(app): State<App>,
    Path(reference): Path<String>,
    Query(q): Query<TensorsQuery>,
) -> Json {
    Json(
        app.with_registry(move |reg| {
            let mut d = reg.show_vector(&reference)?;
            if !q.tensors {
                d.tensors.clear();
            }
            Ok(cli_json(&d))
        })
        .await,
    )
}

/// `compare`'s arguments from a query string: `vectors` repeated (or comma-separated),
/// `by`, `reference`, `count_tied`.
#[derive(Debug, Default)]
pub(crate) struct CompareQuery {
    pub vectors: Vec<String>,
    pub by: crossmerge_core::GroupBy,
    pub by_name: String,
    pub reference: Option<String>,
    pub count_tied: bool,
}

impl CompareQuery {
    pub(crate) fn parse(pairs: &[(String, String)]) -> Result<Self, WebError> {
        let mut q = Self {
            by_name: "model".to_owned(),
            ..Self::default()
        };
        for (k, v) in pairs {
            match k.as_str() {
                "vectors" => q.vectors.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                ),
                "by" => {
                    q.by = match v.as_str() {
                        "model" => crossmerge_core::GroupBy::Model,
                        "layer" => crossmerge_core::GroupBy::Layer,
                        "module" => crossmerge_core::GroupBy::Module,
                        "tensor" => crossmerge_core::GroupBy::Tensor,
                        other => {
                            return Err(WebError::bad_request(format!(
                                "`by` is model, layer, module or tensor, not `{other}`"
                            )));
                        }
                    };
                    q.by_name.clone_from(v);
                }
                "reference" if !v.is_empty() => q.reference = Some(v.clone()),
                "count_tied" => q.count_tied = v == "true" || v == "1" || v == "on",
                _ => {}
            }
        }
        Ok(q)
    }

    pub(crate) fn run(
        &self,
        reg: &crossmerge_core::Registry,
    ) -> Result<crossmerge_core::vector::compare::CompareReport, WebError> {
        if self.vectors.len() + usize::from(self.reference.is_some()) < 2 {
            return Err(WebError::bad_request(
                "compare needs at least two vectors (`vectors=a&vectors=b`)".to_owned(),
            ));
        }
        let mut opts = CompareOptions::default()
            .by(self.by)
            .count_tied(self.count_tied);
        opts.reference.clone_from(&self.reference);
        Ok(reg.compare(&self.vectors, &opts, &NoProgress)?)
    }
}

/// `crossmerge compare V… [--by B] [--reference R] [--count-tied] --json`.
pub(crate) async fn compare(
    State(app): State<App>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Json {
    Json(
        app.with_registry(move |reg| {
            let q = CompareQuery::parse(&pairs)?;
            Ok(cli_json(&q.run(reg)?))
        })
        .await,
    )
}

/// The filters `report evals` takes.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EvalQuery {
    pub checkpoint: Option<String>,
    pub task: Option<String>,
    pub language: Option<String>,
    pub sort: Option<String>,
    pub order: Option<String>,
}

impl EvalQuery {
    pub(crate) fn rows(
        &self,
        reg: &crossmerge_core::Registry,
    ) -> Result<Vec<crossmerge_core::catalog::EvaluationRow>, WebError> {
        let some = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Ok(reg.evaluations(
            some(&self.checkpoint).as_deref(),
            some(&self.task).as_deref(),
            some(&self.language).as_deref(),
        )?)
    }

    /// The filters (not the order) as a query string, for links that keep them.
    pub(crate) fn filters(&self) -> String {
        crate::html::query_string(&[
            ("checkpoint", &self.checkpoint),
            ("task", &self.task),
            ("language", &self.language),
        ])
    }
}

/// `crossmerge report evals [--checkpoint C] [--task T] [--language L] --json`.
pub(crate) async fn evaluations(State(app): State<App>, Query(q): Query<EvalQuery>) -> Json {
    Json(
        app.with_registry(move |reg| Ok(cli_json(&q.rows(reg)?)))
            .await,
    )
}

/// `crossmerge trace ID --json`.
pub(crate) async fn trace(State(app): State<App>, Path(id): Path<String>) -> Json {
    Json(
        app.with_registry(move |reg| Ok(cli_json(&reg.trace(crate::evaluation_id(&id)?)?)))
            .await,
    )
}

/// The names of the studies served.
pub(crate) async fn studies(State(app): State<App>) -> Json {
    let names: Vec<&String> = app.study_names().collect();
    Json(Ok(cli_json(&names)))
}

/// A study's results.json, as `crossmerge study` wrote it.
pub(crate) async fn study(State(app): State<App>, Path(name): Path<String>) -> Json {
    Json(app.study(&name).map(|r| cli_json(&r)))
}
