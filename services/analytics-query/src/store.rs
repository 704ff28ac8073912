//! Redis, single server or cluster, behind one small API: pipelines grouped by hash tag (one
//! round trip per group on a cluster, where a pipeline must stay in one slot; one round trip in
//! all on a single server), and the atomic apply step of the projection ([`Store::apply`]).

use std::collections::{HashMap, HashSet};

use futures_util::future::try_join_all;
use redis::{
    Pipeline, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};

use crate::fold::{Op, Write};

/// Applies one slot's batch: when none of the event ids is in the seen-mark set (KEYS[1]), marks
/// them all and applies the operations; otherwise applies nothing and returns the ids already
/// seen, so the caller can rebuild the batch without them. Atomic (one script).
///
/// ARGV: the number of ids, the ids, then operations of five arguments each:
/// `op, key index, a, b, c`.
const APPLY: &str = r#"
local nids = tonumber(ARGV[1])
local seen = {}
for i = 2, nids + 1 do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then seen[#seen + 1] = ARGV[i] end
end
if #seen > 0 then return seen end
for i = 2, nids + 1 do redis.call('SADD', KEYS[1], ARGV[i]) end
local i = nids + 2
while i <= #ARGV do
  local op, k, a, b, c = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  if op == 'I' then redis.call('HINCRBY', k, a, b)
  elseif op == 'F' then redis.call('HINCRBYFLOAT', k, a, b)
  elseif op == 'X' then
    local cur = redis.call('HGET', k, a)
    if not cur or tonumber(b) > tonumber(cur) then redis.call('HSET', k, a, b) end
  elseif op == 'N' then
    local cur = redis.call('HGET', k, a)
    if not cur or tonumber(b) < tonumber(cur) then redis.call('HSET', k, a, b) end
  elseif op == 'L' then
    local vf = a .. '|v'
    local cur = redis.call('HGET', k, vf)
    if not cur or b > cur then redis.call('HSET', k, a, c, vf, b) end
  elseif op == 'Z' then
    redis.call('ZADD', k, b, c)
    local keep = tonumber(a)
    if keep > 0 then
      local n = redis.call('ZCARD', k)
      if n > keep then redis.call('ZREMRANGEBYRANK', k, 0, n - keep - 1) end
    end
  elseif op == 'S' then redis.call('SADD', k, a)
  end
end
return seen
"#;

/// A connection to Redis or to a Redis Cluster. Cheap to clone (multiplexed).
#[derive(Clone)]
pub enum Store {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Store(redis)",
            Self::Cluster(_) => "Store(redis cluster)",
        })
    }
}

impl Store {
    /// Connects to `urls` (one server, or any nodes of a cluster when `cluster`).
    pub async fn connect(urls: &[String], cluster: bool) -> RedisResult<Self> {
        let store = if cluster {
            let client = ClusterClient::new(urls.to_vec())?;
            Self::Cluster(client.get_async_connection().await?)
        } else {
            let url = urls
                .first()
                .map_or("redis://127.0.0.1:6379", |u| u.as_str());
            Self::Single(redis::Client::open(url)?.get_connection_manager().await?)
        };
        store.load_script().await?;
        Ok(store)
    }

    async fn load_script(&self) -> RedisResult<()> {
        let mut conn = self.clone();
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(APPLY)
            .query_async::<Value>(&mut conn)
            .await?;
        Ok(())
    }

    /// Runs pipelines that each stay in one hash slot; answers in the same order.
    pub async fn query_groups(&self, groups: &[Pipeline]) -> RedisResult<Vec<Vec<Value>>> {
        if groups.iter().all(|g| g.is_empty()) {
            return Ok(groups.iter().map(|_| Vec::new()).collect());
        }
        match self {
            Self::Single(conn) => {
                let mut all = redis::pipe();
                for group in groups {
                    for cmd in group.cmd_iter() {
                        all.add_command(cmd.clone());
                    }
                }
                let mut conn = conn.clone();
                let mut values: Vec<Value> = all.query_async(&mut conn).await?;
                let mut out = Vec::with_capacity(groups.len());
                for group in groups {
                    let rest = values.split_off(group.len());
                    out.push(std::mem::replace(&mut values, rest));
                }
                Ok(out)
            }
            Self::Cluster(conn) => {
                try_join_all(groups.iter().map(|group| {
                    let mut conn = conn.clone();
                    async move { group.query_async::<Vec<Value>>(&mut conn).await }
                }))
                .await
            }
        }
    }

