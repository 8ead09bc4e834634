//! The HTML pages. Each reads the registry through the same calls as the CLI command it
//! mirrors, so a page and its `/api/…` twin never disagree.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use crossmerge_core::Registry;
use crossmerge_core::catalog::EvaluationRow;
use crossmerge_core::registry::{TraceInput, TraceNode};
use crossmerge_core::report::{self, XyChart, XyPoint};
use crossmerge_core::results::{self, Results, Score};
use maud::{Markup, html};

use crate::api::{CompareQuery, EvalQuery, ListQuery};
use crate::html::{
    bytes, checkpoint_link, evaluation_link, inline_svg, num, opt, page, query_part, vector_link,
};
use crate::{App, WebError};

/// An HTML page (or an HTML error page with the status).
pub(crate) struct Html(Result<Markup, WebError>);

impl IntoResponse for Html {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(m) => axum::response::Html(m.into_string()).into_response(),
            Err(e) => {
                let body = page(
                    match e.status {
                        StatusCode::NOT_FOUND => "Not found",
                        StatusCode::BAD_REQUEST => "Bad request",
                        _ => "Server error",
                    },
                    &html! {
                        div.error {
                            p { (e.message) }
                            @if let Some(h) = &e.hint { p.muted { "hint: " (h) } }
                        }
                    },
                );
                (e.status, axum::response::Html(body.into_string())).into_response()
            }
        }
    }
}

pub(crate) async fn not_found() -> Html {
    Html(Err(WebError::not_found(
        "nothing is served at this address".to_owned(),
    )))
}

pub(crate) async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("style.css"),
    )
        .into_response()
}

pub(crate) async fn overview(State(app): State<App>) -> Html {
    let studies = app.study_names().count();
    Html(
        app.with_registry(move |reg| {
            let rows = reg.list(&crossmerge_core::CheckpointFilter::default())?;
            let vectors = reg.vectors()?.len();
            let evaluations = reg.evaluations(None, None, None)?.len();
            let count = |k: &str| rows.iter().filter(|r| r.kind.as_str() == k).count();
            Ok(page(
                "Registry",
                &html! {
                    dl.facts {
                        dt { "checkpoints" } dd { a href="/checkpoints" { (rows.len()) } }
                        @for k in ["base", "language", "task", "merged"] {
                            dt { (k) } dd { a href={ "/checkpoints?kind=" (k) } { (count(k)) } }
                        }
                        dt { "vectors" } dd { a href="/vectors" { (vectors) } }
                        dt { "evaluations" } dd { a href="/evaluations" { (evaluations) } }
                        dt { "studies" } dd { a href="/studies" { (studies) } }
                    }
                    p { a href="/lineage" { "The lineage graph" } " · " a href="/api/checkpoints" { "JSON API" } }
                },
            ))
        })
        .await,
    )
}

fn kind_badge(kind: &str) -> Markup {
    html! { span.kind { (kind) } }
}

pub(crate) async fn checkpoints(State(app): State<App>, Query(q): Query<ListQuery>) -> Html {
    let sizes = app.clone();
    Html(
        app.with_registry(move |reg| {
            let rows = q.rows(reg)?;
            let stored: Vec<u64> = rows
                .iter()
                .map(|r| sizes.stored_size(reg, r))
                .collect::<Result<_, _>>()?;
            let value = |s: &Option<String>| s.clone().unwrap_or_default();
            Ok(page(
                "Checkpoints",
                &html! {
                    form.filters method="get" action="/checkpoints" {
                        label { "kind"
                            select name="kind" {
                                option value="" { "any" }
                                @for k in ["base", "language", "task", "merged"] {
                                    option value=(k) selected[q.kind.as_deref() == Some(k)] { (k) }
                                }
                            }
                        }
                        label { "language" input name="language" value=(value(&q.language)) size="6"; }
                        label { "task" input name="task" value=(value(&q.task)) size="6"; }
                        label { "base" input name="base" value=(value(&q.base)) size="16"; }
                        button type="submit" { "Filter" }
                    }
                    p.muted { (rows.len()) " checkpoint(s) · "
                        a href={ "/api/checkpoints" (q.query()) } { "JSON" } }
                    div.scroll { table #checkpoints {
                        thead { tr {
                            th { "checkpoint" } th { "kind" } th { "language" } th { "task" }
                            th { "base" } th { "architecture" } th.num { "parameters" }
                            th.num { "logical" } th.num { "stored" } th { "tags" } th { "created" }
                        } }
                        tbody { @for (r, s) in rows.iter().zip(&stored) { tr {
                            td { (checkpoint_link(&r.reference())) }
                            td { (kind_badge(r.kind.as_str())) }
                            td { (opt(r.language.as_ref())) }
                            td { (opt(r.task.as_ref())) }
                            td { @if let Some(b) = &r.base { (checkpoint_link(b)) } @else { "-" } }
                            td { (opt(r.architecture.as_ref())) }
                            td.num { (format!("{:.1}M", r.parameters as f64 / 1e6)) }
                            td.num { (bytes(r.logical_size)) }
                            td.num { (bytes(*s)) }
                            td { @for (k, v) in &r.tags { span.tag { (k) "=" (v) } " " } }
                            td { (r.created_at) }
                        } } }
                    } }
                },
            ))
        })
        .await,
    )
}

