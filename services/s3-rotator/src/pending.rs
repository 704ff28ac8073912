//! What the archiver knows about sequences it has received: those in an open or sealed segment
//! (not yet acknowledged), and those archived and acknowledged within the hold (at least the ack
//! wait), so that a redelivery the server sent before our acknowledgement reached it is
//! recognised and not written a second time.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use crate::seqs::SeqSet;

/// Segments are known by their first sequence (the number in their file name).
pub type SegmentId = u64;

#[derive(Debug)]
pub struct Pending {
    /// Every sequence in a segment (the union of `segments`).
    all: SeqSet,
    segments: HashMap<SegmentId, SeqSet>,
    /// Receipt time of each segment's first event (for the oldest-age metric).
    oldest: BTreeMap<SegmentId, DateTime<Utc>>,
    /// Archived sequences, in generations by the time they were acknowledged.
    retired: VecDeque<(Instant, SeqSet)>,
    hold: Duration,
}

pub type Shared = Arc<Mutex<Pending>>;

impl Pending {
    /// `hold`: how long archived sequences stay known.
    pub fn new(hold: Duration) -> Self {
        Self {
            all: SeqSet::default(),
            segments: HashMap::new(),
            oldest: BTreeMap::new(),
            retired: VecDeque::new(),
            hold,
        }
    }

    pub fn shared(hold: Duration) -> Shared {
        Arc::new(Mutex::new(Self::new(hold)))
    }

    /// A segment read back at start-up.
    pub fn load(&mut self, segment: SegmentId, seqs: SeqSet, received: DateTime<Utc>) {
        self.all.union_with(&seqs);
        self.segments.insert(segment, seqs);
        self.oldest.insert(segment, received);
    }

    /// A new segment starting with an event received at `received`.
    pub fn open(&mut self, segment: SegmentId, received: DateTime<Utc>) {
        self.segments.entry(segment).or_default();
        self.oldest.insert(segment, received);
    }

    /// `seq` was written to `segment`.
    pub fn add(&mut self, segment: SegmentId, seq: u64) {
        self.all.insert(seq);
        self.segments.entry(segment).or_default().insert(seq);
    }

    /// True when `seq` is in a segment or was archived within the hold.
    pub fn contains(&self, seq: u64) -> bool {
        self.all.contains(seq) || self.retired.iter().any(|(_, set)| set.contains(seq))
    }

    /// A segment's sequences.
    pub fn segment(&self, segment: SegmentId) -> Option<&SeqSet> {
        self.segments.get(&segment)
    }

    /// The segment is archived and acknowledged: its sequences are held, then forgotten.
    pub fn retire(&mut self, segment: SegmentId, now: Instant) -> u64 {
        let seqs = self.forget(segment);
        let count = seqs.len();
        let generation = self.hold / 4;
        match self.retired.back_mut() {
            Some((started, set)) if now.duration_since(*started) < generation => {
                set.union_with(&seqs)
            }
            _ => self.retired.push_back((now, seqs)),
        }
        self.expire(now);
        count
    }

    /// The segment was set aside unarchived: its sequences are released, so their redeliveries
    /// are archived anew.
    pub fn release(&mut self, segment: SegmentId) -> u64 {
        self.forget(segment).len()
    }

    fn forget(&mut self, segment: SegmentId) -> SeqSet {
        let seqs = self.segments.remove(&segment).unwrap_or_default();
        self.all.subtract(&seqs);
        self.oldest.remove(&segment);
        seqs
    }

    /// Forgets generations whose every sequence has been held at least `hold`.
    pub fn expire(&mut self, now: Instant) {
        let generation = self.hold / 4;
        while let Some((started, _)) = self.retired.front() {
            if now.duration_since(*started) < self.hold + generation {
                break;
            }
            self.retired.pop_front();
        }
    }

    /// Sequences in segments.
    pub fn len(&self) -> u64 {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        self.oldest.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_sequences_stay_known_for_the_hold_then_go() {
        let hold = Duration::from_secs(40);
        let mut pending = Pending::new(hold);
        let t0 = Instant::now();
        pending.open(1, Utc::now());
        pending.add(1, 1);
        pending.add(1, 2);
        pending.add(3, 3);
        assert_eq!(pending.retire(1, t0), 2);
        assert_eq!(pending.len(), 1);
        assert!(pending.contains(1), "a late redelivery of 1 is recognised");
        pending.expire(t0 + hold - Duration::from_millis(1));
        assert!(pending.contains(2));
        pending.expire(t0 + hold + hold / 4);
        assert!(!pending.contains(1) && !pending.contains(2));
        assert!(pending.contains(3), "not yet archived");
        assert!(pending.retired.is_empty());
    }

    #[test]
    fn a_released_segment_forgets_its_sequences_at_once() {
        let mut pending = Pending::new(Duration::from_secs(60));
        pending.open(5, Utc::now());
        for seq in [5, 7, 9] {
            pending.add(5, seq);
        }
        pending.add(6, 6);
        assert_eq!(pending.release(5), 3);
        assert!(!pending.contains(5) && !pending.contains(9));
        assert!(pending.contains(6));
        assert_eq!(pending.len(), 1);
    }
}
