//! The archive store: S3 (AWS, MinIO, Garage; only standard calls, path-style addressing as an
//! option) or, with no bucket configured, a local directory with the same key layout.
//!
//! Objects are written once: a put never replaces an existing key (on S3 a HEAD first, then a
//! conditional `If-None-Match: *` put where the server honours it, as AWS and MinIO do; a hard
//! link on the directory), and since keys name their events, finding the key taken means the
//! object is already stored. Bodies arrive as a stream of parts and go up as a multipart
//! upload when there is more than one, so memory does not grow with the object. Every S3 call
//! has a time limit, and failures are told apart: [`StoreError::is_permanent`] (the request
//! itself is refused, e.g. 403) or worth retrying (timeouts, 5xx, connection errors).

use std::{path::PathBuf, time::Duration};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::provider::{ProvideCredentials, future};
use aws_sdk_s3::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, SharedCredentialsProvider, retry::RetryConfig,
        timeout::TimeoutConfig,
    },
    error::{ProvideErrorMetadata, SdkError},
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use bytes::Bytes;
use learntrail_runtime::units::{parse_bytes, parse_duration};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::{io::AsyncWriteExt as _, sync::mpsc};

/// Where archives go. With `S3_BUCKET` unset, the local directory `ARCHIVE_DIR`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// S3 bucket; unset = archive to ARCHIVE_DIR instead
    #[arg(long, env = "S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3 endpoint URL (MinIO, Garage, ...); unset = AWS
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region
    #[arg(long, env = "S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Path-style addressing (http://host/bucket/key), needed by most non-AWS servers
    #[arg(long, env = "S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// S3 access key id
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    pub aws_access_key_id: Option<String>,
    /// S3 secret access key
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub aws_secret_access_key: Option<SecretString>,
    /// Part size of uploads (at least 5MiB): an object is compressed and sent a part at a time,
    /// so memory stays near three parts whatever the segment size; a smaller object is one PUT
    #[arg(long, env = "S3_MULTIPART_BYTES", default_value = "8MiB", value_parser = parse_bytes)]
    pub s3_multipart_bytes: u64,
    /// Time limit of one S3 request (each part of an upload is one); past it the request is
    /// abandoned and retried later
    #[arg(long, env = "S3_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub s3_timeout: Duration,
    /// Local archive directory when no S3 bucket is set
    #[arg(long, env = "ARCHIVE_DIR", default_value = "var/archive")]
    pub archive_dir: PathBuf,
}

fn parse_secret(text: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(text))
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("local archive: {0}")]
    Io(#[from] std::io::Error),
    /// Reading the body failed (the segment being uploaded).
    #[error("reading the object's body: {0}")]
    Body(std::io::Error),
    /// Worth retrying: a timeout, a connection error, a 5xx, throttling.
    #[error("s3: {0}")]
    S3(String),
    /// The request is refused and will be again (403, 400, 404 bucket, ...).
    #[error("s3 refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// The key is taken (a conditional put found an object there).
    #[error("the key already exists")]
    Exists,
    #[error(
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together: set both, or neither to use the standard AWS credential chain"
    )]
    NoCredentials,
}

impl StoreError {
    /// True when retrying the same request cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected { .. } | Self::NoCredentials)
    }
}

/// Tells a refused request (permanent) from a failure worth retrying.
fn s3_error<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    // the SDK's Display is terse; its source chain says what happened
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    match status {
        Some(412) => StoreError::Exists,
        Some(status) if is_permanent(status, code.as_deref()) => {
            StoreError::Rejected { status, message }
        }
        _ => StoreError::S3(message),
    }
}

/// 4xx refusals are permanent, except timeouts, conflicts and throttling.
fn is_permanent(status: u16, code: Option<&str>) -> bool {
    let transient_code = matches!(
        code,
        Some(
            "RequestTimeout"
                | "SlowDown"
                | "InternalError"
                | "ServiceUnavailable"
                | "OperationAborted"
        )
    );
    (400..500).contains(&status) && !matches!(status, 408 | 409 | 429) && !transient_code
}

#[derive(Debug, Clone)]
pub enum Store {
    Local(PathBuf),
    S3 {
        client: Client,
        bucket: String,
        part_bytes: u64,
    },
}