/// `config.json` of a checkpoint, pretty-printed, when it has one small enough to show.
fn config_text(
    reg: &Registry,
    files: &[crossmerge_core::checkpoint::ManifestFile],
) -> Option<String> {
    let f = files
        .iter()
        .find(|f| f.path == "config.json" && f.size < 1 << 20)?;
    let raw = reg.read_object(&f.id, Some("config.json")).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    serde_json::to_string_pretty(&value).ok()
}

/// The loss curve of a training run as an SVG chart.
fn loss_svg(losses: &serde_json::Value) -> Option<String> {
    let points: Vec<XyPoint> = losses
        .as_array()?
        .iter()
        .filter_map(|p| {
            let p = p.as_array()?;
            Some(XyPoint {
                x: p.first()?.as_f64()?,
                y: p.get(1)?.as_f64()?,
                label: None,
            })
        })
        .collect();
    if points.is_empty() {
        return None;
    }
    let chart = XyChart {
        title: "training loss".to_owned(),
        x_label: "step".to_owned(),
        y_label: "loss".to_owned(),
        series: vec![("loss".to_owned(), points)],
        lines: true,
    };
    report::xy_svg(&chart).ok()
}

fn merge_input(reg: &Registry, id: &str) -> Result<Markup, WebError> {
    if let Some(v) = reg.catalog().vector_by_definition(id)? {
        return Ok(
            html! { "vector " (vector_link(&v.reference())) " (" (v.from) " − " (v.minus) ")" },
        );
    }
    let row = reg.catalog().checkpoints_by_prefix(id)?.into_iter().next();
    Ok(row.map_or_else(
        || html! { "unknown " code { (id) } },
        |row| html! { "checkpoint " (checkpoint_link(&row.reference())) },
    ))
}

