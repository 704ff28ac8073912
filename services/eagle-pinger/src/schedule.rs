//! Where and when a meter is polled, from its cloud id alone, so every replica agrees without
//! talking to the others:
//! - its shard: jump consistent hash (Lamping & Veach, 2014) of FNV-1a of the cloud id, so each
//!   meter has exactly one replica, and going from N to N+1 replicas moves only 1/(N+1) of them;
//! - its offset inside the poll interval: another hash of the cloud id, so thousands of meters
//!   spread evenly over the interval instead of firing at once, and a meter keeps its slot
//!   across restarts.

use std::time::Duration;

use tokio::time::Instant;

/// 64-bit FNV-1a: stable across versions and platforms (unlike `std`'s hasher).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Jump consistent hash: a bucket in `0..buckets` for `key`.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

/// Which replica polls this meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub const ALL: Self = Self { index: 0, count: 1 };

    /// True when this replica polls `cloud_id`.
    pub fn owns(&self, cloud_id: &str) -> bool {
        shard_of(cloud_id, self.count) == self.index
    }
}

/// The shard of a meter among `count` replicas.
pub fn shard_of(cloud_id: &str, count: u32) -> u32 {
    jump_hash(
        fnv1a(cloud_id.to_ascii_lowercase().as_bytes()),
        count.max(1),
    )
}

/// The ordinal of a StatefulSet pod name (`eagle-pinger-3` → 3).
pub fn pod_ordinal(name: &str) -> Option<u32> {
    name.rsplit_once('-')?.1.parse().ok()
}

/// A meter's stable offset inside `interval`.
pub fn offset(cloud_id: &str, interval: Duration) -> Duration {
    let salted = format!("offset:{}", cloud_id.to_ascii_lowercase());
    let nanos = interval.as_nanos().max(1) as u64;
    Duration::from_nanos(fnv1a(salted.as_bytes()) % nanos)
}

/// The first slot `base + offset + k * interval` (k ≥ 0) at or after `now`.
pub fn next_slot(base: Instant, offset: Duration, interval: Duration, now: Instant) -> Instant {
    let first = base + offset;
    if now <= first {
        return first;
    }
    let interval_ns = interval.as_nanos().max(1);
    let behind = (now - first).as_nanos();
    let k = behind.div_ceil(interval_ns);
    first + Duration::from_nanos((k * interval_ns) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<String> {
        (0..n).map(|i| format!("{i:06x}")).collect()
    }

    #[test]
    fn shards_are_disjoint_and_cover_everything() {
        let ids = ids(10_000);
        for count in [1, 2, 3, 7] {
            let mut sizes = vec![0usize; count as usize];
            for id in &ids {
                let owners: Vec<u32> = (0..count)
                    .filter(|i| Shard { index: *i, count }.owns(id))
                    .collect();
                assert_eq!(owners.len(), 1, "{id} among {count}");
                sizes[owners[0] as usize] += 1;
            }
            let fair = ids.len() / count as usize;
            assert!(
                sizes.iter().all(|s| s.abs_diff(fair) < fair / 10 + 50),
                "{count}: {sizes:?}"
            );
        }
        assert_eq!(shard_of("0012AB", 5), shard_of("0012ab", 5));
    }

    #[test]
    fn growing_by_one_replica_moves_few_meters() {
        let ids = ids(10_000);
        let moved = ids
            .iter()
            .filter(|id| shard_of(id, 4) != shard_of(id, 5))
            .count();
        // ideal: 1/5 of them
        assert!((1_700..2_300).contains(&moved), "{moved}");
        // and those that move, move to the new replica
        assert!(
            ids.iter()
                .filter(|id| shard_of(id, 4) != shard_of(id, 5))
                .all(|id| shard_of(id, 5) == 4)
        );
    }

    #[test]
    fn offsets_spread_over_the_interval() {
        let interval = Duration::from_secs(6);
        let mut per_second = [0usize; 6];
        for id in ids(6_000) {
            let o = offset(&id, interval);
            assert!(o < interval);
            per_second[o.as_secs() as usize] += 1;
        }
        assert!(
            per_second.iter().all(|n| (850..1150).contains(n)),
            "{per_second:?}"
        );
        assert_eq!(offset("0012ab", interval), offset("0012AB", interval));
    }

    #[test]
    fn slots() {
        let base = Instant::now();
        let (offset, interval) = (Duration::from_millis(1500), Duration::from_secs(6));
        assert_eq!(next_slot(base, offset, interval, base), base + offset);
        let later = base + Duration::from_millis(1501);
        assert_eq!(
            next_slot(base, offset, interval, later),
            base + Duration::from_millis(7500)
        );
        let exact = base + Duration::from_millis(7500);
        assert_eq!(next_slot(base, offset, interval, exact), exact);
        assert_eq!(pod_ordinal("eagle-pinger-12"), Some(12));
        assert_eq!(pod_ordinal("eagle-pinger"), None);
    }
}
