//! What queries have read and answered, kept in memory with the versions of what it came from,
//! so that a dashboard asking again reads a few small numbers from Redis instead of everything.
//!
//! **Collection-hours and Keen answers.** A 7-day Keen query asked again reads 168 numbers
//! instead of every cell of every hour.
//!
//! The version of a collection-hour is the size of its seen-mark set (`{a:<coll>:<hour>}:seen`):
//! the projection adds an event's mark in the same atomic step as its cells and actors, and
//! nothing else writes them, so every change to the hour grows it, and a redelivery or a replay
//! (which changes nothing) leaves it alone. A query asks the version of every hour it needs, in
//! one round trip with the cells of the hours it does not hold; it uses what it holds only at
//! the same version and reads the others again. A read gives the version first and the cells
//! after it, on one connection, so what is kept is never older than its version says (newer at
//! most, which is only read again once more).
//!
//! A query over the shared cells (no `actor` in it) keeps its whole answer too, with the
//! versions of the hours it was computed from: the same query (same parameters, scope and
//! interval edges) over hours at the same versions is answered with it, without folding a cell.
//!
//! **Learner summaries.** A learner's version is the size of their seen-mark set
//! (`{l:<actor>}:seen`), grown in the same atomic step as everything else in their slot; a
//! summary also depends on the problems known in each of the learner's courses, a set that only
//! grows (`{c:<course>}:p`), so its size is its version. A summary asked again costs one round
//! trip of those sizes; it is read and built again when one of them changed.
//!
//! A version can only be trusted while Redis keeps what it acknowledged. A Redis that restarts
//! may have lost its last writes (or everything), and a version that went back could grow to
//! the same number with other contents. So whenever [`Store::epoch`] moves (a broken connection
//! on any call, a projection write that finds Redis has forgotten its scripts), the cache is
//! emptied; what a read started before that is not kept.
//!
//! Bounded by bytes (`ANALYSIS_CACHE_MB`), least recently used first out; 0 turns it off.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use learntrail_proto::{Message as _, v1::LearnerSummary};
use lru::LruCache;
use prometheus_client::metrics::counter::Counter;
use redis::{RedisResult, Value};

use crate::{keys, store::Store};

/// What a cached key holds, and how it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A hash (HGETALL): fields and values.
    Hash,
    /// A set (SMEMBERS): members.
    Set,
}

/// One key of a collection-hour to read.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The collection-hour's hash tag ([`keys::aggregate`]).
    pub tag: String,
    /// The key, under that tag.
    pub key: String,
    pub kind: Kind,
    /// Likely changed since it was last read (the current hour): read it with its version, not
    /// after it, which would cost a second round trip whenever it did change.
    pub hot: bool,
}

impl Wanted {
    /// Key `<tag>:<suffix>` of `collection`'s `hour`; hot when the hour is `now_hour` or later.
    pub fn hour(collection: &str, hour: i64, suffix: &str, kind: Kind, now_hour: i64) -> Self {
        let tag = keys::aggregate(collection, hour);
        Self {
            key: format!("{tag}:{suffix}"),
            tag,
            kind,
            hot: hour >= now_hour,
        }
    }
}

/// The strings of a hash or set answer, in one buffer.
#[derive(Debug, Default)]
pub struct Strings {
    /// The collection-hour's version when it was read (-1: not known, not kept).
    version: i64,
    text: String,
    /// Where each string ends in `text`.
    ends: Vec<u32>,
}