pub(crate) async fn checkpoint(State(app): State<App>, Path(reference): Path<String>) -> Html {
    let cache = app.clone();
    Html(
        app.with_registry(move |reg| {
            let d = cache.show(reg, &reference)?;
            let c = &d.checkpoint;
            let evaluations = reg.evaluations(Some(&c.reference()), None, None)?;
            let config = config_text(reg, &d.files);
            let inputs: Vec<Markup> = match &d.merge {
                Some(m) => m
                    .inputs
                    .iter()
                    .map(|i| merge_input(reg, i))
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
            let loss = d.training.as_ref().and_then(|t| loss_svg(&t.run.losses));
            Ok(page(
                &c.reference(),
                &html! {
                    p.muted { a href={ "/api/checkpoints/" (crate::html::path_part(&c.reference())) "?tensors=true" } { "JSON" } }
                    dl.facts #facts {
                        dt { "id" } dd { code { (c.manifest_id.to_hex()) } }
                        dt { "kind" } dd { (kind_badge(c.kind.as_str())) }
                        dt { "architecture" } dd { (opt(c.architecture.as_ref())) }
                        dt { "base" } dd { @if let Some(b) = &c.base { (checkpoint_link(b)) } @else { "-" } }
                        dt { "language" } dd { (opt(c.language.as_ref())) }
                        dt { "task" } dd { (opt(c.task.as_ref())) }
                        @for (k, v) in &c.tags { dt { "tag" } dd.tag { (k) "=" (v) } }
                        dt { "parameters" } dd { (c.parameters) " in " (c.tensor_count) " tensors" }
                        dt { "size" } dd { (bytes(c.logical_size)) " logical, " (bytes(d.stored_size)) " stored" }
                        dt { "created" } dd { (c.created_at) }
                        dt { "lineage" } dd { a href="/lineage" { "graph" } }
                    }
                    @if let Some(m) = &d.merge {
                        h2 { "Made by merging" }
                        dl.facts {
                            dt { "method" } dd { (m.method) }
                            dt { "recipe hash" } dd { code { (m.recipe_hash) } }
                            dt { "crossmerge" } dd { (m.crossmerge_version) }
                        }
                        h3 { "Inputs" }
                        ul #inputs { @for i in &inputs { li { (i) } } }
                        h3 { "Recipe" }
                        pre #recipe { (m.recipe_source) }
                    }
                    @if let Some(t) = &d.training {
                        h2 { "Made by training" }
                        dl.facts {
                            dt { "from" } dd { (checkpoint_link(&t.source)) }
                            dt { "task" } dd { (t.run.task) }
                            dt { "language" } dd { (opt(t.run.language.as_ref())) }
                            dt { "steps" } dd { (t.run.steps) " (kept step " (t.run.kept_step) ", " (t.run.kept) ")" }
                            dt { "seed" } dd { (t.run.seed) }
                            dt { "device" } dd { (t.run.device) }
                            dt { "duration" } dd { (format!("{:.1} s", t.run.duration_s)) }
                        }
                        @if let Some(svg) = &loss { (inline_svg(svg)) }
                        h3 { "Settings" }
                        pre { (serde_json::to_string_pretty(&t.run.settings).unwrap_or_default()) }
                        h3 { "Data" }
                        pre { (serde_json::to_string_pretty(&t.run.data).unwrap_or_default()) }
                        h3 { "Dev evaluations" }
                        pre { (serde_json::to_string_pretty(&t.run.dev).unwrap_or_default()) }
                    }
                    h2 { "Evaluations" }
                    (evaluation_table(&evaluations, None))
                    @if let Some(cfg) = &config {
                        h2 { "config.json" }
                        pre #config { (cfg) }
                    }
                    h2 { "Files" }
                    div.scroll { table {
                        thead { tr { th { "path" } th.num { "size" } th { "object" } } }
                        tbody { @for f in &d.files { tr {
                            td { (f.path) } td.num { (bytes(f.size)) } td { code { (f.id.to_hex()[..16]) } }
                        } } }
                    } }
                    h2 { "Tensors" }
                    div.scroll { table #tensors {
                        thead { tr {
                            th { "name" } th { "dtype" } th { "shape" } th.num { "bytes" }
                            th.num { "stored" } th { "encoding" }
                        } }
                        tbody { @for t in &d.tensors { tr {
                            td { (t.name) }
                            td { (t.dtype.name()) }
                            td { (format!("{:?}", t.shape)) }
                            td.num { (bytes(t.raw_size)) }
                            td.num { @if let Some(s) = t.stored_size { (bytes(s)) } @else { "-" } }
                            td { (t.encoding) }
                        } } }
                    } }
                },
            ))
        })
        .await,
    )
}

pub(crate) async fn lineage(State(app): State<App>) -> Html {
    Html(
        app.with_registry(|reg| {
            let g = reg.lineage()?;
            Ok(page(
                "Lineage",
                &html! {
                    p.muted { (g.nodes.len()) " nodes, " (g.edges.len()) " edges · "
                        a href="/api/lineage" { "JSON" } }
                    div.scroll #lineage { (crate::lineage_svg::draw(&g)) }
                },
            ))
        })
        .await,
    )
}

