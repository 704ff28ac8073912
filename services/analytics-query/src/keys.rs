//! Redis key layout. Every key starts with a hash tag, so each atomic step touches one hash
//! slot and the projection runs unchanged on Redis Cluster:
//!
//! | tag | keys | what |
//! |---|---|---|
//! | `{l:<actor>}` | `:seen` `:n` `:rcls` `:rerr` `:tl` `:nb` `:prob` `:lab` `:vid` `:enr` `:as` `:en` `:crs` `:bc` `:ke:<coll>` | one learner: seen event ids, counters, summaries, timeline, the learner's own events of each collection for the analysis API |
//! | `{a:<coll>:<hour>}` | `:seen` `:h` `:m` `:h:<measure>` `:m:<measure>` `:u` | one collection-hour: seen ids, hourly and per-minute analysis cells (counts; each measure's sum, count, minimum, maximum), actors |
//! | `{c:<course>}` | `:l` `:p` | one course: its learners, its known problems (`assignment\x1fgrade_id`) |
//!
//! `<hour>` is whole hours since the Unix epoch of the event's `occurred_at`. Every write to a
//! collection-hour adds its events' marks to the hour's `:seen` in the same atomic step: the
//! size of that set is the hour's version, by which the Keen API knows whether what it holds
//! in memory of the hour is current ([`crate::cache`]). [`LAYOUT_KEY`]
//! holds the layout's version ([`LAYOUT`]).

/// The version of this layout (and of what its fields mean), kept in Redis at [`LAYOUT_KEY`]. A
/// build that changes either raises it; analytics-query refuses to start on a Redis that holds
/// another version (its answers would be wrong), until the projection is rebuilt.
pub const LAYOUT: u32 = 2;

/// Where Redis keeps the version of the layout it holds (set by the first start on it).
pub const LAYOUT_KEY: &str = "learntrail:analytics:layout";

/// Separates the parts of a composite hash field.
pub const SEP: char = '\u{1f}';

/// The hash tag of a learner.
pub fn learner(actor: &str) -> String {
    format!("{{l:{actor}}}")
}

/// The hash tag of a collection-hour.
pub fn aggregate(collection: &str, hour: i64) -> String {
    format!("{{a:{collection}:{hour}}}")
}

/// The hash tag of a course.
pub fn course(course: &str) -> String {
    format!("{{c:{course}}}")
}

/// The seen-mark set of a tag.
pub fn seen(tag: &str) -> String {
    format!("{tag}:seen")
}

/// A learner's events of one collection, for the analysis API: one sorted-set member per event
/// (score: occurred ms; member: [`crate::fold::analysis_member`]).
pub fn learner_events(actor: &str, collection: &str) -> String {
    format!("{}:ke:{collection}", learner(actor))
}

/// The cells of one measure beside the count cells at `key`.
pub fn measure_cells(key: &str, measure: &str) -> String {
    format!("{key}:{measure}")
}

/// Whole hours since the epoch of a time in milliseconds.
pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(3_600_000)
}

/// A composite hash field.
pub fn field(parts: &[&str]) -> String {
    parts.join(&SEP.to_string())
}