    /// Applies the writes of a batch of events, each slot's share in one atomic step, all in one
    /// round trip (per slot on a cluster). Events already applied to a slot (a redelivery, a
    /// replay, the same event under another message id) change nothing there; their ids are
    /// returned.
    pub async fn apply(&self, events: &[(String, Vec<Write>)]) -> RedisResult<HashSet<String>> {
        let mut skip: HashMap<String, HashSet<String>> = HashMap::new();
        let mut already = HashSet::new();
        loop {
            let groups = group_by_slot(events, &skip);
            if groups.is_empty() {
                return Ok(already);
            }
            let pipelines: Vec<Pipeline> = groups.iter().map(SlotBatch::pipeline).collect();
            let answers = match self.query_groups(&pipelines).await {
                Err(err)
                    if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    self.load_script().await?;
                    self.query_groups(&pipelines).await?
                }
                other => other?,
            };
            let mut again = false;
            for (group, answer) in groups.iter().zip(answers) {
                let seen: Vec<String> = answer
                    .into_iter()
                    .next()
                    .map(redis::from_redis_value)
                    .transpose()
                    .map_err(redis::RedisError::from)?
                    .unwrap_or_default();
                if seen.is_empty() {
                    skip.entry(group.tag.clone())
                        .or_default()
                        .insert(DONE.into());
                } else {
                    again = true;
                    already.extend(seen.iter().cloned());
                    skip.entry(group.tag.clone()).or_default().extend(seen);
                }
            }
            if !again {
                return Ok(already);
            }
        }
    }
}

/// Marks a slot whose batch was applied.
const DONE: &str = "\u{0}done";

impl ConnectionLike for Store {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// One slot's share of a batch: event ids (when marked) and merged operations.
#[derive(Debug, Default)]
struct SlotBatch {
    tag: String,
    ids: Vec<String>,
    keys: Vec<String>,
    key_index: HashMap<String, usize>,
    merged: HashMap<(u8, usize, String), Op>,
    order: Vec<(u8, usize, String)>,
    zadds: Vec<Op>,
}

/// Groups the events' writes by slot, leaving out slots already done and events a slot has
/// seen; operations on the same field are merged (counters added, extremes kept).
fn group_by_slot(
    events: &[(String, Vec<Write>)],
    skip: &HashMap<String, HashSet<String>>,
) -> Vec<SlotBatch> {
    let mut slots: HashMap<&str, SlotBatch> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (id, writes) in events {
        for write in writes {
            let skipped = skip.get(&write.tag);
            if skipped.is_some_and(|s| s.contains(DONE) || s.contains(id)) {
                continue;
            }
            let batch = slots.entry(&write.tag).or_insert_with(|| {
                order.push(&write.tag);
                SlotBatch {
                    tag: write.tag.clone(),
                    ..Default::default()
                }
            });
            if write.marked {
                batch.ids.push(id.clone());
            }
            for op in &write.ops {
                batch.add(op);
            }
        }
    }
    order
        .into_iter()
        .filter_map(|tag| slots.remove(tag))
        .collect()
}

impl SlotBatch {
    fn key(&mut self, key: &str) -> usize {
        if let Some(&i) = self.key_index.get(key) {
            return i;
        }
        self.keys.push(key.to_string());
        // KEYS[1] is the seen-mark set
        let index = self.keys.len() + 1;
        self.key_index.insert(key.to_string(), index);
        index
    }

    fn add(&mut self, op: &Op) {
        let (code, key, field) = match op {
            Op::Incr { key, field, .. } => (b'I', key, field),
            Op::IncrF { key, field, .. } => (b'F', key, field),
            Op::Max { key, field, .. } => (b'X', key, field),
            Op::Min { key, field, .. } => (b'N', key, field),
            Op::Lww { key, field, .. } => (b'L', key, field),
            Op::SAdd { key, member } => (b'S', key, member),
            Op::ZAdd { key, .. } => {
                self.key(key);
                self.zadds.push(op.clone());
                return;
            }
        };
        let index = self.key(key);
        let slot = (code, index, field.clone());
        match self.merged.get_mut(&slot) {
            None => {
                self.order.push(slot.clone());
                self.merged.insert(slot, op.clone());
            }
            Some(existing) => merge(existing, op),
        }
    }