pub(crate) async fn vectors(State(app): State<App>) -> Html {
    Html(
        app.with_registry(|reg| {
            let rows = reg.vectors()?;
            Ok(page(
                "Vectors",
                &html! {
                    p.muted { (rows.len()) " vector(s) · " a href="/api/vectors" { "JSON" } }
                    form method="get" action="/compare" {
                        div.scroll { table #vectors {
                            thead { tr {
                                th { "compare" } th { "vector" } th { "kind" } th { "from − minus" }
                                th.num { "parameters" } th.num { "L2 norm" } th { "created" }
                            } }
                            tbody { @for v in &rows { tr {
                                td { input type="checkbox" name="vectors" value=(v.reference()); }
                                td { (vector_link(&v.reference())) }
                                td { (kind_badge(v.kind.as_str())) }
                                td { (checkpoint_link(&v.from)) " − " (checkpoint_link(&v.minus)) }
                                td.num { (v.parameters) }
                                td.num { (format!("{:.4}", v.l2_norm)) }
                                td { (v.created_at) }
                            } } }
                        } }
                        p.filters {
                            label { "group by "
                                select name="by" {
                                    @for b in ["model", "layer", "module"] { option value=(b) { (b) } }
                                }
                            }
                            " "
                            label { "reference "
                                select name="reference" {
                                    option value="" { "none (every pair)" }
                                    @for v in &rows { option value=(v.reference()) { (v.reference()) } }
                                }
                            }
                            " "
                            button type="submit" { "Compare" }
                        }
                    }
                },
            ))
        })
        .await,
    )
}

pub(crate) async fn vector(State(app): State<App>, Path(reference): Path<String>) -> Html {
    Html(
        app.with_registry(move |reg| {
            let d = reg.show_vector(&reference)?;
            let v = &d.vector;
            Ok(page(
                &v.reference(),
                &html! {
                    p.muted { a href={ "/api/vectors/" (crate::html::path_part(&v.reference())) "?tensors=true" } { "JSON" } }
                    dl.facts {
                        dt { "kind" } dd { (kind_badge(v.kind.as_str())) }
                        dt { "from" } dd { (checkpoint_link(&v.from)) }
                        dt { "minus" } dd { (checkpoint_link(&v.minus)) }
                        dt { "definition" } dd { code { (v.definition.to_hex()) } }
                        dt { "parameters" } dd { (v.parameters) " in " (v.tensor_count) " tensors" }
                        dt { "L2 norm" } dd { (format!("{:.6}", v.l2_norm)) }
                        dt { "include" } dd { (v.include.join(", ")) }
                        dt { "exclude" } dd { (v.exclude.join(", ")) }
                        dt { "heads left out" } dd { (d.heads.join(", ")) }
                        dt { "created" } dd { (v.created_at) }
                    }
                    h2 { "Norms by tensor" }
                    div.scroll { table {
                        thead { tr { th { "tensor" } th.num { "parameters" } th.num { "L2 norm" } } }
                        tbody { @for t in &d.tensors { tr {
                            td { (t.name) } td.num { (t.parameters) } td.num { (format!("{:.6}", t.l2_norm)) }
                        } } }
                    } }
                },
            ))
        })
        .await,
    )
}

pub(crate) async fn compare(
    State(app): State<App>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Html {
    Html(
        app.with_registry(move |reg| {
            let q = CompareQuery::parse(&pairs)?;
            let r = q.run(reg)?;
            let heatmap = report::heatmap_svg(&report::heatmap_for(&r))?;
            let lines = match r.reference {
                Some(_) if r.groups.len() > 1 => Some(report::lines_svg(&r)?),
                _ => None,
            };
            let api: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", query_part(k), query_part(v)))
                .collect();
            Ok(page(
                "Compare vectors",
                &html! {
                    p.muted { "grouped by " (q.by_name) " · " a href={ "/api/compare?" (api.join("&")) } { "JSON" } }
                    (inline_svg(&heatmap))
                    @if let Some(l) = &lines { (inline_svg(l)) }
                    h2 { "Cosine similarity" }
                    div.scroll { table #cosine {
                        thead { tr {
                            th { "group" } th { "vector" }
                            @for v in &r.vectors { th.num { (v) } }
                            th.num { "L2 norm" }
                        } }
                        tbody { @for g in &r.groups { @for (i, v) in r.vectors.iter().enumerate() { tr {
                            td { (g.group) } td { (vector_link(v)) }
                            @for j in 0..r.vectors.len() { td.num { (num(g.cosine[i][j])) } }
                            td.num { (format!("{:.4}", g.norms[i])) }
                        } } } }
                    } }
                    @if !r.not_shared.is_empty() {
                        p.muted { "left out (not in every vector): " (r.not_shared.join(", ")) }
                    }
                },
            ))
        })
        .await,
    )
}

