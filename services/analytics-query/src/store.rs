//! Redis, single server or cluster, behind one small API: pipelines grouped by hash tag (one
//! round trip per group on a cluster, where a pipeline must stay in one slot; one round trip in
//! all on a single server), and the atomic apply step of the projection ([`Store::apply`]).

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::future::try_join_all;
use redis::{
    Pipeline, RedisResult, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};

use crate::fold::{Op, Write, cell_field};

/// Applies one slot's batch: when none of the event ids is in the seen-mark set (KEYS[1]), marks
/// them all and applies the operations; otherwise applies nothing and returns the ids already
/// seen, so the caller can rebuild the batch without them. Atomic (one script).
///
/// ARGV: the number of ids, the ids, then the operations, each `op, key index` and then
/// `field, by` (`I` HINCRBY, `F` HINCRBYFLOAT), `field, value` (`X` maximum, `N` minimum),
/// `field, version, value` (`L` latest version), `keep, n, n × (score, member)` (`Z`: one ZADD
/// of n members, then one trim to the `keep` highest scores; 0 keeps all), `n, n × member`
/// (`S`: one SADD of n members), `below` (`T`: drop the members scored below it) or, with key
/// index 0, `at` (`E`: after everything else, every key of the step expires at `at`, Unix
/// seconds; a time past deletes them).
const APPLY: &str = r#"
local nids = tonumber(ARGV[1])
local seen = {}
if nids == 1 then
  if redis.call('SADD', KEYS[1], ARGV[2]) == 0 then return {ARGV[2]} end
