//! The meter registry in Redis.
//!
//! - `<prefix><cloud_id>`: the record, JSON ([`StoredRecord`]), key = the 6-hex-digit cloud id
//!   with its leading zeroes (the prefix, `eagle:` by default, keeps it apart from other services'
//!   keys in a shared Redis; set `REDIS_PREFIX=""` for the seed's bare keys);
//! - `<prefix>_index`: a sorted set of every cloud id (score 0, so it pages in cloud-id order);
//! - `<prefix>_version`: bumped by every add, update and delete, so pollers notice a change by
//!   reading one number.
//!
//! Writes are Lua scripts, so a registration update and a poller's counter update never lose
//! each other's fields: an update keeps the counters and the poll status, a poll keeps the
//! registration.

use redis::{AsyncCommands, Script, aio::ConnectionManager};
use secrecy::SecretString;
use serde_json::json;

use crate::{
    crypto::{CryptoError, Keyring},
    record::{PollStatus, Registration, StoredRecord},
};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored record {0} is not valid JSON: {1}")]
    Corrupt(String, String),
}

const UPSERT: &str = r"
local new = cjson.decode(ARGV[1])
local raw = redis.call('GET', KEYS[1])
local created = 1
-- the registry's version: a revision never given twice, not even to a meter deleted and
-- registered again (a poller holding the old one must see the change)
new['rev'] = redis.call('INCR', KEYS[3])
if raw then
  local old = cjson.decode(raw)
  created = 0
  new['total_events_logged'] = old['total_events_logged'] or 0
  new['first_timestamp'] = old['first_timestamp']
  new['last_timestamp'] = old['last_timestamp']
  new['poll'] = old['poll']
  if new['user_pw'] == nil then new['user_pw'] = old['user_pw'] end
end
if new['user_pw'] == nil then return redis.error_reply('no password for a new record') end
local out = cjson.encode(new)
redis.call('SET', KEYS[1], out)
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return {created, out}
";

const DELETE: &str = r"
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if n > 0 then redis.call('INCR', KEYS[3]) end
return n
";

const RECORD_POLL: &str = r"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
if tonumber(rec['rev']) ~= tonumber(ARGV[2]) then return 0 end
local upd = cjson.decode(ARGV[1])
if upd['poll'] ~= nil and upd['poll'] ~= cjson.null then rec['poll'] = upd['poll'] end
if upd['timestamp'] ~= nil and upd['timestamp'] ~= cjson.null then
  rec['total_events_logged'] = (tonumber(rec['total_events_logged']) or 0) + 1
  if rec['first_timestamp'] == nil or rec['first_timestamp'] == cjson.null then
    rec['first_timestamp'] = upd['timestamp']
  end
  rec['last_timestamp'] = upd['timestamp']
end
redis.call('SET', KEYS[1], cjson.encode(rec))
return 1
";

const RESEAL: &str = r"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
if rec['user_pw'] ~= ARGV[1] then return 0 end
rec['user_pw'] = ARGV[2]
redis.call('SET', KEYS[1], cjson.encode(rec))
return 1
";

/// What `rekey` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RekeyReport {
    pub resealed: usize,
    pub current: usize,
    /// Records whose password no configured key opens (named, never printed).
    pub failed: Vec<String>,
}

/// The registry: a Redis connection, the key prefix and the keyring. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    conn: ConnectionManager,
    prefix: String,
    keys: std::sync::Arc<Keyring>,
    upsert: std::sync::Arc<Script>,
    delete: std::sync::Arc<Script>,
    record_poll: std::sync::Arc<Script>,
    reseal: std::sync::Arc<Script>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({})", self.prefix)
    }
}

