//! The archive store: S3 (AWS, MinIO, Garage; only standard calls, path-style addressing as an
//! option, multipart for large objects) or, with no bucket configured, a local directory with the
//! same key layout.

use std::path::PathBuf;

use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use bytes::Bytes;
use learntrail_runtime::units::parse_bytes;

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
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub aws_secret_access_key: Option<String>,
    /// Objects larger than this are sent as multipart uploads (at least 5MiB)
    #[arg(long, env = "S3_MULTIPART_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub s3_multipart_bytes: u64,
    /// Local archive directory when no S3 bucket is set
    #[arg(long, env = "ARCHIVE_DIR", default_value = "var/archive")]
    pub archive_dir: PathBuf,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("local archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("s3: {0}")]
    S3(String),
    #[error("S3 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
    NoCredentials,
}

fn s3_error(err: impl std::error::Error) -> StoreError {
    // the SDK's Display is terse; its source chain says what happened
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    StoreError::S3(message)
}

#[derive(Debug, Clone)]
pub enum Store {
    Local(PathBuf),
    S3 {
        client: Client,
        bucket: String,
        multipart_bytes: u64,
    },
}

impl Store {
    pub fn from_args(args: &StoreArgs) -> Result<Self, StoreError> {
        let Some(bucket) = &args.s3_bucket else {
            return Ok(Self::Local(args.archive_dir.clone()));
        };
        let (Some(key), Some(secret)) = (&args.aws_access_key_id, &args.aws_secret_access_key)
        else {
            return Err(StoreError::NoCredentials);
        };
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(args.s3_region.clone()))
            .credentials_provider(Credentials::new(key, secret, None, None, "learntrail"))
            .force_path_style(args.s3_path_style);
        if let Some(endpoint) = &args.s3_endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(Self::S3 {
            client: Client::from_conf(config.build()),
            bucket: bucket.clone(),
            multipart_bytes: args.s3_multipart_bytes.max(5 << 20),
        })
    }

    /// A human description (for logs).
    pub fn describe(&self) -> String {
        match self {
            Self::Local(dir) => format!("directory {}", dir.display()),
            Self::S3 { bucket, .. } => format!("s3://{bucket}"),
        }
    }

    /// Stores `body` under `key`, replacing any object there (a retried upload writes the same
    /// bytes to the same key).
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Self::Local(dir) => {
                let path = dir.join(key);
                let parent = path.parent().expect("keys have a directory");
                tokio::fs::create_dir_all(parent).await?;
                let tmp = parent.join(format!(
                    ".tmp-{}",
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("object")
                ));
                // durable before the caller acks: data, then the name, then the directory
                let (tmp, path, parent) = (tmp, path.clone(), parent.to_path_buf());
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    let mut file = std::fs::File::create(&tmp)?;
                    std::io::Write::write_all(&mut file, &body)?;
                    file.sync_data()?;
                    std::fs::rename(&tmp, &path)?;
                    std::fs::File::open(&parent)?.sync_all()
                })
                .await
                .map_err(std::io::Error::other)??;
                Ok(())
            }
            Self::S3 {
                client,
                bucket,
                multipart_bytes,
            } if body.len() as u64 > *multipart_bytes => {
                put_multipart(
                    client,
                    bucket,
                    key,
                    Bytes::from(body),
                    *multipart_bytes as usize,
                )
                .await
            }
            Self::S3 { client, bucket, .. } => {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .content_type("application/gzip")
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(s3_error)?;
                Ok(())
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
                let body = object.body.collect().await.map_err(s3_error)?;
                Ok(body.into_bytes().to_vec())
            }
        }
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

async fn put_multipart(
    client: &Client,
    bucket: &str,
    key: &str,
    body: Bytes,
    part_size: usize,
) -> Result<(), StoreError> {
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
    let mut parts = Vec::new();
    let result: Result<(), StoreError> = async {
        for (index, chunk) in body.chunks(part_size).enumerate() {
            let number = index as i32 + 1;
            let part = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(body.slice_ref(chunk)))
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
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(s3_error)?;
        Ok(())
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
