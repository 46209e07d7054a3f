//! The BackupStore as an `object_store`: a local directory or an S3 bucket, and the probe
//! that finds out how safe backups are there.

use std::sync::Arc;

use futures::StreamExt;
use object_store::{
    ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, aws::AmazonS3Builder,
    local::LocalFileSystem, path::Path, signer::Signer,
};
use sha2::{Digest, Sha256};

use super::s3::{self, S3Failure};
use crate::api::backup_store::{BackupStoreSpec, StoreType};

/// S3 credentials, read from the store's Secret. Never logged.
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The session token of temporary (STS) credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// An opened store, with the key prefix every path is under.
#[derive(Clone)]
pub struct Store {
    pub kind: StoreType,
    inner: Arc<dyn ObjectStore>,
    /// What signs pre-signed URLs: S3 only.
    signer: Option<Arc<dyn Signer>>,
    prefix: String,
}

/// What [`Store::digest`] found in one stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest256 {
    pub sha256: String,
    pub bytes: u64,
    /// The object's first bytes, at most the `head` asked for.
    pub head: Vec<u8>,
}

/// What went wrong talking to a store, in words for a status message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Config(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::Io {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }

    pub fn is_already_there(&self) -> bool {
        matches!(
            self,
            StoreError::Io {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }
        )
    }
}

impl Store {
    /// Opens the store the spec describes. S3 needs the credentials.
    pub fn open(
        spec: &BackupStoreSpec,
        credentials: Option<Credentials>,
    ) -> Result<Self, StoreError> {
        if let Some(filesystem) = &spec.filesystem {
            let path = std::path::Path::new(&filesystem.path);
            if !path.is_dir() {
                return Err(StoreError::Config(format!(
                    "{} is not a directory the operator can see (is the volume mounted?)",
                    filesystem.path
                )));
            }
            let inner = LocalFileSystem::new_with_prefix(path)
                .map_err(|error| StoreError::Config(format!("{}: {error}", filesystem.path)))?;
            return Ok(Store {
                kind: StoreType::Filesystem,
                inner: Arc::new(inner),
                signer: None,
                prefix: String::new(),
            });
        }
        let Some(s3) = &spec.s3 else {
            return Err(StoreError::Config(
                "the store has neither filesystem nor s3".into(),
            ));
        };
        let credentials =
            credentials.ok_or_else(|| StoreError::Config("S3 credentials are missing".into()))?;
        // Client options first: they replace the whole set, allow_http included.
        let client_options = ClientOptions::new()
            .with_connect_timeout(s3::CONNECT_TIMEOUT)
            .with_timeout(s3::REQUEST_TIMEOUT);
        let mut builder = AmazonS3Builder::new()
            .with_client_options(client_options)
            .with_bucket_name(&s3.bucket)
            .with_region(s3.region.as_deref().unwrap_or("us-east-1"))
            .with_access_key_id(credentials.access_key_id)
            .with_secret_access_key(credentials.secret_access_key)
            .with_virtual_hosted_style_request(!s3.force_path_style)
            .with_allow_http(s3.allow_insecure_http);
        if let Some(token) = credentials.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &s3.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let inner = Arc::new(
            builder
                .build()
                .map_err(|error| StoreError::Config(format!("bucket {}: {error}", s3.bucket)))?,
        );
        Ok(Store {
            kind: StoreType::S3,
            inner: inner.clone(),
            signer: Some(inner),
            prefix: s3.prefix.clone().unwrap_or_default(),
        })
    }

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    /// Writes `key`; never overwrites: an existing object is an error. Returns the version
    /// the store gave it, in a versioned bucket.
    pub async fn create(&self, key: &str, bytes: Vec<u8>) -> Result<Option<String>, StoreError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.inner
            .put_opts(&self.path(key), PutPayload::from(bytes), options)
            .await
            .map(|result| result.version)
            .map_err(|source| StoreError::Io {
                action: "write",
                path: key.to_owned(),
                source,
            })
    }

    /// Overwrites `key` (the probe uses it to learn whether it can).
    pub async fn overwrite(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.inner
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|source| StoreError::Io {
                action: "overwrite",
                path: key.to_owned(),
                source,
            })
    }

    pub async fn read(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let error = |source| StoreError::Io {
            action: "read",
            path: key.to_owned(),
            source,
        };
        let result = self.inner.get(&self.path(key)).await.map_err(error)?;
        let bytes = result.bytes().await.map_err(error)?;
        Ok(bytes.to_vec())
    }

    /// The SHA-256 and size of `key`, read as a stream (a dump may be larger than memory),
    /// and its first `head` bytes; `None` when there is no such object.
    pub async fn digest(&self, key: &str, head: usize) -> Result<Option<Digest256>, StoreError> {
        let error = |source| StoreError::Io {
            action: "read",
            path: key.to_owned(),
            source,
        };
        let result = match self.inner.get(&self.path(key)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(error(source)),
        };
        let mut stream = result.into_stream();
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut first = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(error)?;
            if first.len() < head {
                let wanted = (head - first.len()).min(chunk.len());
                first.extend_from_slice(&chunk[..wanted]);
            }
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
        }
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Some(Digest256 {
            sha256,
            bytes,
            head: first,
        }))
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.inner.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(StoreError::Io {
                action: "look for",
                path: key.to_owned(),
                source,
            }),
        }
    }

    /// A pre-signed URL for `method` (PUT or GET) on exactly `key`, valid for `valid_for`:
    /// whoever holds it can do that one thing without the store's credentials. S3 only;
    /// the URL is a credential and is never logged.
    pub async fn presign(
        &self,
        method: reqwest::Method,
        key: &str,
        valid_for: std::time::Duration,
    ) -> Result<String, StoreError> {
        let Some(signer) = &self.signer else {
            return Err(StoreError::Config(
                "a filesystem store cannot hand out upload or download URLs".into(),
            ));
        };
        signer
            .signed_url(method, &self.path(key), valid_for)
            .await
            .map(|url| url.to_string())
            .map_err(|source| StoreError::Io {
                action: "sign a URL for",
                path: key.to_owned(),
                source,
            })
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner
            .delete(&self.path(key))
            .await
            .map_err(|source| StoreError::Io {
                action: "delete",
                path: key.to_owned(),
                source,
            })
    }
}

