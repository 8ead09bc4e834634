//! A remote: keys under a prefix of an object store, through the `object_store` crate.
//!
//! `s3://bucket/prefix` (AWS S3 or anything that speaks its protocol: `MinIO`, Ceph, moto) or
//! `file:///path` (a shared file system). The calls here block (a small tokio runtime runs
//! them), so callers stay synchronous and parallelise with threads. Credentials come only from
//! the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, as the AWS tools read them); they are never stored, and no message here
//! names them. Transient failures (5xx, timeouts, dropped connections) are retried with
//! exponential back-off by `object_store`'s client.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

/// Where a remote is and how to reach it (no credentials: those come from the environment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    /// The remote's name in this registry (`origin`), used in messages.
    pub name: String,
    /// `s3://bucket[/prefix]` or `file:///absolute/path`.
    pub url: String,
    /// An S3 endpoint other than AWS's (`http://127.0.0.1:9000` for `MinIO` or moto).
    pub endpoint: Option<String>,
    /// Allow plain HTTP to the endpoint (test servers on loopback).
    pub allow_http: bool,
}

/// Uploads larger than this go up in parts (S3 refuses single PUTs beyond 5 GiB).
const PART: usize = 16 << 20;

/// An opened remote.
pub struct RemoteStore {
    name: String,
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a URL, before anything is contacted.
pub fn check_url(url: &str) -> std::result::Result<(), (String, String)> {
    parse(url).map(|_| ())
}

enum Parsed {
    S3 { bucket: String, prefix: String },
    File { path: String },
}

fn parse(url: &str) -> std::result::Result<Parsed, (String, String)> {
    let scheme_hint =
        "give s3://BUCKET/PREFIX (S3, MinIO, Ceph) or file:///ABSOLUTE/PATH (a shared file system)";
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err((
                format!("`{bucket}` is not an S3 bucket name"),
                "bucket names are 3 to 63 lower-case letters, digits, `-` and `.`".to_owned(),
            ));
        }
        let prefix = prefix.trim_matches('/').to_owned();
        if prefix.split('/').any(|p| p == ".." || p == ".") {
            return Err((
                format!("`{url}` has a `.` or `..` in its prefix"),
                "give the prefix as plain names separated by `/`".to_owned(),
            ));
        }
        return Ok(Parsed::S3 {
            bucket: bucket.to_owned(),
            prefix,
        });
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err((
                format!("`{url}` is not an absolute file URL"),
                "write file:///absolute/path (three slashes)".to_owned(),
            ));
        }
        return Ok(Parsed::File {
            path: path.to_owned(),
        });
    }
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    Err((
        if scheme.is_empty() {
            format!("`{url}` is not a remote URL")
        } else {
            format!("remotes of scheme `{scheme}` are not supported")
        },
        scheme_hint.to_owned(),
    ))
}