impl Strings {
    /// The strings of a HGETALL (RESP2 list or RESP3 map) or SMEMBERS (list or set) answer.
    fn from_value(value: &Value, version: i64) -> RedisResult<Self> {
        let not_text = || {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "an analysis key is not a hash or set of text",
            ))
        };
        let items: Vec<&Value> = match value {
            Value::Nil => Vec::new(),
            Value::Array(items) | Value::Set(items) => items.iter().collect(),
            Value::Map(items) => items.iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return Err(not_text()),
        };
        // sized up front: what is kept is counted by its length
        let length = items
            .iter()
            .map(|v| match v {
                Value::BulkString(bytes) => bytes.len(),
                Value::SimpleString(s) => s.len(),
                _ => 0,
            })
            .sum();
        let mut out = Self {
            version,
            text: String::with_capacity(length),
            ends: Vec::with_capacity(items.len()),
        };
        let mut push = |v: &Value| -> Option<()> {
            let s = match v {
                Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?,
                Value::SimpleString(s) => s.as_str(),
                _ => return None,
            };
            out.text.push_str(s);
            out.ends.push(u32::try_from(out.text.len()).ok()?);
            Some(())
        };
        items
            .into_iter()
            .try_for_each(&mut push)
            .ok_or_else(not_text)?;
        Ok(out)
    }

    /// The collection-hour's version it was read at (-1: not known).
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Every string, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(from, to)| &self.text[from as usize..to as usize])
    }

    /// The fields and values of a hash.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut all = self.iter();
        std::iter::from_fn(move || Some((all.next()?, all.next()?)))
    }

    /// What keeping it costs, roughly.
    fn bytes(&self, key: &str) -> usize {
        const OVERHEAD: usize = 96;
        self.text.len() + 4 * self.ends.len() + key.len() + OVERHEAD
    }
}

/// Reads hits and misses.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    /// Keys answered from memory (their collection-hour had not changed).
    pub hits: Counter,
    /// Keys read from Redis (not held, or changed since).
    pub misses: Counter,
    /// Queries answered whole from memory (every hour they read unchanged since).
    pub answers: Counter,
    /// Learner summaries answered from memory.
    pub summaries: Counter,
    /// Times the cache was emptied because Redis may have lost writes.
    pub clears: Counter,
}

/// The cache; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Cache {
    inner: Option<Arc<Mutex<Held>>>,
    budget: usize,
    metrics: CacheMetrics,
    /// [`Store::epoch`]'s counter.
    epoch: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Held {
    entries: LruCache<String, Entry>,
    bytes: usize,
    /// The [`Store::epoch`] its entries were read in.
    epoch: u64,
}

/// What is kept under a key.
#[derive(Debug, Clone)]
enum Entry {
    /// A collection-hour key's contents.
    Cells(Arc<Strings>),
    /// A whole answer, and the versions of the hours it was computed from.
    Answer(Arc<(Vec<i64>, Vec<u8>)>),
    /// A learner's summary.
    Summary(Arc<HeldSummary>),
}

/// A learner's summary and the versions it was built at.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldSummary {
    /// The size of the learner's seen-mark set.
    pub version: i64,
    /// Each of the learner's courses and the number of its known problems.
    pub known: Vec<(String, i64)>,
    pub summary: LearnerSummary,
}

impl Entry {
    fn bytes(&self, key: &str) -> usize {
        match self {
            Self::Cells(strings) => strings.bytes(key),
            Self::Answer(answer) => answer.1.len() + 8 * answer.0.len() + key.len() + 96,
            Self::Summary(held) => {
                // decoded, a summary takes about three times its encoding
                let courses: usize = held.known.iter().map(|(c, _)| c.len() + 32).sum();
                held.summary.encoded_len() * 3 + courses + key.len() + 96
            }
        }
    }
}

impl Cache {
    /// A cache of at most `budget` bytes (0: none; every read goes to Redis), of a store whose
    /// epoch counter is `epoch` ([`Store::epoch_counter`]).
    pub fn new(budget: usize, metrics: CacheMetrics, epoch: Arc<AtomicU64>) -> Self {
        let inner = (budget > 0).then(|| {
            Arc::new(Mutex::new(Held {
                entries: LruCache::unbounded(),
                bytes: 0,
                epoch: 0,
            }))
        });
        Self {
            inner,
            budget,
            metrics,
            epoch,
        }
    }

    /// Empties `held` if the store's epoch moved since its entries were read.
    fn sync(&self, held: &mut Held) {
        let now = self.epoch.load(Ordering::Acquire);
        if held.epoch != now {
            if !held.entries.is_empty() {
                self.metrics.clears.inc();
            }
            held.entries.clear();
            held.bytes = 0;
            held.epoch = now;
        }
    }

