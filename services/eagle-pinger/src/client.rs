//! Talking to Eagles over HTTP: one pooled, non-blocking client (rustls, certificates verified,
//! an optional extra CA for a private relay), a timeout on every request, and no redirects (the
//! credentials go nowhere but where they were registered for). What comes back is classified
//! for the poller: refused credentials, unreachable, malformed (with the raw body, bounded), or
//! a [`Reading`].

use std::{path::Path, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    decode::{self, DecodeError, Reading},
    record::Api,
};

/// The most of a reply that is read; a longer one is malformed.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// What one meter needs for a poll (the password stays secret).
pub struct Meter {
    pub cloud_id: String,
    pub api: Api,
    pub address: Option<String>,
    pub user_email: String,
    pub password: SecretString,
}

/// Why a poll gave no reading.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PollError {
    /// HTTP 401/403, or a reply that refuses the login.
    #[error("credentials refused: {0}")]
    Auth(String),
    /// Timeout, connection error, HTTP 5xx or another failure status.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A reply that is not the documented shape; `body` is its first bytes.
    #[error("malformed reply: {reason}")]
    Malformed { reason: String, body: Bytes },
    /// A well-formed reply without a value this time (an Eagle-200's blank demand).
    #[error("no value: {0}")]
    Empty(String),
    /// An Eagle-200 without an electric meter: none in its device list, or the device at the
    /// meter's address is another kind.
    #[error("{0}")]
    NoMeter(String),
}

impl PollError {
    /// The state a meter is in after this error.
    pub fn state(&self) -> &'static str {
        match self {
            Self::Auth(_) => "auth_failed",
            Self::Unreachable(_) => "unreachable",
            Self::Malformed { .. } => "malformed",
            Self::Empty(_) => "ok",
            Self::NoMeter(_) => "no_meter",
        }
    }

    /// True when the Eagle-200 meter address a poll used may be wrong (the meter re-paired or
    /// replaced): the reply was garbled, named another device, or no meter. A timeout, a refusal
    /// or a blank demand says nothing about the address, so it is kept.
    fn stale_address(&self) -> bool {
        matches!(self, Self::Malformed { .. } | Self::NoMeter(_))
    }
}

/// Per-meter memory between polls (the Eagle-200's meter address).
#[derive(Debug, Default, Clone)]
pub struct MeterCache {
    meter_address: Option<String>,
}

/// The HTTP client every meter shares.
#[derive(Debug, Clone)]
pub struct EagleClient {
    http: reqwest::Client,
    cloud_url: String,
    timeout: Duration,
}