impl Store {
    pub fn from_args(args: &StoreArgs) -> Result<Self, StoreError> {
        let Some(bucket) = &args.s3_bucket else {
            return Ok(Self::Local(args.archive_dir.clone()));
        };
        let credentials = match (&args.aws_access_key_id, &args.aws_secret_access_key) {
            (Some(key), Some(secret)) => SharedCredentialsProvider::new(Credentials::new(
                key,
                secret.expose_secret(),
                None,
                None,
                "learntrail",
            )),
            (None, None) => SharedCredentialsProvider::new(DefaultChain {
                region: Region::new(args.s3_region.clone()),
                chain: tokio::sync::OnceCell::new(),
            }),
            _ => return Err(StoreError::NoCredentials),
        };
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5).min(args.s3_timeout))
            .read_timeout(args.s3_timeout)
            .operation_attempt_timeout(args.s3_timeout)
            .operation_timeout(args.s3_timeout * 3)
            .build();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(args.s3_region.clone()))
            .credentials_provider(credentials)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .force_path_style(args.s3_path_style);
        if let Some(endpoint) = &args.s3_endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(Self::S3 {
            client: Client::from_conf(config.build()),
            bucket: bucket.clone(),
            part_bytes: args.s3_multipart_bytes.max(5 << 20),
        })
    }

    /// A human description (for logs).
    pub fn describe(&self) -> String {
        match self {
            Self::Local(dir) => format!("directory {}", dir.display()),
            Self::S3 { bucket, .. } => format!("s3://{bucket}"),
        }
    }

    /// The size of the parts a body should be streamed in.
    pub fn part_bytes(&self) -> usize {
        match self {
            Self::Local(_) => 1 << 20,
            Self::S3 { part_bytes, .. } => *part_bytes as usize,
        }
    }

    /// Whether the store answers (the bucket exists and the key may see it; the directory can
    /// be created).
    pub async fn check(&self) -> Result<(), StoreError> {
        match self {
            Self::Local(dir) => Ok(tokio::fs::create_dir_all(dir).await?),
            Self::S3 { client, bucket, .. } => {
                client
                    .head_bucket()
                    .bucket(bucket)
                    .send()
                    .await
                    .map_err(s3_error)?;
                Ok(())
            }
        }
    }

    /// Whether an object is stored under `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Self::Local(dir) => Ok(tokio::fs::try_exists(dir.join(key)).await?),
            Self::S3 { client, bucket, .. } => {
                match client.head_object().bucket(bucket).key(key).send().await {
                    Ok(_) => Ok(true),
                    Err(err)
                        if err
                            .raw_response()
                            .is_some_and(|r| r.status().as_u16() == 404) =>
                    {
                        Ok(false)
                    }
                    Err(err) => Err(s3_error(err)),
                }
            }
        }
    }

    /// Stores `body` under `key` unless the key is taken ([`StoreError::Exists`]).
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<u64, StoreError> {
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(Bytes::from(body)))
            .await
            .expect("the receiver is here");
        drop(tx);
        self.put_parts(key, rx).await
    }

    /// Stores the body arriving in `parts` under `key`, unless the key is taken
    /// ([`StoreError::Exists`]). Every part but the last must be at least 5 MiB for S3. Returns
    /// the object's size. Durable when it returns (the directory store syncs file and folder).
    pub async fn put_parts(
        &self,
        key: &str,
        mut parts: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<u64, StoreError> {
        match self {
            Self::Local(dir) => put_local(dir, key, parts).await,
            Self::S3 { client, bucket, .. } => {
                // Some servers (Garage) ignore If-None-Match: look first. The race left (two
                // writers of one key at once) writes the same events: keys name them.
                if self.exists(key).await? {
                    return Err(StoreError::Exists);
                }
                let Some(first) = parts.recv().await else {
                    return put_single(client, bucket, key, Bytes::new()).await;
                };
                let first = first.map_err(StoreError::Body)?;
                match parts.recv().await {
                    None => put_single(client, bucket, key, first).await,
                    Some(second) => {
                        let second = second.map_err(StoreError::Body)?;
                        put_multipart(client, bucket, key, [first, second], parts).await
                    }
                }
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        match self {
            Self::Local(dir) => Ok(tokio::fs::read(dir.join(key)).await?),
            Self::S3 { client, bucket, .. } => {
                let object = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(s3_error)?;
                let body = object
                    .body
                    .collect()
                    .await
                    .map_err(|e| StoreError::S3(e.to_string()))?;
                Ok(body.into_bytes().to_vec())
            }
        }
    }

    /// The sources archived under `prefix` (the `source=` folders), sorted: every one written,
    /// those outside Learntrail's own sources included.
    pub async fn sources(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let folder = format!("{prefix}/source=");
        let mut sources = match self {
            Self::Local(dir) => {
                let mut names = Vec::new();
                let entries = match std::fs::read_dir(dir.join(prefix)) {
                    Ok(entries) => entries,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(names),
                    Err(err) => return Err(err.into()),
                };
                for entry in entries {
                    let entry = entry?;
                    if entry.file_type()?.is_dir()
                        && let Some(source) = entry
                            .file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("source=").map(String::from))
                    {
                        names.push(source);
                    }
                }
                names
            }
            Self::S3 { client, bucket, .. } => {
                let mut names = Vec::new();
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(&folder)
                    .delimiter("/")
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(s3_error)?;
                    names.extend(page.common_prefixes().iter().filter_map(|p| {
                        p.prefix()?
                            .strip_prefix(&folder)?
                            .strip_suffix('/')
                            .map(String::from)
                    }));
                }
                names
            }
        };
        sources.sort();
        sources.dedup();
        Ok(sources)
    }

    /// Keys under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = match self {
            Self::Local(dir) => list_local(dir, prefix)?,
            Self::S3 { client, bucket, .. } => {
                let mut keys = Vec::new();
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(s3_error)?;
                    keys.extend(
                        page.contents()
                            .iter()
                            .filter_map(|o| o.key().map(String::from)),
                    );
                }
                keys
            }
        };
        keys.sort();
        Ok(keys)
    }
}

