#![no_main]
//! Any AUTH response line decodes to credentials or an error with a 5xx
//! reply; never a panic. PLAIN credentials always name who authenticates.
use amqp_relay::listeners::smtp::auth::{login_step, plain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match plain(line) {
        Ok(c) => {
            assert!(!c.authc.is_empty());
            assert!(!c.authz.is_empty());
        }
        Err(e) => assert!((500..600).contains(&e.code)),
    }
    if let Err(e) = login_step(line) {
        assert!((500..600).contains(&e.code));
    }
});