impl Registry {
    pub fn new(conn: ConnectionManager, prefix: &str, keys: std::sync::Arc<Keyring>) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            keys,
            upsert: Script::new(UPSERT).into(),
            delete: Script::new(DELETE).into(),
            record_poll: Script::new(RECORD_POLL).into(),
            reseal: Script::new(RESEAL).into(),
        }
    }

    /// Connects with `client` (one attempt; callers retry).
    pub async fn connect(
        client: redis::Client,
        prefix: &str,
        keys: std::sync::Arc<Keyring>,
    ) -> Result<Self, RegistryError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            .set_response_timeout(Some(std::time::Duration::from_secs(5)));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self::new(conn, prefix, keys))
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keys
    }

    fn key(&self, cloud_id: &str) -> String {
        format!("{}{cloud_id}", self.prefix)
    }

    fn index(&self) -> String {
        format!("{}_index", self.prefix)
    }

    fn version_key(&self) -> String {
        format!("{}_version", self.prefix)
    }

    fn parse(cloud_id: &str, raw: &str) -> Result<StoredRecord, RegistryError> {
        serde_json::from_str(raw)
            .map_err(|e| RegistryError::Corrupt(cloud_id.into(), e.to_string()))
    }

    pub async fn get(&self, cloud_id: &str) -> Result<Option<StoredRecord>, RegistryError> {
        let raw: Option<String> = self.conn.clone().get(self.key(cloud_id)).await?;
        raw.map(|r| Self::parse(cloud_id, &r)).transpose()
    }

    /// Creates or updates a meter; true when it was created.
    pub async fn put(&self, reg: &Registration) -> Result<(bool, StoredRecord), RegistryError> {
        let mut new = json!({
            "cloud_id": reg.cloud_id,
            "user_email": reg.user_email,
            "api": reg.api,
            "address": reg.address,
            "actor": reg.actor,
            "course": reg.course,
            "total_events_logged": 0,
            "updated_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        if let Some(password) = &reg.password {
            new["user_pw"] = json!(self.keys.encrypt(&reg.cloud_id, password));
        }
        let (created, stored): (i64, String) = self
            .upsert
            .key(self.key(&reg.cloud_id))
            .key(self.index())
            .key(self.version_key())
            .arg(new.to_string())
            .arg(&reg.cloud_id)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((created == 1, Self::parse(&reg.cloud_id, &stored)?))
    }

    /// Deletes a meter; false when there was none.
    pub async fn delete(&self, cloud_id: &str) -> Result<bool, RegistryError> {
        let n: i64 = self
            .delete
            .key(self.key(cloud_id))
            .key(self.index())
            .key(self.version_key())
            .arg(cloud_id)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n > 0)
    }

    /// Up to `limit` cloud ids after `after`, in order.
    pub async fn page_ids(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, RegistryError> {
        let min = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        Ok(redis::cmd("ZRANGEBYLEX")
            .arg(self.index())
            .arg(min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// Every registered cloud id.
    pub async fn all_ids(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self.conn.clone().zrange(self.index(), 0, -1).await?)
    }

    /// The records of `ids` that exist, in order.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<StoredRecord>, RegistryError> {
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|id| self.key(id)).collect();
            let raws: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut self.conn.clone())
                .await?;
            for (id, raw) in chunk.iter().zip(raws) {
                match raw.map(|r| Self::parse(id, &r)) {
                    Some(Ok(record)) => records.push(record),
                    Some(Err(err)) => {
                        tracing::warn!(cloud_id = %id, error = %err, "skipping a corrupt record")
                    }
                    None => {}
                }
            }
        }
        Ok(records)
    }

    /// The registry's change counter.
    pub async fn version(&self) -> Result<u64, RegistryError> {
        let v: Option<u64> = self.conn.clone().get(self.version_key()).await?;
        Ok(v.unwrap_or(0))
    }

    /// Stores a poll's outcome on revision `rev` of the record (ignored once the record was
    /// updated or deleted): its status, when given, and with `logged`, one more event at that
    /// meter time.
    pub async fn record_poll(
        &self,
        cloud_id: &str,
        rev: u64,
        status: Option<&PollStatus>,
        logged: Option<&str>,
    ) -> Result<(), RegistryError> {
        let mut update = serde_json::Map::new();
        if let Some(status) = status {
            update.insert("poll".into(), json!(status));
        }
        if let Some(time) = logged {
            update.insert("timestamp".into(), json!(time));
        }
        let update = serde_json::Value::Object(update);
        let _: i64 = self
            .record_poll
            .key(self.key(cloud_id))
            .arg(update.to_string())
            .arg(rev)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// The plaintext password of `record`.
    pub fn password(&self, record: &StoredRecord) -> Result<SecretString, CryptoError> {
        self.keys.decrypt(&record.cloud_id, &record.user_pw)
    }

    /// Re-seals every password not under the current key.
    pub async fn rekey(&self) -> Result<RekeyReport, RegistryError> {
        let mut report = RekeyReport::default();
        let ids = self.all_ids().await?;
        for record in self.get_many(&ids).await? {
            if !self.keys.is_stale(&record.user_pw) {
                report.current += 1;
                continue;
            }
            let Ok(password) = self.password(&record) else {
                report.failed.push(record.cloud_id.clone());
                continue;
            };
            let sealed = self.keys.encrypt(&record.cloud_id, &password);
            let done: i64 = self
                .reseal
                .key(self.key(&record.cloud_id))
                .arg(&record.user_pw)
                .arg(sealed)
                .invoke_async(&mut self.conn.clone())
                .await?;
            // 0: updated or deleted meanwhile, by a write that sealed under the current key
            if done == 1 {
                report.resealed += 1;
            } else {
                report.current += 1;
            }
        }
        Ok(report)
    }
}