fn list_local(dir: &std::path::Path, prefix: &str) -> Result<Vec<String>, StoreError> {
    let mut keys = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                let key = relative.to_string_lossy().into_owned();
                if key.starts_with(prefix)
                    && !path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
                {
                    keys.push(key);
                }
            }
        }
    }
    Ok(keys)
}

async fn put_local(
    dir: &std::path::Path,
    key: &str,
    mut parts: mpsc::Receiver<std::io::Result<Bytes>>,
) -> Result<u64, StoreError> {
    let path = dir.join(key);
    let parent = path.parent().expect("keys have a directory").to_path_buf();
    tokio::fs::create_dir_all(&parent).await?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let tmp = parent.join(format!(".tmp-{}-{name}", std::process::id()));
    let written: Result<u64, StoreError> = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut size = 0;
        while let Some(part) = parts.recv().await {
            let part = part.map_err(StoreError::Body)?;
            file.write_all(&part).await?;
            size += part.len() as u64;
        }
        // durable before the caller acks: data, then the name, then the directory
        file.sync_data().await?;
        Ok(size)
    }
    .await;
    let linked = match written {
        // a link never replaces an existing name
        Ok(size) => match tokio::fs::hard_link(&tmp, &path).await {
            Ok(()) => Ok(size),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Err(StoreError::Exists),
            Err(err) => Err(err.into()),
        },
        Err(err) => Err(err),
    };
    let _ = tokio::fs::remove_file(&tmp).await;
    let size = linked?;
    tokio::task::spawn_blocking(move || std::fs::File::open(&parent)?.sync_all())
        .await
        .map_err(std::io::Error::other)??;
    Ok(size)
}

async fn put_single(
    client: &Client,
    bucket: &str,
    key: &str,
    body: Bytes,
) -> Result<u64, StoreError> {
    let size = body.len() as u64;
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .if_none_match("*")
        .content_type("application/gzip")
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(s3_error)?;
    Ok(size)
}

async fn put_multipart(
    client: &Client,
    bucket: &str,
    key: &str,
    first: [Bytes; 2],
    mut rest: mpsc::Receiver<std::io::Result<Bytes>>,
) -> Result<u64, StoreError> {
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type("application/gzip")
        .send()
        .await
        .map_err(s3_error)?;
    let upload_id = upload
        .upload_id()
        .ok_or_else(|| StoreError::S3("no upload id".into()))?
        .to_string();
    let result: Result<u64, StoreError> = async {
        let mut parts = Vec::new();
        let mut size = 0;
        let [one, two] = first;
        let mut next = vec![one, two];
        loop {
            for body in next.drain(..) {
                let number = parts.len() as i32 + 1;
                size += body.len() as u64;
                let part = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(s3_error)?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(String::from))
                        .build(),
                );
            }
            match rest.recv().await {
                Some(part) => next.push(part.map_err(StoreError::Body)?),
                None => break,
            }
        }
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(s3_error)?;
        Ok(size)
    }
    .await;
    if result.is_err() {
        let _ = client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
    }
    result
}

/// The standard AWS credential chain (environment, profile files, web identity such as EKS's
/// IRSA, ECS task role, EC2 instance profile), built on first use: used when no static keys are
/// configured, so an operator need not mint keys for the archive.
#[derive(Debug)]
struct DefaultChain {
    region: Region,
    chain: tokio::sync::OnceCell<DefaultCredentialsChain>,
}

impl ProvideCredentials for DefaultChain {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let chain = self
                .chain
                .get_or_init(|| {
                    DefaultCredentialsChain::builder()
                        .region(self.region.clone())
                        .build()
                })
                .await;
            chain.provide_credentials().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_permanent_and_outages_are_not() {
        for status in [400, 403, 404, 405, 411, 413] {
            assert!(is_permanent(status, None), "{status}");
        }
        for status in [408, 409, 429, 500, 502, 503] {
            assert!(!is_permanent(status, None), "{status}");
        }
        assert!(!is_permanent(400, Some("RequestTimeout")));
    }

    #[tokio::test]
    async fn the_directory_store_never_replaces_an_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(dir.path().to_path_buf());
        let key = "events/source=lms/dt=2026-11-24/hour=16/a.ndjson.gz";
        assert!(!store.exists(key).await.unwrap());
        assert_eq!(store.put(key, b"all ten".to_vec()).await.unwrap(), 7);
        assert!(matches!(
            store.put(key, b"two".to_vec()).await,
            Err(StoreError::Exists)
        ));
        assert_eq!(store.get(key).await.unwrap(), b"all ten");
        assert_eq!(store.list("events/").await.unwrap(), [key]);
    }

    #[test]
    fn the_secret_key_never_prints() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Args {
            #[command(flatten)]
            store: StoreArgs,
        }
        let args = Args::parse_from(["x", "--aws-secret-access-key", "hunter2-very-secret"]);
        assert!(!format!("{args:?}").contains("hunter2"));
    }
}