    /// What is held of each key, in one lock.
    fn get_all<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<Option<Entry>> {
        match &self.inner {
            Some(held) => {
                let mut held = held.lock().expect("cache lock");
                self.sync(&mut held);
                keys.map(|key| held.entries.get(key).cloned()).collect()
            }
            None => keys.map(|_| None).collect(),
        }
    }

    #[cfg(test)]
    fn get(&self, key: &str) -> Option<Entry> {
        self.get_all(std::iter::once(key)).pop().flatten()
    }

    /// The store's epoch now: pass it to what keeps what a read is about to give.
    pub fn generation(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps `entry` under `key`, unless the cache was emptied since `generation`.
    fn put(&self, key: &str, entry: Entry, generation: u64) {
        let Some(held) = &self.inner else { return };
        let cost = entry.bytes(key);
        let mut held = held.lock().expect("cache lock");
        self.sync(&mut held);
        if held.epoch != generation {
            return;
        }
        if cost > self.budget {
            // too large to keep: nor is an older one under the key
            if let Some(old) = held.entries.pop(key) {
                held.bytes -= old.bytes(key);
            }
            return;
        }
        if let Some(old) = held.entries.put(key.to_string(), entry) {
            held.bytes -= old.bytes(key);
        }
        held.bytes += cost;
        while held.bytes > self.budget {
            let Some((k, v)) = held.entries.pop_lru() else {
                break;
            };
            held.bytes -= v.bytes(&k);
        }
    }

    /// The answer kept under `key` if it was computed from hours at exactly `versions`.
    pub fn answer(&self, key: &str, versions: &[i64]) -> Option<Vec<u8>> {
        match self
            .get_all(std::iter::once(answer_key(key).as_str()))
            .pop()??
        {
            Entry::Answer(kept) if kept.0 == versions => {
                self.metrics.answers.inc();
                Some(kept.1.clone())
            }
            _ => None,
        }
    }

    /// Keeps an answer computed from hours at `versions` (none when a version is not known),
    /// read since `generation`.
    pub fn keep_answer(&self, key: &str, versions: Vec<i64>, body: &[u8], generation: u64) {
        if versions.iter().all(|&v| v >= 0) {
            let entry = Entry::Answer(Arc::new((versions, body.to_vec())));
            self.put(&answer_key(key), entry, generation);
        }
    }

    /// The summary of `learner` last kept, whatever its versions.
    pub fn summary(&self, learner: &str) -> Option<Arc<HeldSummary>> {
        match self
            .get_all(std::iter::once(summary_key(learner).as_str()))
            .pop()??
        {
            Entry::Summary(held) => Some(held),
            _ => None,
        }
    }

    /// Counts a summary answered from memory.
    pub fn summary_used(&self) {
        self.metrics.summaries.inc();
    }

    /// Keeps the summary of `learner`, read since `generation`.
    pub fn keep_summary(&self, learner: &str, held: HeldSummary, generation: u64) {
        self.put(
            &summary_key(learner),
            Entry::Summary(Arc::new(held)),
            generation,
        );
    }

    /// Bytes held.
    pub fn held_bytes(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |h| h.lock().expect("cache lock").bytes)
    }

