//! Where events go: partitions by source and UTC hour of receipt, and object keys named from the
//! stream sequences they hold (the first, the last, and a digest of them all), so a retried
//! upload writes the same key with the same events, and two different sets of events never
//! share a key.

use chrono::{DateTime, Datelike, Timelike, Utc};
use learntrail_proto::subject;

use crate::seqs::SeqSet;

/// One partition: a source and the UTC hour its events were received in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    pub source: String,
    /// `YYYY-MM-DD`
    pub date: String,
    /// `00`..`23`
    pub hour: String,
}

impl Partition {
    /// The partition of a message on `subject` received at `received`.
    pub fn of(subject_name: &str, received: DateTime<Utc>) -> Self {
        let source = subject::parse_event_subject(subject_name)
            .map(|(source, _)| source)
            .filter(|s| subject::is_token(s))
            .unwrap_or("_unknown");
        Self {
            source: source.to_string(),
            date: format!(
                "{:04}-{:02}-{:02}",
                received.year(),
                received.month(),
                received.day()
            ),
            hour: format!("{:02}", received.hour()),
        }
    }

    /// When the partition's hour ends.
    pub fn hour_end(&self) -> Option<DateTime<Utc>> {
        let start: DateTime<Utc> = format!("{}T{}:00:00Z", self.date, self.hour).parse().ok()?;
        Some(start + chrono::Duration::hours(1))
    }

    /// `events/source=lms/dt=2026-11-24/hour=16/` with `prefix` = `events`.
    pub fn key_prefix(&self, prefix: &str) -> String {
        format!(
            "{prefix}/source={}/dt={}/hour={}/",
            self.source, self.date, self.hour
        )
    }

    /// The object key for the events with stream sequences `seqs`.
    pub fn object_key(&self, prefix: &str, seqs: &SeqSet) -> String {
        let (first, last) = (seqs.first().unwrap_or(0), seqs.last().unwrap_or(0));
        format!(
            "{}{first:020}-{last:020}-{}.ndjson.gz",
            self.key_prefix(prefix),
            seqs.digest()
        )
    }

    /// `lms__2026-11-24__16` (for spool file names).
    pub fn file_stem(&self) -> String {
        format!("{}__{}__{}", self.source, self.date, self.hour)
    }

    /// Read from the right: date and hour never hold `__`, a source name may.
    pub fn from_file_stem(stem: &str) -> Option<Self> {
        let mut parts = stem.rsplitn(3, "__");
        let (hour, date, source) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Self {
            source: source.into(),
            date: date.into(),
            hour: hour.into(),
        })
    }
}

/// The hour prefixes (`dt=…/hour=…/`) from `from` to `to` inclusive, for one source.
pub fn hours_between(source: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Partition> {
    let mut hours = Vec::new();
    let mut at = from
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(from);
    while at <= to {
        let mut partition = Partition::of("events.x.y", at);
        partition.source = source.to_string();
        hours.push(partition);
        at += chrono::Duration::hours(1);
    }
    hours
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn partitions_and_keys() {
        let p = Partition::of("events.lms.video", at("2026-11-24T16:59:59.900Z"));
        assert_eq!(
            p,
            Partition {
                source: "lms".into(),
                date: "2026-11-24".into(),
                hour: "16".into()
            }
        );
        let seqs: SeqSet = [7, 8, 1234].into_iter().collect();
        let key = p.object_key("events", &seqs);
        assert_eq!(
            key,
            format!(
                "events/source=lms/dt=2026-11-24/hour=16/00000000000000000007-00000000000000001234-{}.ndjson.gz",
                seqs.digest()
            )
        );
        let fewer: SeqSet = [7, 1234].into_iter().collect();
        assert_ne!(
            p.object_key("events", &fewer),
            key,
            "fewer events, another key"
        );
        assert_eq!(p.hour_end(), Some(at("2026-11-24T17:00:00Z")));
        assert_eq!(Partition::from_file_stem(&p.file_stem()), Some(p.clone()));
        for source in ["lab_", "a__b", "_unknown"] {
            let odd = Partition {
                source: source.into(),
                ..p.clone()
            };
            assert_eq!(Partition::from_file_stem(&odd.file_stem()), Some(odd));
        }
        assert_eq!(
            Partition::of("events.bad", at("2026-11-24T00:00:00Z")).source,
            "_unknown"
        );
    }

    #[test]
    fn hour_ranges() {
        let hours = hours_between(
            "shim",
            at("2026-11-24T22:30:00Z"),
            at("2026-11-25T01:00:00Z"),
        );
        let labels: Vec<_> = hours
            .iter()
            .map(|p| format!("{} {}", p.date, p.hour))
            .collect();
        assert_eq!(
            labels,
            [
                "2026-11-24 22",
                "2026-11-24 23",
                "2026-11-25 00",
                "2026-11-25 01"
            ]
        );
    }
}
