//! Event ids: producers assign a ULID once; it is the JetStream `Nats-Msg-Id`, so a retried
//! publish is deduplicated by the stream. UUIDs (any version) from outside clients are accepted.

/// A new ULID: 26 Crockford base32 characters, sortable by creation time. The 80 random bits
/// come straight from the OS (no seeded generator to set up: a lab shim makes one id per run).
pub fn new_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).expect("the OS random source is available");
    ulid::Ulid::from_parts(millis, u128::from_le_bytes(random)).to_string()
}

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
}