    /// The current contents of each wanted key, in order: from memory where its collection-hour
    /// has not changed since it was read, from Redis otherwise (one round trip; a second for the
    /// keys held at an older version that were not [`Wanted::hot`]). What is read is kept
    /// unless the store's epoch moves meanwhile.
    pub async fn read(&self, store: &Store, wanted: &[Wanted]) -> RedisResult<Vec<Arc<Strings>>> {
        let generation = self.generation();
        let mut out: Vec<Option<Arc<Strings>>> = self
            .get_all(wanted.iter().map(|w| w.key.as_str()))
            .into_iter()
            .map(|entry| match entry {
                Some(Entry::Cells(strings)) => Some(strings),
                _ => None,
            })
            .collect();
        let mut first = true;
        loop {
            // the version of every hour, with the key for the hours not held and the hot ones;
            // each hour's commands stay in its slot
            let todo: Vec<usize> = (0..wanted.len())
                .filter(|&i| first || out[i].is_none())
                .collect();
            if todo.is_empty() {
                break;
            }
            let pipelines: Vec<redis::Pipeline> = todo
                .iter()
                .map(|&i| {
                    let w = &wanted[i];
                    let mut pipe = redis::pipe();
                    if self.inner.is_some() {
                        pipe.scard(keys::seen(&w.tag));
                    }
                    if out[i].is_none() || (first && w.hot) {
                        match w.kind {
                            Kind::Hash => pipe.hgetall(&w.key),
                            Kind::Set => pipe.smembers(&w.key),
                        };
                    }
                    pipe
                })
                .collect();
            let answers = store.query_groups(&pipelines).await?;
            for (&i, answer) in todo.iter().zip(answers) {
                let mut answer = answer.into_iter();
                let version = match self.inner {
                    Some(_) => redis::from_redis_value(answer.next().unwrap_or(Value::Nil))?,
                    None => -1,
                };
                let current = out[i].as_ref().is_some_and(|held| held.version == version);
                match answer.next() {
                    _ if current => {
                        self.metrics.hits.inc();
                    }
                    Some(data) => {
                        self.metrics.misses.inc();
                        let strings = Arc::new(Strings::from_value(&data, version)?);
                        self.put(&wanted[i].key, Entry::Cells(strings.clone()), generation);
                        out[i] = Some(strings);
                    }
                    // held at another version: read again
                    None => out[i] = None,
                }
            }
            first = false;
        }
        Ok(out.into_iter().map(|s| s.unwrap_or_default()).collect())
    }
}

/// Where an answer is kept: apart from every Redis key.
fn answer_key(key: &str) -> String {
    format!("\u{0}answer\u{0}{key}")
}

/// Where a learner's summary is kept.
fn summary_key(learner: &str) -> String {
    format!("\u{0}summary\u{0}{learner}")
}

