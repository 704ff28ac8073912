//! Redis as the services open it: `redis://`, or `rediss://` (TLS, a managed Redis's usual
//! way in) with the server's certificate checked against the system's certificate authorities,
//! or against the one in `REDIS_TLS_CA` (a private one).

use std::path::PathBuf;

use ::redis::{Client, RedisResult, TlsCertificates};

use crate::cli::ConfigError;

/// `REDIS_TLS_CA`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedisTlsArgs {
    /// PEM file of the certificate authority that signed a rediss:// server's certificate (a
    /// private one); without it, the system's authorities are trusted
    #[arg(long, env = "REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,
}

impl RedisTlsArgs {
    /// The certificate authority to check a `rediss://` server with (`None`: the system's).
    pub fn certificates(&self) -> Result<Option<TlsCertificates>, ConfigError> {
        let Some(path) = &self.redis_tls_ca else {
            return Ok(None);
        };
        let pem = std::fs::read(path)
            .map_err(|e| ConfigError::new(format!("REDIS_TLS_CA {}: {e}", path.display())))?;
        // a DER file or a key alone would make an empty list of authorities: no server trusted,
        // and connecting would be retried forever
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::new(format!(
                "REDIS_TLS_CA {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            )));
        }
        Ok(Some(TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        }))
    }
}

/// [`client`] for a setting: a URL that can never work is a configuration error naming
/// `REDIS_URL` (its password hidden), not a connection retried forever.
pub fn configured_client(
    url: &str,
    certificates: Option<&TlsCertificates>,
) -> Result<Client, ConfigError> {
    client(url, certificates).map_err(|err| {
        ConfigError::new(format!(
            "REDIS_URL {}: {err}",
            crate::telemetry::redact_urls(url)
        ))
    })
}

/// A client of `url`; with `certificates`, the server's certificate is checked against them (the
/// URL must then be `rediss://`).
pub fn client(url: &str, certificates: Option<&TlsCertificates>) -> RedisResult<Client> {
    // redis-rs builds its TLS set-up from the process's default crypto provider, which rustls
    // cannot choose by itself when the build has two (ring, and aws-lc-rs from the S3 client):
    // ring, as NATS's TLS uses. Installed once; a later call finds it there.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    match certificates {
        Some(certificates) => Client::build_with_tls(url, certificates.clone()),
        None => Client::open(url),
    }
}
