//! A registered meter: the stored record (the seed's shape — `cloud_id`, `user_email`, `user_pw`,
//! `total_events_logged`, `first_timestamp`, `last_timestamp` — plus the API its meter speaks,
//! its address, actor, course, a revision and its poll status), the public view of it (no
//! password, ever), and the checks on what `POST /api/user/{cloud_id}` sends.

use learntrail_proto::validate::Problem;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Which API a meter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// The Rainforest cloud relay (Eagle-100): headers `Cloud-ID`, `User`, `Password`.
    Cloud,
    /// Eagle-200 local API: Basic auth `cloud_id:install_code`, `device_list` + `device_query`.
    Local200,
    /// Eagle-100 local `post_manager`: the REST commands with Basic auth.
    Local100,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cloud => "cloud",
            Self::Local200 => "local200",
            Self::Local100 => "local100",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "cloud" => Some(Self::Cloud),
            "local200" => Some(Self::Local200),
            "local100" => Some(Self::Local100),
            _ => None,
        }
    }

    pub fn is_local(self) -> bool {
        self != Self::Cloud
    }
}

/// What the poller last saw of a meter (written by the replica that polls it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PollStatus {
    /// `pending`, `ok`, `auth_failed`, `unreachable`, `malformed`, `no_meter`, `undecryptable`.
    pub state: String,
    #[serde(default)]
    pub last_poll_at: Option<String>,
    #[serde(default)]
    pub last_ok_at: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Failures in a row.
    #[serde(default)]
    pub failures: u64,
    #[serde(default)]
    pub latency_ms: Option<f64>,
    #[serde(default)]
    pub next_poll_at: Option<String>,
}

/// A meter as stored in Redis under its cloud id.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredRecord {
    pub cloud_id: String,
    #[serde(default)]
    pub user_email: String,
    /// The password or install code, sealed ([`crate::crypto`]); never plaintext.
    pub user_pw: String,
    pub api: Api,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub course: Option<String>,
    #[serde(default)]
    pub total_events_logged: u64,
    #[serde(default)]
    pub first_timestamp: Option<String>,
    #[serde(default)]
    pub last_timestamp: Option<String>,
    /// Bumped by every registry write; the poller restarts a meter when it changes.
    #[serde(default)]
    pub rev: u64,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub poll: Option<PollStatus>,
}

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredRecord")
            .field("cloud_id", &self.cloud_id)
            .field("api", &self.api)
            .field("address", &self.address)
            .field("rev", &self.rev)
            .finish_non_exhaustive()
    }
}

impl StoredRecord {
    /// The record as the API shows it: everything but the password.
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({
            "cloud_id": self.cloud_id,
            "user_email": self.user_email,
            "api": self.api,
            "address": self.address,
            "actor": self.actor,
            "course": self.course,
            "total_events_logged": self.total_events_logged,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "rev": self.rev,
            "updated_at": self.updated_at,
            "poll": self.poll.clone().unwrap_or_else(|| PollStatus {
                state: "pending".into(),
                ..PollStatus::default()
            }),
        })
    }
}

/// What `POST /api/user/{cloud_id}` (or a line of `import`) sends. Absent fields of an update keep
/// their stored values.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    pub user_email: Option<String>,
    pub user_pw: Option<String>,
    pub api: Option<String>,
    pub address: Option<String>,
    pub actor: Option<String>,
    pub course: Option<String>,
}

/// A checked registration, ready to seal and store (its Debug shows no password).
#[derive(Debug)]
pub struct Registration {
    pub cloud_id: String,
    pub user_email: String,
    /// `None` on an update that keeps the stored password.
    pub password: Option<SecretString>,
    pub api: Api,
    pub address: Option<String>,
    pub actor: Option<String>,
    pub course: Option<String>,
}

