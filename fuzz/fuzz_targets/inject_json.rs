#![no_main]
//! Any body yields a request or an error message; never a panic.
use amqp_relay::listeners::inject;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match inject::parse(data) {
        Ok(req) => assert!(!req.recipients.is_empty()),
        Err(e) => assert!(!e.message().is_empty()),
    }
});