/// The metric names of `rows`, sorted.
fn metric_names(rows: &[EvaluationRow]) -> Vec<String> {
    rows.iter()
        .flat_map(|r| r.metrics.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Sorts by a column (`checkpoint`, `task`, `language`, `data`, `examples`, `created`,
/// `duration`, or `metric:NAME`); rows without the value go last.
fn sort_rows(rows: &mut [EvaluationRow], by: &str, descending: bool) -> Result<(), WebError> {
    use std::cmp::Ordering;
    type Cmp = Box<dyn Fn(&EvaluationRow, &EvaluationRow) -> Ordering>;
    let cmp: Cmp = match by {
        "checkpoint" => Box::new(|a, b| a.checkpoint.cmp(&b.checkpoint)),
        "task" => Box::new(|a, b| a.task.cmp(&b.task)),
        "language" => Box::new(|a, b| a.language.cmp(&b.language)),
        "data" => Box::new(|a, b| a.dataset_path.cmp(&b.dataset_path)),
        "examples" => Box::new(|a, b| a.examples.cmp(&b.examples)),
        "created" => Box::new(|a, b| a.created_at.cmp(&b.created_at)),
        "duration" => Box::new(|a, b| a.duration_s.total_cmp(&b.duration_s)),
        m if m.starts_with("metric:") => {
            let name = m["metric:".len()..].to_owned();
            Box::new(
                move |a, b| match (a.metrics.get(&name), b.metrics.get(&name)) {
                    (Some(x), Some(y)) => x.total_cmp(y),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                },
            )
        }
        other => {
            return Err(WebError::bad_request(format!(
                "cannot sort by `{other}`: checkpoint, task, language, data, examples, created, duration or metric:NAME"
            )));
        }
    };
    rows.sort_by(|a, b| {
        let o = cmp(a, b);
        if descending { o.reverse() } else { o }
    });
    Ok(())
}

/// The evaluations table; with `q`, its headers are sort links keeping the filters.
fn evaluation_table(rows: &[EvaluationRow], q: Option<&EvalQuery>) -> Markup {
    let metrics = metric_names(rows);
    let head = |label: &str, key: &str| -> Markup {
        match q {
            None => html! { (label) },
            Some(q) => {
                let desc = q.sort.as_deref() == Some(key) && q.order.as_deref() != Some("desc");
                let filters = q.filters().replacen('?', "&", 1);
                let href = format!(
                    "/evaluations?sort={}&order={}{filters}",
                    query_part(key),
                    if desc { "desc" } else { "asc" }
                );
                html! { a.sort href=(href) { (label) } }
            }
        }
    };
    html! {
        div.scroll { table #evaluations {
            thead { tr {
                th { "evaluation" } th { (head("checkpoint", "checkpoint")) } th { (head("task", "task")) }
                th { (head("language", "language")) } th { (head("data", "data")) } th { "split" }
                @for m in &metrics { th.num { (head(m, &format!("metric:{m}"))) } }
                th.num { (head("examples", "examples")) } th { "device" }
                th.num { (head("seconds", "duration")) } th { (head("created", "created")) }
            } }
            tbody { @for r in rows { tr {
                td { @match &r.id { Some(id) => (evaluation_link(id, &id[..12.min(id.len())])), None => "-" } }
                td { (checkpoint_link(&r.checkpoint)) }
                td { (r.task) } td { (opt(r.language.as_ref())) }
                td { (r.dataset_path) } td { (opt(r.split.as_ref())) }
                @for m in &metrics { td.num { (num(r.metrics.get(m).copied())) } }
                td.num { (r.examples) } td { (r.device) }
                td.num { (format!("{:.1}", r.duration_s)) } td { (r.created_at) }
            } } }
        } }
    }
}

pub(crate) async fn evaluations(State(app): State<App>, Query(q): Query<EvalQuery>) -> Html {
    Html(
        app.with_registry(move |reg| {
            let mut rows = q.rows(reg)?;
            if let Some(by) = q.sort.as_deref().filter(|s| !s.is_empty()) {
                sort_rows(&mut rows, by, q.order.as_deref() == Some("desc"))?;
            }
            let filters = q.filters();
            let value = |s: &Option<String>| s.clone().unwrap_or_default();
            Ok(page(
                "Evaluations",
                &html! {
                    form.filters method="get" action="/evaluations" {
                        label { "checkpoint" input name="checkpoint" value=(value(&q.checkpoint)) size="16"; }
                        label { "task" input name="task" value=(value(&q.task)) size="5"; }
                        label { "language" input name="language" value=(value(&q.language)) size="5"; }
                        button type="submit" { "Filter" }
                    }
                    p.muted { (rows.len()) " evaluation(s) · "
                        a #csv href={ "/evaluations.csv" (filters) } download="evaluations.csv" { "CSV" } " · "
                        a href={ "/api/evaluations" (filters) } { "JSON" } }
                    (evaluation_table(&rows, Some(&q)))
                },
            ))
        })
        .await,
    )
}

/// `crossmerge report evals --csv`'s file, for the same filters.
pub(crate) async fn evaluations_csv(
    State(app): State<App>,
    Query(q): Query<EvalQuery>,
) -> Response {
    match app
        .with_registry(move |reg| Ok(report::evaluations_csv(&q.rows(reg)?)))
        .await
    {
        Ok(csv) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"evaluations.csv\"",
                ),
            ],
            csv,
        )
            .into_response(),
        Err(e) => Html(Err(e)).into_response(),
    }
}

