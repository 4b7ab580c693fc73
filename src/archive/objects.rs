//! The object store behind `archive.url`: `file:///path` (the embedded default and air-gapped
//! sites) or `s3://bucket/prefix` (AWS settings from the usual environment). Objects are
//! created never-overwrite (`PutMode::Create`); one that exists already is compared with what
//! would have been written, and a difference is an error, never an overwrite.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use sha2::{Digest as _, Sha256};

use super::ArchiveError;

/// An archive root: a store and the prefix inside it.
#[derive(Clone, Debug)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The URL as configured (for messages).
    pub url: String,
}

/// What [`Objects::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Written now.
    New,
    /// Already there with exactly these bytes (an earlier attempt wrote it).
    Same,
}

impl Objects {
    /// Opens `url` (`file:///abs/path`, `s3://bucket/prefix`) or a local directory path.
    pub fn open(url: &str) -> Result<Objects, ArchiveError> {
        Objects::open_with(url, &[])
    }

    /// [`Objects::open`] for reading an archive that must exist (a local directory is not
    /// created).
    pub fn open_existing(url: &str) -> Result<Objects, ArchiveError> {
        if let Some(dir) = local_dir(url)
            && !dir.is_dir()
        {
            return Err(ArchiveError::Config(format!(
                "{} is not a directory: no archive there",
                dir.display()
            )));
        }
        Objects::open_with(url, &[])
    }

    /// [`Objects::open`] with S3 settings (`aws_endpoint`, `aws_access_key_id`,
    /// `aws_allow_http`, …) over those of the environment.
    pub fn open_with(url: &str, s3_options: &[(&str, &str)]) -> Result<Objects, ArchiveError> {
        let parsed = match url::Url::parse(url) {
            Ok(u) if u.scheme().len() > 1 => u,
            // A plain path (`archive verify ./copy`): a local directory.
            _ => {
                let abs = std::path::absolute(url)
                    .map_err(|e| ArchiveError::Config(format!("archive path {url}: {e}")))?;
                url::Url::from_directory_path(&abs).map_err(|()| {
                    ArchiveError::Config(format!("archive path {url} is not a directory path"))
                })?
            }
        };
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| {
                    ArchiveError::Config(format!("archive URL {url} names no local path"))
                })?;
                std::fs::create_dir_all(&dir).map_err(|e| {
                    ArchiveError::Config(format!(
                        "cannot create the archive directory {}: {e}",
                        dir.display()
                    ))
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(ArchiveError::store(format!("opening {url}")))?;
                (Arc::new(fs), Path::default())
            }
            "s3" | "s3a" => {
                let bucket = parsed.host_str().unwrap_or_default().to_string();
                // Bounded retries: a pass against an unreachable store fails within about a
                // minute (and says so in /health) instead of retrying for minutes.
                let retry = object_store::RetryConfig {
                    max_retries: 3,
                    retry_timeout: std::time::Duration::from_secs(30),
                    ..object_store::RetryConfig::default()
                };
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry);
                for (k, v) in s3_options {
                    let key = k
                        .parse()
                        .map_err(|e| ArchiveError::Config(format!("S3 setting {k}: {e}")))?;
                    builder = builder.with_config(key, *v);
                }
                let s3 = builder
                    .build()
                    .map_err(ArchiveError::store(format!("opening {url}")))?;
                let prefix = Path::from(parsed.path().trim_matches('/'));
                (Arc::new(s3), prefix)
            }
            other => {
                return Err(ArchiveError::Config(format!(
                    "archive URL scheme {other}: is not supported (file:// or s3://)"
                )));
            }
        };
        Ok(Objects {
            store,
            prefix,
            url: url.to_string(),
        })
    }

    fn path(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// Creates `rel` with `bytes`, never overwriting: an existing object with the same bytes
    /// is [`Created::Same`], one with other bytes an [`ArchiveError::Conflict`].
    pub async fn create(&self, rel: &str, bytes: Bytes) -> Result<Created, ArchiveError> {
        let path = self.path(rel);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let want = Sha256::digest(&bytes);
        let len = bytes.len() as u64;
        match self
            .store
            .put_opts(&path, PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(_) => Ok(Created::New),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let (size, sha) = self.digest(rel).await?;
                if size == len && sha[..] == want[..] {
                    Ok(Created::Same)
                } else {
                    Err(ArchiveError::Conflict(format!(
                        "{}/{rel} exists already with other content; archive objects are never \
                         overwritten: move the object away (keep it: it may be evidence) and run \
                         the archive again",
                        self.url.trim_end_matches('/')
                    )))
                }
            }
            Err(e) => Err(ArchiveError::store(format!("writing {rel}"))(e)),
        }
    }

    /// `(size, SHA-256)` of `rel`, streamed.
    pub async fn digest(&self, rel: &str) -> Result<(u64, [u8; 32]), ArchiveError> {
        let what = || format!("reading {rel}");
        let got = self
            .store
            .get(&self.path(rel))
            .await
            .map_err(ArchiveError::store(what()))?;
        let mut stream = got.into_stream();
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(ArchiveError::store(what()))?;
            n += chunk.len() as u64;
            h.update(&chunk);
        }
        Ok((n, h.finalize().into()))
    }

    /// The whole object `rel`; `Ok(None)` when it does not exist.
    pub async fn read(&self, rel: &str) -> Result<Option<Bytes>, ArchiveError> {
        match self.store.get(&self.path(rel)).await {
            Ok(got) => got
                .bytes()
                .await
                .map(Some)
                .map_err(ArchiveError::store(format!("reading {rel}"))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(ArchiveError::store(format!("reading {rel}"))(e)),
        }
    }

    /// Every object's path relative to the root, sorted.
    pub async fn list(&self) -> Result<Vec<String>, ArchiveError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut stream = self.store.list(prefix);
        let mut out = Vec::new();
        let skip = self.prefix.as_ref().len();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(ArchiveError::store("listing the archive"))?;
            let full = meta.location.as_ref();
            let rel = if skip == 0 {
                full
            } else {
                full.get(skip..).unwrap_or("").trim_start_matches('/')
            };
            out.push(rel.to_string());
        }
        out.sort();
        Ok(out)
    }

    /// A cheap request proving the store answers and accepts these credentials.
    pub async fn probe(&self) -> Result<(), ArchiveError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        self.store
            .list_with_delimiter(prefix)
            .await
            .map(|_| ())
            .map_err(ArchiveError::store(format!("reaching {}", self.url)))
    }
}

/// The local directory `url` names (`file://…` or a plain path), if it names one.
fn local_dir(url: &str) -> Option<std::path::PathBuf> {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "file" => u.to_file_path().ok(),
        Ok(u) if u.scheme().len() > 1 => None,
        _ => std::path::absolute(url).ok(),
    }
}