impl RemoteStore {
    /// Opens the remote `config` names (contacts nothing yet).
    pub fn open(config: &RemoteConfig) -> Result<Self> {
        let bad = |(message, hint): (String, String)| Error::Remote {
            remote: config.name.clone(),
            message,
            hint,
        };
        let parsed = parse(&config.url).map_err(bad)?;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match parsed {
            Parsed::S3 { bucket, prefix } => (Arc::new(s3(config, &bucket)?), prefix),
            Parsed::File { path } => {
                std::fs::create_dir_all(&path).map_err(|e| {
                    bad((
                        format!("cannot create `{path}`: {e}"),
                        "check that the shared file system is mounted and writable".to_owned(),
                    ))
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&path)
                    .map_err(|e| bad((e.to_string(), "check the path".to_owned())))?;
                (Arc::new(fs), String::new())
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the transfer runtime for", &config.url, e))?;
        Ok(Self {
            name: config.name.clone(),
            store,
            prefix: Key::from(prefix),
            runtime,
        })
    }

    /// The remote's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn key(&self, key: &str) -> Key {
        let mut k = self.prefix.clone();
        for part in key.split('/') {
            k = k.clone().join(part);
        }
        k
    }

    fn error(&self, what: &str, e: &object_store::Error) -> Error {
        remote_error(&self.name, what, e)
    }

    /// Every key under `dir` (relative to `dir`), with its size.
    pub fn list(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let base = self.key(dir);
        let start = base.as_ref().len() + usize::from(!base.as_ref().is_empty());
        self.runtime.block_on(async {
            let mut out = Vec::new();
            let mut s = self.store.list(Some(&base));
            while let Some(meta) = s.next().await {
                let meta = meta.map_err(|e| self.error(&format!("listing {dir}/"), &e))?;
                let full = meta.location.as_ref();
                out.push((full.get(start..).unwrap_or("").to_owned(), meta.size));
            }
            out.sort();
            Ok(out)
        })
    }

    /// The bytes at `key`, or `None` when it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut bytes = Vec::new();
        Ok(self.get_into(key, &mut bytes)?.map(|_| bytes))
    }

    /// Streams `key` into `out`; its length, or `None` when it does not exist.
    pub fn get_into(&self, key: &str, out: &mut dyn Write) -> Result<Option<u64>> {
        self.runtime.block_on(async {
            let r = match self.store.get(&self.key(key)).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.error(&format!("reading {key}"), &e)),
            };
            let mut n = 0u64;
            let mut s = r.into_stream();
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|e| self.error(&format!("reading {key}"), &e))?;
                out.write_all(&chunk)
                    .map_err(|e| Error::io("writing what was read from", key, e))?;
                n += chunk.len() as u64;
            }
            Ok(Some(n))
        })
    }

    /// Writes `bytes` at `key` (replacing what is there: keys are content-addressed, so it is
    /// the same content).
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.runtime.block_on(async {
            self.store
                .put(&self.key(key), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| self.error(&format!("writing {key}"), &e))
        })
    }

    /// Uploads everything `reader` holds to `key`, in parts when it is large; its size.
    pub fn put_reader(&self, key: &str, reader: &dyn crate::ObjectReader) -> Result<u64> {
        let len = reader.len();
        let read = |buf: &mut [u8], at: u64| {
            reader
                .read_exact_at(buf, at)
                .map_err(|e| Error::io("reading an object for", key, e))
        };
        if len as usize <= PART {
            let mut bytes = vec![0u8; len as usize];
            read(&mut bytes, 0)?;
            self.put(key, bytes)?;
            return Ok(len);
        }
        let target = self.key(key);
        self.runtime.block_on(async {
            let upload = self
                .store
                .put_multipart(&target)
                .await
                .map_err(|e| self.error(&format!("writing {key}"), &e))?;
            let mut parts = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(buf.len() as u64) as usize;
                read(&mut buf[..n], at)?;
                parts
                    .wait_for_capacity(4)
                    .await
                    .map_err(|e| self.error(&format!("writing {key}"), &e))?;
                parts.write(&buf[..n]);
                at += n as u64;
            }
            parts
                .finish()
                .await
                .map_err(|e| self.error(&format!("writing {key}"), &e))?;
            Ok(len)
        })
    }

    /// Removes `key` (absent is not an error).
    pub fn delete(&self, key: &str) -> Result<()> {
        self.runtime.block_on(async {
            match self.store.delete(&self.key(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.error(&format!("removing {key}"), &e)),
            }
        })
    }
}

