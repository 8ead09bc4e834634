//! `crossmerge serve`: a read-only web page over a registry: checkpoints, their lineage,
//! vectors and their comparisons, evaluations with their traces, and studies, as
//! server-rendered HTML (compiled `maud` templates, inline SVG plots drawn by the same code as
//! the CLI's files) plus a JSON API whose bodies are the CLI's `--json` output.
//!
//! The registry is opened read-only (no file is created, migrated or locked for writing), per
//! request from a small pool, so other processes may register, merge and evaluate into it
//! while it is served. URLs carry names, `name@version` references and ids, never paths: every
//! lookup goes through the catalog, so `..` or an encoded slash is just a name nothing matches.

mod api;
mod html;
mod lineage_svg;
mod pages;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::routing::get;
use crossmerge_core::catalog::CheckpointRow;
use crossmerge_core::registry::CheckpointDetails;
use crossmerge_core::results::Results;
use crossmerge_core::{Error, ObjectId, Registry};

/// What `crossmerge serve` serves, and where.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub registry: PathBuf,
    pub host: IpAddr,
    /// 0 picks a free port (the address is handed to `ready`).
    pub port: u16,
    /// Study output folders (each with the `results.json` that `crossmerge study` wrote).
    pub studies: Vec<PathBuf>,
}

/// Shared by every request: where the registry is, and a pool of read-only opens of it.
#[derive(Clone)]
pub struct App(Arc<Inner>);

struct Inner {
    root: PathBuf,
    pool: Mutex<Vec<Registry>>,
    /// Study name → its results.json (read again on each request: a rerun rewrites it).
    studies: BTreeMap<String, PathBuf>,
    /// Stored bytes per manifest id: a manifest and its objects never change, so a size once
    /// summed (a query over every tensor) holds for the life of the server.
    stored_sizes: Mutex<HashMap<ObjectId, u64>>,
    /// `show`'s manifest part (files, tensors with their stored sizes) per manifest id, for
    /// the same reason; the row, merge and training are read again on every request.
    details: Mutex<HashMap<ObjectId, CheckpointDetails>>,
}

impl App {
    /// Checks that `registry` opens read-only and that every study folder holds a readable
    /// results.json with a distinct study name.
    pub fn new(registry: &Path, studies: &[PathBuf]) -> crossmerge_core::Result<Self> {
        let first = Registry::open_read_only(registry)?;
        let mut named = BTreeMap::new();
        for dir in studies {
            let path = dir.join("results.json");
            let results = read_results(&path)?;
            if let Some(other) = named.insert(results.study.clone(), path.clone()) {
                return Err(Error::invalid(
                    format!(
                        "two study folders hold study `{}`: `{}` and `{}`",
                        results.study,
                        other.display(),
                        path.display()
                    ),
                    "name each study folder once",
                ));
            }
        }
        Ok(Self(Arc::new(Inner {
            root: registry.to_path_buf(),
            pool: Mutex::new(vec![first]),
            studies: named,
            stored_sizes: Mutex::new(HashMap::new()),
            details: Mutex::new(HashMap::new()),
        })))
    }

    /// Runs `f` on a read-only registry, off the async workers. A registry whose call failed
    /// is not put back (its connection may be what failed).
    async fn with_registry<T, F>(&self, f: F) -> Result<T, WebError>
    where
        T: Send + 'static,
        F: FnOnce(&Registry) -> Result<T, WebError> + Send + 'static,
    {
        let app = self.clone();
        tokio::task::spawn_blocking(move || {
            let taken = app.0.pool.lock().map_or(None, |mut p| p.pop());
            let reg = match taken {
                Some(r) => r,
                None => Registry::open_read_only(&app.0.root)?,
            };
            let out = f(&reg);
            if out.is_ok()
                && let Ok(mut pool) = app.0.pool.lock()
                && pool.len() < 64
            {
                pool.push(reg);
            }
            out
        })
        .await
        .map_err(|e| WebError::internal(&format!("a request's task failed: {e}")))?
    }

    /// [`Registry::stored_size_of`], remembered per manifest.
    fn stored_size(&self, reg: &Registry, row: &CheckpointRow) -> Result<u64, WebError> {
        let cached =
            (self.0.stored_sizes.lock().ok()).and_then(|m| m.get(&row.manifest_id).copied());
        if let Some(n) = cached {
            return Ok(n);
        }
        let n = reg.stored_size_of(row)?;
        if let Ok(mut m) = self.0.stored_sizes.lock() {
            m.insert(row.manifest_id, n);
        }
        Ok(n)
    }

    /// [`Registry::show`], its manifest part remembered per manifest id.
    fn show(&self, reg: &Registry, reference: &str) -> Result<CheckpointDetails, WebError> {
        let row = reg.resolve(reference)?;
        let cached = (self.0.details.lock().ok()).and_then(|m| m.get(&row.manifest_id).cloned());
        let mut d = if let Some(d) = cached {
            d
        } else {
            let d = reg.show(&row.reference())?;
            if let Ok(mut m) = self.0.details.lock() {
                if m.len() >= 1024 {
                    m.clear();
                }
                m.insert(row.manifest_id, d.clone());
            }
            d
        };
        (d.merge, d.training) = reg.provenance(&row)?;
        d.checkpoint = row;
        Ok(d)
    }