/// `ANALYSIS_CACHE_MB` in bytes.
pub fn budget_bytes(megabytes: usize) -> usize {
    megabytes.saturating_mul(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn hash_and_set_answers_read_back_as_written() {
        let hash = Strings::from_value(&bulk(&["|c|{}", "2", "07|c|{\"a\":1}", "5"]), 3).unwrap();
        assert_eq!(
            hash.pairs().collect::<Vec<_>>(),
            [("|c|{}", "2"), ("07|c|{\"a\":1}", "5")]
        );
        let map = Value::Map(vec![(
            Value::BulkString(b"f".to_vec()),
            Value::BulkString(b"1".to_vec()),
        )]);
        assert_eq!(
            Strings::from_value(&map, 0)
                .unwrap()
                .pairs()
                .collect::<Vec<_>>(),
            [("f", "1")]
        );
        let set = Strings::from_value(&Value::Set(vec![Value::BulkString(b"a1".to_vec())]), 0);
        assert_eq!(set.unwrap().iter().collect::<Vec<_>>(), ["a1"]);
        assert_eq!(
            Strings::from_value(&Value::Nil, 0).unwrap().iter().count(),
            0
        );
        assert!(Strings::from_value(&Value::Int(1), 0).is_err());
        assert!(Strings::from_value(&Value::Array(vec![Value::Int(1)]), 0).is_err());
    }

    #[test]
    fn the_budget_drops_the_least_recently_used_first() {
        let strings =
            |text: &str| Entry::Cells(Arc::new(Strings::from_value(&bulk(&[text]), 1).unwrap()));
        let one = strings(&"x".repeat(100));
        let cost = one.bytes("k1");
        let cache = Cache::new(2 * cost + cost / 2, CacheMetrics::default(), Arc::default());
        cache.put("k1", one.clone(), 0);
        cache.put("k2", one.clone(), 0);
        assert!(cache.get("k1").is_some(), "k1 used: k2 is now the oldest");
        cache.put("k3", one.clone(), 0);
        assert!(cache.get("k2").is_none());
        assert!(cache.get("k1").is_some() && cache.get("k3").is_some());
        assert_eq!(cache.held_bytes(), 2 * cost);
        // replacing a key counts it once
        cache.put("k3", one.clone(), 0);
        assert_eq!(cache.held_bytes(), 2 * cost);
        // larger than the whole budget: not kept, nothing dropped for it
        cache.put("big", strings(&"y".repeat(10 * cost)), 0);
        assert!(cache.get("big").is_none() && cache.get("k1").is_some());
        // a larger one under a kept key: neither is kept
        cache.put("k1", strings(&"y".repeat(10 * cost)), 0);
        assert!(cache.get("k1").is_none());
        assert_eq!(cache.held_bytes(), cost);
        let off = Cache::new(0, CacheMetrics::default(), Arc::default());
        off.put("k1", one, 0);
        assert!(off.get("k1").is_none());
        assert_eq!(off.held_bytes(), 0);
    }

    #[test]
    fn an_answer_is_given_only_at_the_versions_it_was_computed_from() {
        let cache = Cache::new(1 << 20, CacheMetrics::default(), Arc::default());
        cache.keep_answer("q", vec![3, 0, 7], b"{\"result\":1}", 0);
        assert_eq!(
            cache.answer("q", &[3, 0, 7]).as_deref(),
            Some(&b"{\"result\":1}"[..])
        );
        assert_eq!(cache.answer("q", &[3, 1, 7]), None, "an hour changed");
        assert_eq!(cache.answer("q", &[3, 0]), None, "other hours");
        assert_eq!(cache.answer("other", &[3, 0, 7]), None);
        assert_eq!(cache.metrics.answers.get(), 1);
        // a version not known (the cache off when read): not kept
        cache.keep_answer("r", vec![3, -1], b"{}", 0);
        assert_eq!(cache.answer("r", &[3, -1]), None);
        // an answer and a Redis key of the same name are apart
        cache.put("q", Entry::Cells(Arc::default()), 0);
        assert!(cache.answer("q", &[3, 0, 7]).is_some());
    }

    #[test]
    fn a_new_epoch_empties_it_and_what_was_read_before_is_not_kept() {
        let epoch = Arc::new(AtomicU64::new(0));
        let cache = Cache::new(1 << 20, CacheMetrics::default(), epoch.clone());
        let before = cache.generation();
        cache.put("k1", Entry::Cells(Arc::default()), before);
        assert!(cache.get("k1").is_some());
        // Redis may have lost writes
        epoch.fetch_add(1, Ordering::AcqRel);
        assert!(cache.get("k1").is_none());
        assert_eq!(cache.held_bytes(), 0);
        assert_eq!(cache.metrics.clears.get(), 1);
        // a read that started before it
        cache.put("k2", Entry::Cells(Arc::default()), before);
        cache.keep_answer("q", vec![1], b"{}", before);
        assert!(cache.get("k2").is_none() && cache.answer("q", &[1]).is_none());
        // one that started after it
        cache.put("k2", Entry::Cells(Arc::default()), cache.generation());
        assert!(cache.get("k2").is_some());
        assert_eq!(cache.metrics.clears.get(), 1);
    }

    #[test]
    fn summaries_are_kept_per_learner_apart_from_everything_else() {
        let cache = Cache::new(1 << 20, CacheMetrics::default(), Arc::default());
        let held = HeldSummary {
            version: 4,
            known: vec![("ruby-101".into(), 3)],
            summary: LearnerSummary {
                learner: "a1".into(),
                events: 4,
                ..Default::default()
            },
        };
        cache.keep_summary("a1", held.clone(), 0);
        assert_eq!(cache.summary("a1").as_deref(), Some(&held));
        assert!(cache.summary("a2").is_none());
        cache.keep_answer("a1", vec![1], b"{}", 0);
        cache.put("a1", Entry::Cells(Arc::default()), 0);
        assert_eq!(cache.summary("a1").as_deref(), Some(&held));
        assert!(
            Cache::new(0, CacheMetrics::default(), Arc::default())
                .summary("a1")
                .is_none()
        );
    }
}