    fn pipeline(&self) -> Pipeline {
        let mut invoke = redis::cmd("EVALSHA");
        invoke
            .arg(redis::Script::new(APPLY).get_hash())
            .arg(self.keys.len() + 1)
            .arg(crate::keys::seen(&self.tag));
        for key in &self.keys {
            invoke.arg(key);
        }
        invoke.arg(self.ids.len());
        for id in &self.ids {
            invoke.arg(id);
        }
        for slot in &self.order {
            self.push_op(&mut invoke, &self.merged[slot]);
        }
        for op in &self.zadds {
            self.push_op(&mut invoke, op);
        }
        let mut pipe = redis::pipe();
        pipe.add_command(invoke);
        pipe
    }

    fn push_op(&self, cmd: &mut redis::Cmd, op: &Op) {
        let index = |key: &String| self.key_index[key];
        match op {
            Op::Incr { key, field, by } => cmd.arg("I").arg(index(key)).arg(field).arg(by).arg(""),
            Op::IncrF { key, field, by } => cmd.arg("F").arg(index(key)).arg(field).arg(by).arg(""),
            Op::Max { key, field, value } => {
                cmd.arg("X").arg(index(key)).arg(field).arg(value).arg("")
            }
            Op::Min { key, field, value } => {
                cmd.arg("N").arg(index(key)).arg(field).arg(value).arg("")
            }
            Op::Lww {
                key,
                field,
                version,
                value,
            } => cmd
                .arg("L")
                .arg(index(key))
                .arg(field)
                .arg(version)
                .arg(value),
            Op::ZAdd {
                key,
                score,
                member,
                keep,
            } => cmd
                .arg("Z")
                .arg(index(key))
                .arg(keep)
                .arg(score)
                .arg(member),
            Op::SAdd { key, member } => cmd.arg("S").arg(index(key)).arg(member).arg("").arg(""),
        };
    }
}

/// Folds `op` into `existing` (same kind, key and field).
fn merge(existing: &mut Op, op: &Op) {
    match (existing, op) {
        (Op::Incr { by, .. }, Op::Incr { by: more, .. }) => *by += more,
        (Op::IncrF { by, .. }, Op::IncrF { by: more, .. }) => *by += more,
        (Op::Max { value, .. }, Op::Max { value: other, .. }) => *value = value.max(*other),
        (Op::Min { value, .. }, Op::Min { value: other, .. }) => *value = value.min(*other),
        (
            Op::Lww { version, value, .. },
            Op::Lww {
                version: other_version,
                value: other_value,
                ..
            },
        ) if other_version > version => {
            *version = other_version.clone();
            *value = other_value.clone();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(field: &str, by: i64) -> Op {
        Op::Incr {
            key: "{t}:n".into(),
            field: field.into(),
            by,
        }
    }

    #[test]
    fn batches_merge_per_slot_and_skip_what_was_seen() {
        let write = |ops| Write {
            tag: "{t}".into(),
            marked: true,
            ops,
        };
        let events = vec![
            ("e1".to_string(), vec![write(vec![incr("a", 1)])]),
            (
                "e2".to_string(),
                vec![write(vec![incr("a", 2), incr("b", 1)])],
            ),
        ];
        let groups = group_by_slot(&events, &HashMap::new());
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].ids, ["e1", "e2"]);
        assert_eq!(groups[0].order.len(), 2);
        assert_eq!(groups[0].merged[&groups[0].order[0]], incr("a", 3));
        let skip = HashMap::from([("{t}".to_string(), HashSet::from(["e2".to_string()]))]);
        let groups = group_by_slot(&events, &skip);
        assert_eq!(groups[0].ids, ["e1"]);
        assert_eq!(groups[0].merged[&groups[0].order[0]], incr("a", 1));
    }
}
