//! Where snapshots go: the directory store ([`crate::store`]) or, with `S3_BUCKET` set, an S3
//! prefix (the archive settings of s3-rotator, through its store).
//!
//! S3 objects are written once, so there every version is its own object,
//! `<prefix><uid>/<path>~<UTC mtime>-<first 12 hex of its SHA-256>`: the newest key of a file is
//! its latest copy, and the others are the backups. Retention on S3 is the bucket's lifecycle
//! rule (expire objects under the prefix after N days), not `SNAPSHOT_KEEP`.

use std::{path::Path, time::Duration};

use chrono::DateTime;
use learntrail_s3_rotator::store::{Store as S3Store, StoreArgs, StoreError};
use secrecy::SecretString;

use crate::store::{BACKUP_MARK, Store as DirStore};

/// The S3 snapshot store's settings (the same names as s3-rotator's archive).
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// S3 bucket for snapshots; unset = snapshots stay in SNAPSHOT_DIR
    #[arg(long, env = "S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// Key prefix of snapshots in the bucket
    #[arg(long, env = "SNAPSHOT_S3_PREFIX", default_value = "snapshots/")]
    pub snapshot_s3_prefix: String,
    /// S3 endpoint URL (MinIO, Garage, ...); unset = AWS
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region
    #[arg(long, env = "S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Path-style addressing (http://host/bucket/key), needed by most non-AWS servers
    #[arg(long, env = "S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// S3 access key id (unset with the secret: the standard AWS credential chain)
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    pub aws_access_key_id: Option<String>,
    /// S3 secret access key
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true, value_parser = learntrail_runtime::auth::parse_secret)]
    pub aws_secret_access_key: Option<SecretString>,
}

#[derive(Debug, Clone)]
pub enum Snapshots {
    Dir(DirStore),
    S3 { store: S3Store, prefix: String },
}

impl Snapshots {
    pub fn new(dir: DirStore, s3: &S3Args) -> Result<Self, StoreError> {
        let Some(bucket) = &s3.s3_bucket else {
            return Ok(Self::Dir(dir));
        };
        let args = StoreArgs {
            s3_bucket: Some(bucket.clone()),
            s3_endpoint: s3.s3_endpoint.clone(),
            s3_region: s3.s3_region.clone(),
            s3_path_style: s3.s3_path_style,
            aws_access_key_id: s3.aws_access_key_id.clone(),
            aws_secret_access_key: s3.aws_secret_access_key.clone(),
            s3_multipart_bytes: 8 << 20,
            s3_timeout: Duration::from_secs(60),
            archive_dir: dir.dir().to_path_buf(),
        };
        Ok(Self::S3 {
            store: S3Store::from_args(&args)?,
            prefix: s3.snapshot_s3_prefix.clone(),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Dir(dir) => format!("directory {}", dir.dir().display()),
            Self::S3 { store, prefix } => format!("{}/{prefix}", store.describe()),
        }
    }

    /// Stores one version and returns where (a path relative to the directory store, or the S3
    /// key). Storing a version that is already there succeeds.
    pub async fn put(
        &self,
        uid: &str,
        rel: &Path,
        bytes: Vec<u8>,
        mtime_ns: i64,
        sha256: &str,
    ) -> Result<String, String> {
        match self {
            Self::Dir(dir) => {
                let (dir, uid, rel) = (dir.clone(), uid.to_string(), rel.to_path_buf());
                tokio::task::spawn_blocking(move || dir.put(&uid, &rel, &bytes))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|p| p.to_string_lossy().into_owned())
                    .map_err(|e| e.to_string())
            }
            Self::S3 { store, prefix } => {
                let key = s3_key(prefix, uid, rel, mtime_ns, sha256);
                match store.put(&key, bytes).await {
                    Ok(_) | Err(StoreError::Exists) => Ok(key),
                    Err(err) => Err(err.to_string()),
                }
            }
        }
    }
}

/// `<prefix><uid>/<rel>~<UTC mtime>-<sha256 prefix>`.
pub fn s3_key(prefix: &str, uid: &str, rel: &Path, mtime_ns: i64, sha256: &str) -> String {
    let stamp = DateTime::from_timestamp_nanos(mtime_ns).format("%Y%m%dT%H%M%S%.6fZ");
    let rel = rel.to_string_lossy();
    let short = &sha256[..sha256.len().min(12)];
    format!("{prefix}{uid}/{rel}{BACKUP_MARK}{stamp}-{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_keys_sort_by_time_per_file() {
        let rel = Path::new("ps1/p.ipynb");
        let a = s3_key(
            "snapshots/",
            "ann",
            rel,
            1_700_000_000_000_000_000,
            "ab".repeat(32).as_str(),
        );
        let b = s3_key(
            "snapshots/",
            "ann",
            rel,
            1_700_000_001_000_000_000,
            "00".repeat(32).as_str(),
        );
        assert_eq!(
            a,
            "snapshots/ann/ps1/p.ipynb~20231114T221320.000000Z-abababababab"
        );
        assert!(a < b);
    }
}