/// The cloud id in its stored form (lowercase), when it is 6 hex digits.
pub fn cloud_id(text: &str) -> Option<String> {
    (text.len() == 6 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

/// Checks `input` for meter `raw_id`, merged over `existing` when updating; every problem at once.
pub fn validate(
    raw_id: &str,
    input: UserInput,
    existing: Option<&StoredRecord>,
) -> Result<Registration, Vec<Problem>> {
    let mut problems = Vec::new();
    let id = cloud_id(raw_id);
    if id.is_none() {
        problems.push(Problem::new(
            "cloud_id",
            "must be 6 hex digits (the last 6 of the Eagle's MAC, leading zeroes kept)",
        ));
    }
    let api = match (&input.api, existing) {
        (Some(text), _) => Api::parse(text).or_else(|| {
            problems.push(Problem::new("api", "must be cloud, local200 or local100"));
            None
        }),
        (None, Some(old)) => Some(old.api),
        (None, None) => {
            problems.push(Problem::new(
                "api",
                "is required (cloud, local200 or local100)",
            ));
            None
        }
    };
    let email = input
        .user_email
        .map(|e| e.trim().to_string())
        .or_else(|| existing.map(|old| old.user_email.clone()))
        .unwrap_or_default();
    if !email.is_empty() && !is_email(&email) {
        problems.push(Problem::new(
            "user_email",
            "must look like name@example.org",
        ));
    }
    if email.is_empty() && api == Some(Api::Cloud) {
        problems.push(Problem::new(
            "user_email",
            "is required for the cloud API (the e-mail registered at rainforestcloud.com)",
        ));
    }
    let password = match input.user_pw {
        Some(pw) if pw.is_empty() || pw.len() > 256 || pw.chars().any(char::is_control) => {
            problems.push(Problem::new(
                "user_pw",
                "must be 1 to 256 characters without control characters",
            ));
            None
        }
        Some(pw) => Some(SecretString::from(pw)),
        None if existing.is_none() => {
            problems.push(Problem::new(
                "user_pw",
                "is required (the cloud password, or the Eagle's install code)",
            ));
            None
        }
        None => None,
    };
    let address = match input.address {
        Some(a) if a.trim().is_empty() => None,
        Some(a) => Some(a.trim().to_string()),
        None => existing.and_then(|old| old.address.clone()),
    };
    match (api, &address) {
        (Some(api), None) if api.is_local() => problems.push(Problem::new(
            "address",
            "is required for a local API (host or host:port of the Eagle)",
        )),
        (Some(Api::Cloud), Some(_)) => problems.push(Problem::new(
            "address",
            "is only for local APIs; the cloud API uses EAGLE_CLOUD_URL",
        )),
        (_, Some(a)) if !is_host_port(a) => {
            problems.push(Problem::new("address", "must be host or host:port"))
        }
        _ => {}
    }
    let actor = optional_text(input.actor, existing.and_then(|o| o.actor.clone()));
    let course = optional_text(input.course, existing.and_then(|o| o.course.clone()));
    for (field, value) in [("actor", &actor), ("course", &course)] {
        if value.as_ref().is_some_and(|v| v.len() > 200) {
            problems.push(Problem::new(field, "must be at most 200 characters"));
        }
    }
    match (id, api) {
        (Some(cloud_id), Some(api)) if problems.is_empty() => Ok(Registration {
            cloud_id,
            user_email: email,
            password,
            api,
            address,
            actor,
            course,
        }),
        _ => Err(problems),
    }
}

fn optional_text(new: Option<String>, old: Option<String>) -> Option<String> {
    match new {
        Some(text) if text.trim().is_empty() => None,
        Some(text) => Some(text.trim().to_string()),
        None => old,
    }
}

/// `local@domain.tld`, no spaces, one `@`.
pub fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    text.len() <= 254
        && !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `host` or `host:port`, where host is a DNS name or an IPv4 address (or `[v6]`).
pub fn is_host_port(text: &str) -> bool {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("v6", Some(port)),
                None => return false,
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn input(json: serde_json::Value) -> UserInput {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn accepts_each_api() {
        let cloud = validate(
            "0012AB",
            input(serde_json::json!({"user_email": "me@example.org", "user_pw": "pw", "api": "cloud", "actor": "hh-7", "course": "energy-101"})),
            None,
        )
        .unwrap();
        assert_eq!(cloud.cloud_id, "0012ab");
        assert_eq!(cloud.api, Api::Cloud);
        assert_eq!(cloud.password.unwrap().expose_secret(), "pw");
        let local = validate(
            "004792",
            input(serde_json::json!({"user_pw": "bfb0fc05f51a3932", "api": "local200", "address": "eagle-004792.local:80"})),
            None,
        )
        .unwrap();
        assert_eq!(local.address.as_deref(), Some("eagle-004792.local:80"));
        assert!(local.user_email.is_empty());
    }

    #[test]
    fn reports_every_problem() {
        let problems = validate(
            "12ab",
            input(serde_json::json!({"user_email": "not an email", "api": "zigbee", "address": "a b:99999"})),
            None,
        )
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["cloud_id", "api", "user_email", "user_pw", "address"]
        );
        let cloud_without_email = validate(
            "0012ab",
            input(serde_json::json!({"user_pw": "pw", "api": "cloud", "address": "10.0.0.2"})),
            None,
        )
        .unwrap_err();
        let fields: Vec<&str> = cloud_without_email
            .iter()
            .map(|p| p.field.as_str())
            .collect();
        assert_eq!(fields, ["user_email", "address"]);
        let local_without_address = validate(
            "0012ab",
            input(serde_json::json!({"user_pw": "pw", "api": "local100"})),
            None,
        )
        .unwrap_err();
        assert_eq!(local_without_address[0].field, "address");
    }

    #[test]
    fn updates_keep_what_they_do_not_send() {
        let stored = StoredRecord {
            cloud_id: "0012ab".into(),
            user_email: "me@example.org".into(),
            user_pw: "v1.abcd.xyz".into(),
            api: Api::Cloud,
            address: None,
            actor: Some("hh-7".into()),
            course: Some("energy-101".into()),
            total_events_logged: 5,
            first_timestamp: None,
            last_timestamp: None,
            rev: 2,
            updated_at: None,
            poll: None,
        };
        let update = validate(
            "0012ab",
            input(serde_json::json!({"course": "energy-102"})),
            Some(&stored),
        )
        .unwrap();
        assert!(update.password.is_none());
        assert_eq!(update.user_email, "me@example.org");
        assert_eq!(update.actor.as_deref(), Some("hh-7"));
        assert_eq!(update.course.as_deref(), Some("energy-102"));
        let public = stored.public().to_string();
        assert!(!public.contains("user_pw") && !public.contains("v1.abcd"));
        assert!(!format!("{stored:?}").contains("v1.abcd"));
    }

    #[test]
    fn shapes() {
        assert!(is_email("a.b+c@school.example.org"));
        assert!(!is_email("a@b"));
        assert!(!is_email("a@@b.org"));
        assert!(is_host_port("192.168.1.20"));
        assert!(is_host_port("eagle-0012ab.local:8080"));
        assert!(is_host_port("[::1]:80"));
        assert!(!is_host_port("http://x"));
        assert!(!is_host_port("host:0"));
        assert!(!is_host_port("bad_host"));
        assert_eq!(cloud_id("00CE69").as_deref(), Some("00ce69"));
        assert_eq!(cloud_id("ce69"), None);
    }
}