/// Why a store could not be probed: a condition reason (the S3 error code, `Timeout`,
/// `Unreachable`) and what failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreachable {
    pub reason: String,
    pub message: String,
}

impl From<S3Failure> for Unreachable {
    fn from(failure: S3Failure) -> Self {
        Unreachable {
            reason: failure.reason(),
            message: failure.to_string(),
        }
    }
}

/// Whether the operator's credentials could destroy the probe object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Overwritten, deleted, or its version deleted.
    Possible,
    /// Every way of destroying it was refused by the store (the codes it gave).
    Refused { codes: Vec<String> },
    /// Not known: the probe could not write, or a try failed for another reason.
    Unknown { reason: String, message: String },
}

/// What a probe found.
#[derive(Debug)]
pub struct Probe {
    pub reachable: Result<(), Unreachable>,
    pub deletion: Deletion,
}

impl Probe {
    fn unreachable(unreachable: Unreachable) -> Self {
        Probe {
            deletion: Deletion::Unknown {
                reason: unreachable.reason.clone(),
                message: "the store could not be probed".to_owned(),
            },
            reachable: Err(unreachable),
        }
    }
}

/// The key of a probe object, under `probes/`.
pub fn probe_key(probe_name: &str) -> String {
    format!("probes/{probe_name}")
}

/// What a failed store call says: read through the S3 error it carries, if any.
fn failure_of(error: &StoreError) -> S3Failure {
    match error {
        StoreError::Io {
            action,
            path,
            source,
        } => S3Failure::of_store_error(&format!("{action} {path}"), source),
        StoreError::Config(message) => S3Failure::Failed {
            what: "opening the store".to_owned(),
            message: message.clone(),
        },
    }
}

/// Whether a failed overwrite or delete was refused by the store itself: S3's refusal, or
/// a filesystem's permission error. Anything else says nothing about what is possible.
fn refusal_of(error: &StoreError) -> Result<String, S3Failure> {
    let failure = failure_of(error);
    if let S3Failure::Answered { code, .. } = &failure
        && failure.is_refusal()
    {
        return Ok(code.clone());
    }
    if let StoreError::Io { source, .. } = error {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(current) = cause {
            if let Some(io) = current.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::PermissionDenied
            {
                return Ok("PermissionDenied".to_owned());
            }
            cause = current.source();
        }
    }
    Err(failure)
}

/// Writes a probe object; in a versioned bucket, returns its version so that the caller can
/// try to destroy exactly that version. Otherwise tries to overwrite and delete it.
pub async fn probe(store: &Store, probe_name: &str) -> (Probe, Option<String>) {
    let key = probe_key(probe_name);
    let version = match store.create(&key, b"resurgo probe".to_vec()).await {
        Ok(version) => version,
        Err(error) if error.is_already_there() => None,
        Err(error) => return (Probe::unreachable(failure_of(&error).into()), None),
    };
    if version.is_some() {
        return (
            Probe {
                reachable: Ok(()),
                deletion: Deletion::Unknown {
                    reason: "NotTried".to_owned(),
                    message: "the probe object's version was not deleted yet".to_owned(),
                },
            },
            version,
        );
    }
    let overwrite = store
        .overwrite(&key, b"resurgo probe, again".to_vec())
        .await;
    let delete = store.delete(&key).await;
    let deletion = match (overwrite, delete) {
        (Ok(()), _) | (_, Ok(())) => Deletion::Possible,
        (Err(overwrite), Err(delete)) => match (refusal_of(&overwrite), refusal_of(&delete)) {
            (Ok(first), Ok(second)) => Deletion::Refused {
                codes: if first == second {
                    vec![first]
                } else {
                    vec![first, second]
                },
            },
            (Err(failure), _) | (_, Err(failure)) => {
                if failure.makes_unreachable() {
                    return (Probe::unreachable(failure.into()), None);
                }
                Deletion::Unknown {
                    reason: failure.reason(),
                    message: failure.to_string(),
                }
            }
        },
    };
    (
        Probe {
            reachable: Ok(()),
            deletion,
        },
        None,
    )
}

impl Store {
    /// The full key of `key` in the bucket, with the store's prefix.
    pub fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}