elseif nids > 1 then
  for from = 2, nids + 1, 1000 do
    local to = math.min(from + 999, nids + 1)
    local marks = redis.call('SMISMEMBER', KEYS[1], unpack(ARGV, from, to))
    for j = 1, #marks do
      if marks[j] == 1 then seen[#seen + 1] = ARGV[from + j - 1] end
    end
  end
  if #seen > 0 then return seen end
  for from = 2, nids + 1, 1000 do
    redis.call('SADD', KEYS[1], unpack(ARGV, from, math.min(from + 999, nids + 1)))
  end
end
-- minimum/maximum fields, gathered per key: one HMGET and at most one HSET per key
local extremes, order, expire_at = {}, {}, nil
local i = nids + 2
while i <= #ARGV do
  local op, k = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if op == 'I' then
    redis.call('HINCRBY', k, ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'F' then
    redis.call('HINCRBYFLOAT', k, ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'X' or op == 'N' then
    local e = extremes[k]
    if not e then
      e = {fields = {}, values = {}, max = {}}
      extremes[k] = e
      order[#order + 1] = k
    end
    e.fields[#e.fields + 1] = ARGV[i + 2]
    e.values[#e.values + 1] = ARGV[i + 3]
    e.max[#e.max + 1] = (op == 'X')
    i = i + 4
  elseif op == 'L' then
    local a, b, c = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local vf = a .. '|v'
    local cur = redis.call('HGET', k, vf)
    if not cur or b > cur then redis.call('HSET', k, a, c, vf, b) end
    i = i + 5
  elseif op == 'Z' then
    local keep, n, first = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), i + 4
    for from = 0, n - 1, 500 do
      local to = math.min(from + 499, n - 1)
      redis.call('ZADD', k, unpack(ARGV, first + 2 * from, first + 2 * to + 1))
    end
    if keep > 0 then redis.call('ZREMRANGEBYRANK', k, 0, -keep - 1) end
    i = first + 2 * n
  elseif op == 'T' then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. ARGV[i + 2])
    i = i + 3
  elseif op == 'E' then
    expire_at = ARGV[i + 2]
    i = i + 3
  elseif op == 'S' then
    local n, first = tonumber(ARGV[i + 2]), i + 3
    for from = 0, n - 1, 1000 do
      redis.call('SADD', k, unpack(ARGV, first + from, first + math.min(from + 999, n - 1)))
    end
    i = first + n
  else
    return redis.error_reply('APPLY: unknown operation ' .. tostring(op))
  end
end
for _, k in ipairs(order) do
  local e = extremes[k]
  local cur = redis.call('HMGET', k, unpack(e.fields))
  local set = {}
  for j = 1, #e.fields do
    local old, new = tonumber(cur[j]), tonumber(e.values[j])
    if not old or (e.max[j] and new > old) or (not e.max[j] and new < old) then
      set[#set + 1] = e.fields[j]
      set[#set + 1] = e.values[j]
    end
  end
  if #set > 0 then redis.call('HSET', k, unpack(set)) end
end
if expire_at then
  for j = 1, #KEYS do redis.call('EXPIREAT', KEYS[j], expire_at) end
end
return seen
"#;

/// A connection to Redis or to a Redis Cluster. Cheap to clone (multiplexed; clones share it
/// and its [`Store::epoch`]).
#[derive(Clone)]
pub struct Store {
    conn: Conn,
    epoch: Arc<AtomicU64>,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.conn {
            Conn::Single(_) => "Store(redis)",
            Conn::Cluster(_) => "Store(redis cluster)",
        })
    }
}

/// Passes `result` on, raising `epoch` when it says the connection broke.
fn observe<T>(epoch: &AtomicU64, result: RedisResult<T>) -> RedisResult<T> {
    if let Err(err) = &result
        && connection_lost(err)
    {
        epoch.fetch_add(1, Ordering::AcqRel);
    }
    result
}

/// Whether `err` means the connection broke (Redis went away, and may come back without what it
/// had acknowledged), not that a command failed.
fn connection_lost(err: &redis::RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal()
}

/// How long one command or pipeline may wait for Redis's answer. redis-rs's default is 500 ms,
/// which a 500-learner cohort read or a projection batch's script can pass on a busy machine: the
/// answer then is a 503 (a read) or a redelivered batch (the projection), though Redis was only
/// slow. Past this, Redis counts as down.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Connects to `urls` (one server, or any nodes of a cluster when `cluster`).
    /// With `certificates`, over TLS checked against them (`REDIS_TLS_CA`).
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        certificates: Option<&TlsCertificates>,
    ) -> RedisResult<Self> {
        let conn = if cluster {
            let mut builder =
                ClusterClientBuilder::new(urls.to_vec()).response_timeout(RESPONSE_TIMEOUT);
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates.clone());
            }
            let client = builder.build()?;
            Conn::Cluster(client.get_async_connection().await?)
        } else {
            let url = urls
                .first()
                .map_or("redis://127.0.0.1:6379", |u| u.as_str());
            let config =
                ConnectionManagerConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
            Conn::Single(
                learntrail_runtime::redis::client(url, certificates)?
                    .get_connection_manager_with_config(config)
                    .await?,
            )
        };
        let store = Self {
            conn,
            epoch: Arc::default(),
        };
        store.load_script().await?;
        Ok(store)
    }

    /// Raised each time Redis may have lost what it had acknowledged: a broken connection (on
    /// any call), or a projection write that finds Redis has forgotten its scripts (it
    /// restarted). What was read from Redis before is not to be trusted after
    /// ([`crate::cache`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The counter behind [`Store::epoch`], shared by every clone.
    pub fn epoch_counter(&self) -> Arc<AtomicU64> {
        self.epoch.clone()
    }

    /// Passes `result` on, raising the epoch when it says the connection broke.
    fn observe<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        observe(&self.epoch, result)
    }

    /// A single server's connection (`None` on a cluster).
    pub fn single(&self) -> Option<Self> {
        matches!(self.conn, Conn::Single(_)).then(|| self.clone())
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

    /// The key layout this Redis holds ([`crate::keys::LAYOUT_KEY`]); one without a mark is
    /// marked with this build's first.
    pub async fn layout(&self) -> RedisResult<u32> {
        use crate::keys::{LAYOUT, LAYOUT_KEY};
        let mut conn = self.clone();
        redis::cmd("SET")
            .arg(LAYOUT_KEY)
            .arg(LAYOUT)
            .arg("NX")
            .query_async::<Value>(&mut conn)
            .await?;
        redis::cmd("GET")
            .arg(LAYOUT_KEY)
            .query_async(&mut conn)
            .await
    }

    /// Runs pipelines that each stay in one hash slot; answers in the same order.
    pub async fn query_groups(&self, groups: &[Pipeline]) -> RedisResult<Vec<Vec<Value>>> {
        if groups.iter().all(|g| g.is_empty()) {
            return Ok(groups.iter().map(|_| Vec::new()).collect());
        }
        let answers = match &self.conn {
            Conn::Single(conn) => {
                let mut all = redis::pipe();
                for group in groups {
                    for cmd in group.cmd_iter() {
                        all.add_command(cmd.clone());
                    }
                }
                let mut conn = conn.clone();
                let mut values: Vec<Value> = match all.query_async(&mut conn).await {
                    Ok(values) => values,
                    Err(err) => return self.observe(Err(err)),
                };
                let mut out = Vec::with_capacity(groups.len());
                for group in groups {
                    let rest = values.split_off(group.len());
                    out.push(std::mem::replace(&mut values, rest));
                }
                Ok(out)
            }
            Conn::Cluster(conn) => {
                try_join_all(groups.iter().map(|group| {
                    let mut conn = conn.clone();
                    async move { group.query_async::<Vec<Value>>(&mut conn).await }
                }))
                .await
            }
        };
        self.observe(answers)
    }

    /// Runs commands that each stay in one hash slot, in one pipeline on a single server (the
    /// commands are moved into it, not copied: a projection write is megabytes), concurrently
    /// on a cluster; answers in the same order.
    async fn query_each(&self, cmds: impl Iterator<Item = redis::Cmd>) -> RedisResult<Vec<Value>> {
        let answers = match &self.conn {
            Conn::Single(conn) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                if pipe.is_empty() {
                    return Ok(Vec::new());
                }
                pipe.query_async(&mut conn.clone()).await
            }
            Conn::Cluster(conn) => {
                try_join_all(cmds.map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                }))
                .await
            }
        };
        self.observe(answers)
    }

    /// Applies the writes of a batch of events, each slot's share in one atomic step, all in one
    /// round trip (per slot on a cluster). Events already applied to a slot (a redelivery, a
    /// replay, the same event under another message id) change nothing there; their ids are
    /// returned.
    ///
    /// `events` folds the batch. It is called once per round trip and its writes are dropped once
    /// the commands are built, so a write of thousands of events holds only its commands while
    /// Redis works; it is called again only when a slot had seen some of the events.
    pub async fn apply(
        &self,
        events: impl Fn() -> Vec<(String, Vec<Write>)>,
    ) -> RedisResult<HashSet<String>> {
        let mut skip: HashMap<String, HashSet<String>> = HashMap::new();
        let mut already = HashSet::new();
        let mut reloaded = false;
        loop {
            let (tags, cmds): (Vec<String>, Vec<redis::Cmd>) = {
                let events = events();
                group_by_slot(&events, &skip)
                    .iter()
                    .map(|group| (group.tag.to_string(), group.command()))
                    .unzip()
            };
            if tags.is_empty() {
                return Ok(already);
            }
            let answers = match self.query_each(cmds.into_iter()).await {
                Err(err)
                    if !reloaded
                        && err.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    // nothing ran (Redis lost its scripts: a restart, SCRIPT FLUSH); the commands
                    // are built again once the script is loaded. A restart may have lost
                    // acknowledged writes too
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                    self.load_script().await?;
                    reloaded = true;
                    continue;
                }
                other => other?,
            };
            let mut again = false;
            for (tag, answer) in tags.into_iter().zip(answers) {
                let seen: Vec<String> = redis::from_redis_value(answer)?;
                if seen.is_empty() {
                    skip.entry(tag).or_default().insert(DONE.into());
                } else {
                    again = true;
                    already.extend(seen.iter().cloned());
                    skip.entry(tag).or_default().extend(seen);
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
        let epoch = self.epoch.clone();
        let sent = match &mut self.conn {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        };
        Box::pin(async move { observe(&epoch, sent.await) })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        let epoch = self.epoch.clone();
        let sent = match &mut self.conn {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        };
        Box::pin(async move { observe(&epoch, sent.await) })
    }

    fn get_db(&self) -> i64 {
        match &self.conn {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// FxHash (rustc's hash) for the maps of one batch: several times cheaper than SipHash on the
/// long cell fields, and flooding is bounded by the batch size.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type Fast = std::hash::BuildHasherDefault<FxHasher>;

/// The SHA1 of [`APPLY`], computed once.
static APPLY_SHA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| redis::Script::new(APPLY).get_hash().to_string());

/// Sorted-set members (score, member) gathered for one key.
type ZMembers<'a> = Vec<(f64, &'a [u8])>;

/// One slot's share of a batch: event ids (when marked) and merged operations, borrowed from
/// the folded events (an operation is copied only when another is merged into it).
#[derive(Debug, Default)]
struct SlotBatch<'a> {
    tag: &'a str,
    ids: Vec<&'a str>,
    keys: Vec<&'a str>,
    key_index: HashMap<&'a str, usize, Fast>,
    merged: HashMap<(u8, usize, &'a str), usize, Fast>,
    ops: Vec<Cow<'a, Op>>,
    /// Set members per key (key index, members): one SADD each.
    sets: Vec<(usize, Vec<&'a str>)>,
    /// Sorted-set members per key (key index, keep, members): one ZADD and one trim each.
    zsets: Vec<(usize, u32, ZMembers<'a>)>,
    /// Trims by score per key (key index, the highest floor), after the additions.
    trims: Vec<(usize, f64)>,
    /// When every key of the step expires (the latest asked).
    expire_at: Option<i64>,
    /// Key index → position in `sets` or `zsets`.
    collections: HashMap<usize, usize, Fast>,
    /// Analysis cells, merged: (key index, prefix, tuple) → position in `cells`.
    cell_index: HashMap<(usize, &'a str, &'a str), usize, Fast>,
    cells: Vec<CellSum<'a>>,
}

/// The events of one analysis cell in a write, summed.
#[derive(Debug)]
struct CellSum<'a> {
    key: usize,
    prefix: &'a str,
    tuple: &'a str,
    count: i64,
    measures: Vec<MeasureSum<'a>>,
}

#[derive(Debug)]
struct MeasureSum<'a> {
    name: &'a str,
    key: usize,
    sum: f64,
    n: i64,
    lo: f64,
    hi: f64,
}

/// Groups the events' writes by slot, leaving out slots already done and events a slot has
/// seen; operations on the same field are merged (counters added, extremes kept).
fn group_by_slot<'a>(
    events: &'a [(String, Vec<Write>)],
    skip: &HashMap<String, HashSet<String>>,
) -> Vec<SlotBatch<'a>> {
    // the batches stay where they are pushed: a batch is large, and a map of batches moved
    // each one on every rehash and again on the way out
    let mut at: HashMap<&str, usize, Fast> = HashMap::default();
    let mut slots: Vec<SlotBatch<'a>> = Vec::new();
    for (id, writes) in events {
        for write in writes {
            if let Some(skipped) = skip.get(&write.tag)
                && (skipped.contains(DONE) || skipped.contains(id))
            {
                continue;
            }
            let index = *at.entry(&write.tag).or_insert_with(|| {
                slots.push(SlotBatch {
                    tag: &write.tag,
                    ..Default::default()
                });
                slots.len() - 1
            });
            let batch = &mut slots[index];
            if write.marked {
                batch.ids.push(id);
            }
            for op in &write.ops {
                batch.add(op);
            }
        }
    }
    slots
}

