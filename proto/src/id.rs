//! Event ids: producers assign a ULID once; it is the JetStream `Nats-Msg-Id`, so a retried
//! publish is deduplicated by the stream. UUIDs (any version) from outside clients are accepted.

use std::cell::Cell;

thread_local! {
    /// The last id's millisecond and random part on this thread (monotonic ULIDs).
    static LAST: Cell<(u64, u128)> = const { Cell::new((0, 0)) };
}

/// A new ULID: 26 Crockford base32 characters, sortable by creation time. The first id of each
/// millisecond on a thread takes 80 random bits straight from the OS (no seeded generator to set
/// up: a lab shim makes one id per run); later ids of the same millisecond on that thread add one
/// to the random part, as the ULID spec's monotonic mode does, so a busy server makes one
/// `getrandom` call per thread and millisecond rather than one per event.
pub fn new_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let random = LAST.with(|last| {
        let (last_millis, last_random) = last.get();
        let random = if last_millis == millis && last_random < RANDOM_MAX {
            last_random + 1
        } else {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).expect("the OS random source is available");
            // leave headroom below the 80-bit top so increments never wrap
            (u128::from_le_bytes(bytes) & RANDOM_MAX) >> 1
        };
        last.set((millis, random));
        random
    });
    ulid::Ulid::from_parts(millis, random).to_string()
}

/// The largest 80-bit random part.
const RANDOM_MAX: u128 = (1 << 80) - 1;

/// True for a ULID or a hyphenated UUID.
pub fn is_valid_id(id: &str) -> bool {
    is_ulid(id) || is_uuid(id)
}

fn is_ulid(id: &str) -> bool {
    id.len() == 26 && ulid::Ulid::from_string(id).is_ok()
}

fn is_uuid(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ulids_and_uuids() {
        assert!(is_valid_id(&new_id()));
        assert!(is_valid_id("01J9ZQ3V6S7T8X9Y0Z1A2B3C4D"));
        assert!(is_valid_id("0192a5b4-6c1d-7e2f-8a9b-0c1d2e3f4a5b"));
        assert!(!is_valid_id("not-an-id"));
        assert!(!is_valid_id("0192a5b4x6c1d-7e2f-8a9b-0c1d2e3f4a5b"));
        assert!(!is_valid_id(""));
    }

    #[test]
    fn ids_are_unique_and_carry_the_time() {
        assert_ne!(new_id(), new_id());
        let millis = || {
            let since = std::time::UNIX_EPOCH.elapsed().unwrap();
            since.as_millis() as u64
        };
        let before = millis();
        let id = ulid::Ulid::from_string(&new_id()).unwrap();
        assert!((before..=millis()).contains(&id.timestamp_ms()), "{id}");
        assert_ne!(id.random(), 0);
    }

    #[test]
    fn ids_of_one_thread_sort_in_order_of_creation() {
        let ids: Vec<String> = (0..10_000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "monotonic");
        let other = std::thread::spawn(new_id).join().unwrap();
        assert!(!ids.contains(&other));
    }
}