    fn study(&self, name: &str) -> Result<Results, WebError> {
        let path = self
            .0
            .studies
            .get(name)
            .ok_or_else(|| WebError::not_found(format!("no study is named `{name}`")))?;
        Ok(read_results(path)?)
    }

    fn study_names(&self) -> impl Iterator<Item = &String> {
        self.0.studies.keys()
    }
}

fn read_results(path: &Path) -> crossmerge_core::Result<Results> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::invalid(
            format!("`{}` is not a study's results.json: {e}", path.display()),
            "name a folder that `crossmerge study --out` wrote",
        )
    })
}

/// Every route: HTML pages and `/api/…` JSON.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/style.css", get(pages::style))
        .route("/checkpoints", get(pages::checkpoints))
        .route("/checkpoints/{*reference}", get(pages::checkpoint))
        .route("/lineage", get(pages::lineage))
        .route("/vectors", get(pages::vectors))
        .route("/vectors/{*reference}", get(pages::vector))
        .route("/compare", get(pages::compare))
        .route("/evaluations", get(pages::evaluations))
        .route("/evaluations.csv", get(pages::evaluations_csv))
        .route("/evaluations/{id}", get(pages::trace))
        .route("/studies", get(pages::studies))
        .route("/studies/{name}", get(pages::study))
        .route("/api/checkpoints", get(api::checkpoints))
        .route("/api/checkpoints/{*reference}", get(api::checkpoint))
        .route("/api/lineage", get(api::lineage))
        .route("/api/du", get(api::du))
        .route("/api/vectors", get(api::vectors))
        .route("/api/vectors/{*reference}", get(api::vector))
        .route("/api/compare", get(api::compare))
        .route("/api/evaluations", get(api::evaluations))
        .route("/api/trace/{id}", get(api::trace))
        .route("/api/studies", get(api::studies))
        .route("/api/studies/{name}", get(api::study))
        .fallback(pages::not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

/// Defence in depth beside the escaping: the pages run no script at all (the policy forbids
/// any), load nothing from elsewhere, cannot be framed, and are never sniffed as another type.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'none'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Serves until the process is stopped; `ready` gets the bound address first.
pub fn serve(opts: &ServeOptions, ready: impl FnOnce(SocketAddr)) -> crossmerge_core::Result<()> {
    let app = App::new(&opts.registry, &opts.studies)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the server's runtime for", &opts.registry, e))?;
    runtime.block_on(async {
        let addr = SocketAddr::new(opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::invalid(
                format!("cannot listen on {addr}: {e}"),
                "pick another --port, or stop what listens there",
            )
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::invalid(format!("reading the bound address: {e}"), "retry"))?;
        ready(bound);
        axum::serve(listener, router(app))
            .await
            .map_err(|e| Error::invalid(format!("serving: {e}"), "restart `crossmerge serve`"))
    })
}

/// A failed request: its status and a message that names only what the URL named.
#[derive(Debug)]
pub(crate) struct WebError {
    status: StatusCode,
    message: String,
    hint: Option<String>,
}

impl WebError {
    fn not_found(message: String) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message,
            hint: None,
        }
    }

    fn bad_request(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
            hint: None,
        }
    }

    /// The details go to the server's log, not to the client (they may hold paths).
    fn internal(details: &str) -> Self {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("serve: {details}");
        }
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "the server could not read the registry (its log says why)".to_owned(),
            hint: None,
        }
    }
}

impl From<Error> for WebError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Ambiguous { .. } | Error::Invalid { .. } | Error::Recipe { .. } => {
                StatusCode::BAD_REQUEST
            }
            _ => return Self::internal(&e.to_string()),
        };
        Self {
            status,
            hint: e.hint(),
            message: e.to_string(),
        }
    }
}

/// An evaluation id from a URL: 6 to 64 hex digits, else nothing by that id exists (404,
/// as for any unknown id; the catalog is not asked).
pub(crate) fn evaluation_id(id: &str) -> Result<&str, WebError> {
    if (6..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        Err(WebError::not_found(format!(
            "no evaluation has the id `{id}`"
        )))
    }
}

/// Pretty JSON with a final newline: byte for byte what the CLI's `--json` prints.
pub(crate) fn cli_json<T: serde::Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("serialisable values");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::evaluation_id;

    #[test]
    fn only_hex_ids_reach_the_catalog() {
        assert!(evaluation_id("abcdef").is_ok());
        assert!(evaluation_id(&"0".repeat(64)).is_ok());
        for bad in [
            "abcde",
            "../../catalog.sqlite3",
            "abcdeg",
            "",
            &"0".repeat(65),
        ] {
            let e = evaluation_id(bad).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::NOT_FOUND, "{bad}");
        }
    }
}