/// An S3 client from the environment's credentials and region, and the remote's endpoint.
fn s3(config: &RemoteConfig, bucket: &str) -> Result<object_store::aws::AmazonS3> {
    use object_store::aws::AmazonS3Builder;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // Without keys object_store would try the instance metadata service (minutes of timeouts
    // off AWS): say what is missing instead. Role-based credentials (web identity, ECS) are
    // taken when their variables are set.
    let role = env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
    let keys = env("AWS_ACCESS_KEY_ID").is_some() && env("AWS_SECRET_ACCESS_KEY").is_some();
    if !keys && !role {
        return Err(Error::Remote {
            remote: config.name.clone(),
            message: "no S3 credentials in the environment".to_owned(),
            hint: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary keys); crossmerge never stores them".to_owned(),
        });
    }
    let retry = object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 5,
        retry_timeout: Duration::from_secs(60),
    };
    let client = object_store::ClientOptions::new()
        .with_allow_http(config.allow_http)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(300));
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry)
        .with_client_options(client)
        .with_allow_http(config.allow_http);
    if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
        b = b.with_region("us-east-1");
    }
    if let Some(endpoint) = &config.endpoint {
        b = b
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    b.build().map_err(|e| Error::Remote {
        remote: config.name.clone(),
        message: first_line(&e.to_string()),
        hint: "check the URL, --endpoint and the AWS_* variables".to_owned(),
    })
}

/// The first line of a message, without anything that looks like a credential.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").to_owned();
    let mut out = line.clone();
    for k in [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ACCESS_KEY_ID",
    ] {
        if let Ok(v) = std::env::var(k)
            && v.len() >= 4
        {
            out = out.replace(&v, "***");
        }
    }
    out
}

fn remote_error(remote: &str, what: &str, e: &object_store::Error) -> Error {
    let hint = match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            "check the AWS_* credentials in the environment and the bucket's permissions"
        }
        object_store::Error::NotFound { .. } => "check the URL: the bucket or key does not exist",
        _ => "check the endpoint and the network, then run the command again: what arrived is kept",
    };
    Error::Remote {
        remote: remote.to_owned(),
        message: format!("{what}: {}", first_line(&e.to_string())),
        hint: hint.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<u8>);

    impl crate::ObjectReader for Bytes {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let at = usize::try_from(offset).unwrap();
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            Ok(())
        }
    }

    #[test]
    fn urls_are_checked_before_anything_is_contacted() {
        assert!(check_url("s3://my-bucket/some/prefix").is_ok());
        assert!(check_url("s3://my-bucket").is_ok());
        assert!(check_url("file:///srv/registry").is_ok());
        for bad in [
            "gs://bucket/x",
            "bucket/x",
            "s3://A/x",
            "s3://ab",
            "file://relative/path",
            "s3://bucket/../x",
        ] {
            let (message, hint) = check_url(bad).unwrap_err();
            assert!(!message.is_empty() && !hint.is_empty(), "{bad}");
        }
    }

    #[test]
    fn a_folder_remote_lists_gets_and_puts() {
        let dir = tempfile::tempdir().unwrap();
        let r = RemoteStore::open(&RemoteConfig {
            name: "shared".into(),
            url: format!("file://{}", dir.path().display()),
            endpoint: None,
            allow_http: false,
        })
        .unwrap();
        assert_eq!(r.get("objects/ab/x").unwrap(), None);
        r.put("objects/ab/x", b"hello".to_vec()).unwrap();
        r.put("records/y.json", b"{}".to_vec()).unwrap();
        assert_eq!(r.get("objects/ab/x").unwrap().unwrap(), b"hello");
        assert_eq!(r.list("objects").unwrap(), vec![("ab/x".to_owned(), 5)]);
        let data: Vec<u8> = (0..(PART + 12345)).map(|i| (i % 251) as u8).collect();
        let up = tempfile::tempdir().unwrap();
        let r2 = RemoteStore::open(&RemoteConfig {
            name: "other".into(),
            url: format!("file://{}", up.path().display()),
            endpoint: None,
            allow_http: false,
        })
        .unwrap();
        // Larger than a part: uploaded in parts.
        assert_eq!(
            r2.put_reader("objects/cd/big", &Bytes(data.clone()))
                .unwrap(),
            data.len() as u64
        );
        let mut back = Vec::new();
        assert_eq!(
            r2.get_into("objects/cd/big", &mut back).unwrap(),
            Some(data.len() as u64)
        );
        assert_eq!(back, data);
        r2.delete("objects/cd/big").unwrap();
        assert!(r2.list("objects").unwrap().is_empty());
    }
}