impl EagleClient {
    /// `ca_file`: an extra PEM CA trusted besides the system's (a private relay).
    pub fn new(cloud_url: &str, timeout: Duration, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!(
                "learntrail-eagle-pinger/",
                env!("CARGO_PKG_VERSION")
            ));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read EAGLE_CA_FILE {}: {e}", path.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("EAGLE_CA_FILE {} is not PEM: {e}", path.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        Ok(Self {
            http: builder.build()?,
            cloud_url: cloud_url.to_string(),
            timeout,
        })
    }

    /// Polls one meter: instantaneous demand and current summation.
    pub async fn poll(&self, meter: &Meter, cache: &mut MeterCache) -> Result<Reading, PollError> {
        match meter.api {
            Api::Cloud | Api::Local100 => self.poll_rest(meter).await,
            Api::Local200 => self.poll_200(meter, cache).await,
        }
    }

    async fn poll_rest(&self, meter: &Meter) -> Result<Reading, PollError> {
        let body = self
            .call(meter, &rest_command("get_instantaneous_demand"))
            .await?;
        let mut reading = decoded(decode::instantaneous_demand(&text(&body)), &body)?;
        // the demand is read: a failed summation leaves the totals out rather than losing it
        let summation = match self
            .call(meter, &rest_command("get_current_summation"))
            .await
        {
            Ok(body) => decoded(decode::current_summation(&text(&body)), &body),
            Err(err) => Err(err),
        };
        match summation {
            Ok((delivered, received)) => {
                reading.summation_delivered_kwh = Some(delivered);
                reading.summation_received_kwh = Some(received);
            }
            Err(err) => {
                tracing::warn!(cloud_id = %meter.cloud_id, error = %err, "demand read, but not the summation: published without totals");
            }
        }
        Ok(reading)
    }

    async fn poll_200(&self, meter: &Meter, cache: &mut MeterCache) -> Result<Reading, PollError> {
        let address = match &cache.meter_address {
            Some(address) => address.clone(),
            None => {
                let body = self
                    .call(meter, "<Command><Name>device_list</Name></Command>")
                    .await?;
                let address = decoded(decode::meter_address(&text(&body)), &body)?;
                cache.meter_address = Some(address.clone());
                address
            }
        };
        let reading = match self.call(meter, &device_query(&address)).await {
            Ok(body) => decoded(decode::device_query(&text(&body), &address), &body),
            Err(err) => Err(err),
        };
        if reading.as_ref().is_err_and(|err| err.stale_address()) {
            // the meter may have been re-paired; list the devices again next time
            cache.meter_address = None;
        }
        reading
    }

    fn url(&self, meter: &Meter) -> String {
        match (&meter.api, &meter.address) {
            (Api::Cloud, _) | (_, None) => self.cloud_url.clone(),
            (_, Some(address)) => format!("http://{address}/cgi-bin/post_manager"),
        }
    }

    fn headers(&self, meter: &Meter) -> Result<HeaderMap, PollError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
        let bad = |what: &str| {
            PollError::Auth(format!(
                "the stored {what} cannot be sent as an HTTP header"
            ))
        };
        match meter.api {
            Api::Cloud => {
                headers.insert(
                    "Cloud-ID",
                    HeaderValue::from_str(&meter.cloud_id).map_err(|_| bad("cloud id"))?,
                );
                headers.insert(
                    "User",
                    HeaderValue::from_str(&meter.user_email).map_err(|_| bad("e-mail"))?,
                );
                let mut password = HeaderValue::from_str(meter.password.expose_secret())
                    .map_err(|_| bad("password"))?;
                password.set_sensitive(true);
                headers.insert("Password", password);
            }
            Api::Local100 | Api::Local200 => {
                let pair = format!("{}:{}", meter.cloud_id, meter.password.expose_secret());
                let mut basic = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(pair)))
                    .map_err(|_| bad("install code"))?;
                basic.set_sensitive(true);
                headers.insert(AUTHORIZATION, basic);
            }
        }
        Ok(headers)
    }

    /// One POST; the reply body (bounded) when the status is 2xx.
    async fn call(&self, meter: &Meter, command: &str) -> Result<Bytes, PollError> {
        let request = self
            .http
            .post(self.url(meter))
            .headers(self.headers(meter)?)
            .body(command.to_string())
            .timeout(self.timeout);
        let mut response = request.send().await.map_err(|e| transport(&e))?;
        let status = response.status();
        if status == 401 || status == 403 {
            return Err(PollError::Auth(format!("HTTP {}", status.as_u16())));
        }
        if !status.is_success() {
            return Err(PollError::Unreachable(format!("HTTP {}", status.as_u16())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
            if body.len() + chunk.len() > MAX_REPLY_BYTES {
                body.extend_from_slice(&chunk[..MAX_REPLY_BYTES - body.len()]);
                return Err(PollError::Malformed {
                    reason: format!("reply is over {MAX_REPLY_BYTES} bytes"),
                    body: body.into(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.into())
    }
}

fn transport(err: &reqwest::Error) -> PollError {
    let what = if err.is_timeout() {
        "timed out".to_string()
    } else if err.is_connect() {
        format!("cannot connect: {}", root_cause(err))
    } else {
        root_cause(err)
    };
    PollError::Unreachable(what)
}

/// The innermost error message (reqwest's own says only "error sending request").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

fn text(body: &Bytes) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(body)
}

fn decoded<T>(result: Result<T, DecodeError>, body: &Bytes) -> Result<T, PollError> {
    result.map_err(|err| match err {
        DecodeError::Malformed(reason) => PollError::Malformed {
            reason,
            body: body.clone(),
        },
        DecodeError::Refused(reason) => PollError::Auth(reason),
        DecodeError::Empty(reason) => PollError::Empty(reason),
        DecodeError::NoMeter(reason) => PollError::NoMeter(reason),
    })
}

/// A REST command asking for JSON (firmware ≥ 2.20; older firmware answers XML, also decoded).
pub fn rest_command(name: &str) -> String {
    format!("<Command>\r\n<Name>{name}</Name>\r\n<Format>JSON</Format>\r\n</Command>\r\n")
}

/// An Eagle-200 `device_query` of every variable of the meter (`<All>Y</All>`: explicit lists
/// may leave the summation out).
pub fn device_query(hardware_address: &str) -> String {
    format!(
        "<Command>\r\n<Name>device_query</Name>\r\n<DeviceDetails>\r\n<HardwareAddress>{}</HardwareAddress>\r\n</DeviceDetails>\r\n<Components>\r\n<All>Y</All>\r\n</Components>\r\n</Command>\r\n",
        xml_escape(hardware_address)
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_reply_about_the_wrong_device_forgets_the_meter_address() {
        let malformed = PollError::Malformed {
            reason: "expected Device".into(),
            body: Bytes::from_static(b"<Error/>"),
        };
        let no_meter = PollError::NoMeter("device 0x01 is a thermostat".into());
        assert!(malformed.stale_address());
        assert!(no_meter.stale_address());
        for kept in [
            PollError::Unreachable("timed out".into()),
            PollError::Auth("HTTP 401".into()),
            PollError::Empty("InstantaneousDemand is blank".into()),
        ] {
            assert!(!kept.stale_address(), "{kept}");
        }
        assert_eq!(no_meter.state(), "no_meter");
    }
}