fn node_markup(n: &TraceNode) -> Markup {
    let r = &n.row;
    html! {
        (checkpoint_link(&r.reference())) " " (kind_badge(r.kind.as_str()))
        @if n.repeated { span.muted { " (above)" } }
        @if let Some(m) = &n.merge {
            " merged by " (m.row.method) ", recipe " code { (m.row.recipe_hash[..12.min(m.row.recipe_hash.len())]) }
            ul { @for i in &m.inputs { li { @match i {
                TraceInput::Vector { vector, from, minus } => {
                    "vector " (vector_link(&vector.reference()))
                    ul { li { "from " (node_markup(from)) } li { "minus " (node_markup(minus)) } }
                }
                TraceInput::Checkpoint { node } => { "checkpoint " (node_markup(node)) }
                TraceInput::Unknown { id } => { "unknown input " code { (id) } }
            } } } }
        }
        @if let Some(t) = &n.training {
            " trained (" (t.row.run.task) ", " (t.row.run.steps) " steps, seed " (t.row.run.seed) ") from"
            ul { li { (node_markup(&t.source)) } }
        }
        @if let Some(b) = &n.base {
            ul { li { "base " (node_markup(b)) } }
        }
    }
}

pub(crate) async fn trace(State(app): State<App>, Path(id): Path<String>) -> Html {
    Html(
        app.with_registry(move |reg| {
            let t = reg.trace(crate::evaluation_id(&id)?)?;
            let e = &t.evaluation;
            let eid = e.id.clone().unwrap_or_default();
            Ok(page(
                &format!("Evaluation {}", &eid[..12.min(eid.len())]),
                &html! {
                    p.muted { a href={ "/api/trace/" (crate::html::path_part(&eid)) } { "JSON" } }
                    dl.facts #evaluation {
                        dt { "id" } dd { code { (eid) } }
                        dt { "checkpoint" } dd { (checkpoint_link(&e.checkpoint)) }
                        dt { "task" } dd { (e.task) }
                        dt { "language" } dd { (opt(e.language.as_ref())) }
                        dt { "data" } dd { (e.dataset_path) " (blake3 " code { (e.dataset_hash) } ")" }
                        dt { "split" } dd { (opt(e.split.as_ref())) }
                        @for (k, v) in &e.metrics { dt { (k) } dd.metric { (v) } }
                        dt { "examples" } dd { (e.examples) " (" (e.truncated) " truncated)" }
                        dt { "settings" } dd { code { (e.settings.to_string()) } }
                        dt { "device" } dd { (e.device) }
                        dt { "crossmerge" } dd { (e.crossmerge_version) }
                    }
                    h2 { "Lineage" }
                    ul #trace { li { (node_markup(&t.checkpoint)) } }
                    h2 { "As `crossmerge trace` prints it" }
                    pre { (t.text()) }
                },
            ))
        })
        .await,
    )
}

