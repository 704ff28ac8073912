//! learntrail-token mints tokens the services accept, and every one of them expires.

use std::process::Command;

use learntrail_runtime::auth::{self, Role, Verifier};

fn mint(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_learntrail-token"))
        .args(args)
        .env("JWT_SECRET", "a-secret-for-the-token-tool-test-0123456789")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn tokens_always_carry_exp() {
    let verifier = Verifier::new(b"a-secret-for-the-token-tool-test-0123456789");
    let now = auth::now();
    let day = verifier.verify(&mint(&[]), now).unwrap();
    let exp = day.exp.expect("exp is set");
    assert!(
        (now + 86_000..=now + 86_500).contains(&exp),
        "24 h by default: {exp}"
    );
    assert_eq!(day.role, Role::Student);

    let hour = verifier
        .verify(
            &mint(&["--ttl", "1h", "--role", "service", "--sub", "lms"]),
            now,
        )
        .unwrap();
    assert!((now + 3_500..=now + 3_700).contains(&hour.exp.unwrap()));
    assert_eq!((hour.sub.as_str(), hour.role), ("lms", Role::Service));
}