impl<'a> SlotBatch<'a> {
    fn key(&mut self, key: &'a str) -> usize {
        if let Some(&i) = self.key_index.get(key) {
            return i;
        }
        self.keys.push(key);
        // KEYS[1] is the seen-mark set
        let index = self.keys.len() + 1;
        self.key_index.insert(key, index);
        index
    }

    fn add(&mut self, op: &'a Op) {
        let (code, key, field) = match op {
            Op::Incr { key, field, .. } => (b'I', key, field),
            Op::IncrF { key, field, .. } => (b'F', key, field),
            Op::Max { key, field, .. } => (b'X', key, field),
            Op::Min { key, field, .. } => (b'N', key, field),
            Op::Lww { key, field, .. } => (b'L', key, field),
            Op::SAdd { key, member } => {
                let index = self.key(key);
                let at = *self.collections.entry(index).or_insert(self.sets.len());
                if at == self.sets.len() {
                    self.sets.push((index, Vec::new()));
                }
                self.sets[at].1.push(member);
                return;
            }
            Op::Cell {
                key,
                prefix,
                tuple,
                measures,
            } => {
                let index = self.key(key);
                let at = *self
                    .cell_index
                    .entry((index, prefix, tuple))
                    .or_insert(self.cells.len());
                if at == self.cells.len() {
                    self.cells.push(CellSum {
                        key: index,
                        prefix,
                        tuple,
                        count: 0,
                        measures: Vec::new(),
                    });
                }
                self.cells[at].count += 1;
                for m in measures {
                    let key = self.key(&m.key);
                    let cell = &mut self.cells[at];
                    match cell.measures.iter_mut().find(|s| s.name == m.name) {
                        Some(sum) => {
                            sum.sum += m.value;
                            sum.n += 1;
                            sum.lo = sum.lo.min(m.value);
                            sum.hi = sum.hi.max(m.value);
                        }
                        None => cell.measures.push(MeasureSum {
                            name: &m.name,
                            key,
                            sum: m.value,
                            n: 1,
                            lo: m.value,
                            hi: m.value,
                        }),
                    }
                }
                return;
            }
            Op::Trim { key, below } => {
                let index = self.key(key);
                match self.trims.iter_mut().find(|(at, _)| *at == index) {
                    Some((_, floor)) => *floor = floor.max(*below),
                    None => self.trims.push((index, *below)),
                }
                return;
            }
            Op::Expire { at } => {
                self.expire_at = Some(self.expire_at.map_or(*at, |was| was.max(*at)));
                return;
            }
            Op::ZAdd {
                key,
                score,
                member,
                keep,
            } => {
                let index = self.key(key);
                let at = *self.collections.entry(index).or_insert(self.zsets.len());
                if at == self.zsets.len() {
                    self.zsets.push((index, *keep, Vec::new()));
                }
                self.zsets[at].2.push((*score, member));
                return;
            }
        };
        let index = self.key(key);
        match self.merged.entry((code, index, field.as_str())) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(self.ops.len());
                self.ops.push(Cow::Borrowed(op));
            }
            std::collections::hash_map::Entry::Occupied(slot) => {
                merge(self.ops[*slot.get()].to_mut(), op)
            }
        }
    }

    fn command(&self) -> redis::Cmd {
        let mut invoke = redis::cmd("EVALSHA");
        invoke
            .arg(APPLY_SHA.as_str())
            .arg(self.keys.len() + 1)
            .arg(crate::keys::seen(self.tag));
        for key in &self.keys {
            invoke.arg(*key);
        }
        invoke.arg(self.ids.len());
        for id in &self.ids {
            invoke.arg(*id);
        }
        for op in &self.ops {
            self.push_op(&mut invoke, op);
        }
        for cell in &self.cells {
            let field = |stat, measure| cell_field(cell.prefix, stat, measure, cell.tuple);
            invoke
                .arg("I")
                .arg(cell.key)
                .arg(field("c", None))
                .arg(cell.count);
            for m in &cell.measures {
                let name = Some(m.name);
                invoke.arg("F").arg(m.key).arg(field("s", name)).arg(m.sum);
                invoke.arg("I").arg(m.key).arg(field("n", name)).arg(m.n);
                invoke.arg("N").arg(m.key).arg(field("lo", name)).arg(m.lo);
                invoke.arg("X").arg(m.key).arg(field("hi", name)).arg(m.hi);
            }
        }
        for (index, members) in &self.sets {
            invoke.arg("S").arg(index).arg(members.len());
            for member in members {
                invoke.arg(*member);
            }
        }
        for (index, keep, members) in &self.zsets {
            invoke.arg("Z").arg(index).arg(keep).arg(members.len());
            for (score, member) in members {
                invoke.arg(score).arg(*member);
            }
        }
        for (index, below) in &self.trims {
            invoke.arg("T").arg(index).arg(below);
        }
        if let Some(at) = self.expire_at {
            invoke.arg("E").arg(0).arg(at);
        }
        invoke
    }

    fn push_op(&self, cmd: &mut redis::Cmd, op: &Op) {
        let index = |key: &String| self.key_index[key.as_str()];
        match op {
            Op::Incr { key, field, by } => cmd.arg("I").arg(index(key)).arg(field).arg(by),
            Op::IncrF { key, field, by } => cmd.arg("F").arg(index(key)).arg(field).arg(by),
            Op::Max { key, field, value } => cmd.arg("X").arg(index(key)).arg(field).arg(value),
            Op::Min { key, field, value } => cmd.arg("N").arg(index(key)).arg(field).arg(value),
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
            // gathered in `sets`, `zsets` and `cells`
            Op::ZAdd { .. }
            | Op::SAdd { .. }
            | Op::Cell { .. }
            | Op::Trim { .. }
            | Op::Expire { .. } => cmd,
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
        assert_eq!(groups[0].ops.len(), 2);
        assert_eq!(*groups[0].ops[0], incr("a", 3));
        let skip = HashMap::from([("{t}".to_string(), HashSet::from(["e2".to_string()]))]);
        let groups = group_by_slot(&events, &skip);
        assert_eq!(groups[0].ids, ["e1"]);
        assert_eq!(*groups[0].ops[0], incr("a", 1));
    }

    #[test]
    fn trims_keep_the_highest_floor_and_the_expiry_comes_last() {
        let write = |below: f64, at: i64| Write {
            tag: "{t}".into(),
            marked: true,
            ops: vec![
                Op::Trim {
                    key: "{t}:ke".into(),
                    below,
                },
                Op::Expire { at },
            ],
        };
        let events = vec![
            ("e1".to_string(), vec![write(5.0, 100)]),
            ("e2".to_string(), vec![write(9.0, 90)]),
        ];
        let groups = group_by_slot(&events, &HashMap::new());
        assert_eq!(groups[0].trims, [(2, 9.0)]);
        assert_eq!(groups[0].expire_at, Some(100));
        let args: Vec<Vec<u8>> = groups[0]
            .command()
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        let tail: Vec<&[u8]> = args[args.len() - 6..].iter().map(Vec::as_slice).collect();
        assert_eq!(tail, [&b"T"[..], b"2", b"9.0", b"E", b"0", b"100"]);
    }

    #[test]
    fn set_and_sorted_set_members_gather_into_one_command_per_key() {
        let write = |id: &str| Write {
            tag: "{t}".into(),
            marked: true,
            ops: vec![
                Op::SAdd {
                    key: "{t}:u".into(),
                    member: format!("m-{id}"),
                },
                Op::ZAdd {
                    key: "{t}:tl".into(),
                    score: 1.0,
                    member: id.as_bytes().to_vec(),
                    keep: 5,
                },
            ],
        };
        let events: Vec<(String, Vec<Write>)> = ["e1", "e2", "e3"]
            .iter()
            .map(|id| (id.to_string(), vec![write(id)]))
            .collect();
        let groups = group_by_slot(&events, &HashMap::new());
        assert_eq!(groups[0].sets, [(2, vec!["m-e1", "m-e2", "m-e3"])]);
        let members: Vec<&[u8]> = groups[0].zsets[0].2.iter().map(|(_, m)| *m).collect();
        assert_eq!(members, [b"e1", b"e2", b"e3"]);
        assert_eq!((groups[0].zsets[0].0, groups[0].zsets[0].1), (3, 5));
        let args = groups[0].command().args_iter().count();
        // EVALSHA sha numkeys seen u tl | 3 ids | S 2 3 ×3 | Z 3 5 3 ×(score, member)
        assert_eq!(args, 6 + 4 + 6 + 10);
    }

    #[test]
    fn cells_of_a_write_merge_into_one_count_and_one_set_of_figures_per_measure() {
        let cell = |tuple: &str, value: f64| Write {
            tag: "{a}".into(),
            marked: true,
            ops: vec![Op::Cell {
                key: "{a}:h".into(),
                prefix: String::new(),
                tuple: tuple.into(),
                measures: vec![crate::fold::Measure {
                    name: "d".into(),
                    key: "{a}:h:d".into(),
                    value,
                }],
            }],
        };
        let events: Vec<(String, Vec<Write>)> = [("x", 5.0), ("x", 2.0), ("y", 1.0), ("x", 9.0)]
            .iter()
            .enumerate()
            .map(|(i, (tuple, value))| (format!("e{i}"), vec![cell(tuple, *value)]))
            .collect();
        let groups = group_by_slot(&events, &HashMap::new());
        let cells = &groups[0].cells;
        assert_eq!(cells.len(), 2);
        assert_eq!((cells[0].tuple, cells[0].count), ("x", 3));
        let m = &cells[0].measures[0];
        assert_eq!((m.sum, m.n, m.lo, m.hi), (16.0, 3, 2.0, 9.0));
        assert_eq!(groups[0].keys, ["{a}:h", "{a}:h:d"]);
        let args: Vec<Vec<u8>> = groups[0]
            .command()
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        let text: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // after EVALSHA sha 3 seen-key h h:d, the 4 ids: the x cell's five statistics
        let ops = &text[11..31];
        assert_eq!(
            ops,
            [
                "I", "2", "|c|x", "3", "F", "3", "|s|d|x", "16.0", "I", "3", "|n|d|x", "3", "N",
                "3", "|lo|d|x", "2.0", "X", "3", "|hi|d|x", "9.0"
            ]
        );
    }
}