pub(crate) async fn studies(State(app): State<App>) -> Html {
    let list: Vec<(String, Result<Results, WebError>)> = app
        .study_names()
        .map(|n| (n.clone(), app.study(n)))
        .collect();
    Html(Ok(page(
        "Studies",
        &html! {
            @if list.is_empty() {
                p.muted { "No study is served: start `crossmerge serve --study DIR` with a folder that `crossmerge study --out DIR` wrote." }
            }
            ul { @for (name, r) in &list { li {
                a href={ "/studies/" (crate::html::path_part(name)) } { (name) }
                @match r {
                    Ok(r) => { " · " (r.description.clone().unwrap_or_default()) }
                    Err(e) => { span.muted { " (" (e.message) ")" } }
                }
            } } }
        },
    )))
}

fn score(s: &Score) -> Markup {
    evaluation_link(&s.evaluation, &num(Some(s.value)))
}

pub(crate) async fn study(State(app): State<App>, Path(name): Path<String>) -> Html {
    let r = match app.study(&name) {
        Ok(r) => r,
        Err(e) => return Html(Err(e)),
    };
    let plots: Result<Vec<(String, String)>, WebError> = results::plots(&r)
        .into_iter()
        .map(|(stem, p)| Ok((stem, p.svg()?)))
        .collect();
    let plots = match plots {
        Ok(p) => p,
        Err(e) => return Html(Err(e)),
    };
    let plot = |stem: &str| {
        plots
            .iter()
            .find(|(s, _)| s == stem)
            .map(|(_, svg)| inline_svg(svg))
    };
    Html(Ok(page(
        &format!("Study {}", r.study),
        &html! {
            p { (r.description.clone().unwrap_or_default()) }
            p.muted { "Made by " code { (r.command) } " (crossmerge " (r.crossmerge_version) "). Base: "
                (checkpoint_link(&r.base.checkpoint)) ". λ grid: "
                (r.lambdas.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
                ". Selection: " (r.selection) ". Every number links to the evaluation that measured it. "
                a href={ "/api/studies/" (crate::html::path_part(&r.study)) } { "JSON" } }
            @for t in &r.tasks {
                h2 { (t.task) " (" (t.metric) ")" }
                @if let Some(m) = &t.model { p { "Task model: " (checkpoint_link(&m.checkpoint)) } }
                div.scroll { table.transfers {
                    thead { tr {
                        th { "language" } th.num { "λ = 0 test" } th.num { "best λ" }
                        th.num { "test at best λ" } th.num { "gain" } th.num { "trained in language" }
                    } }
                    tbody { @for x in &t.transfers { tr {
                        td { (x.language) } td.num { (score(&x.zero_shot)) } td.num { (x.best_lambda) }
                        td.num { (score(&x.test)) } td.num { (num(Some(x.gain))) }
                        td.num { @if let Some((_, s)) = &x.trained_baseline { (score(s)) } @else { "-" } }
                    } } }
                } }
                h3 { "Validation score by λ" }
                div.scroll { table {
                    thead { tr { th { "language" } @for l in &r.lambdas { th.num { "λ=" (l) } } } }
                    tbody { @for x in &t.transfers { tr {
                        td { (x.language) }
                        @for p in &x.sweep { td.num { (score(&p.validation)) } }
                    } } }
                } }
                @if let Some(svg) = plot(&format!("lambda-{}", t.task)) { (svg) }
            }
            @if !r.perplexity.is_empty() {
                h2 { "Masked-LM perplexity before and after language fine-tuning" }
                div.scroll { table {
                    thead { tr { th { "language" } th { "text" } th.num { "before" } th.num { "after" } } }
                    tbody { @for p in &r.perplexity { tr {
                        td { (p.language) } td { (p.text) }
                        td.num { (score(&p.before.perplexity)) } td.num { (score(&p.after.perplexity)) }
                    } } }
                } }
            }
            @if let Some(c) = &r.cosine {
                h2 { "Cosine similarity with " (c.reference) "'s language vector" }
                div.scroll { table {
                    thead { tr { th { "language" } th.num { "model" } @for l in &c.layers { th.num { (l) } } } }
                    tbody { @for (lang, layers) in &c.by_layer { tr {
                        td { (lang) }
                        td.num { (num(c.overall.iter().find(|(l, _)| l == lang).and_then(|(_, v)| *v))) }
                        @for v in layers { td.num { (num(*v)) } }
                    } } }
                } }
                @if let Some(svg) = plot("cosine-layers") { (svg) }
                @if let Some(svg) = plot("gain-vs-cosine") { (svg) }
            }
        },
    )))
}
