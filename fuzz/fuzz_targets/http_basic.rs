#![no_main]
//! Any Authorization header value yields credentials or nothing; never a
//! panic. What it yields round-trips through a Basic header of its own.
use amqp_relay::listeners::http::auth::parse_basic;
use base64::Engine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((user, password)) = parse_basic(data) {
        assert!(!user.contains(':'), "a user name never holds the separator");
        let again = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        assert_eq!(parse_basic(again.as_bytes()), Some((user, password)));
    }
});
