#![no_main]
//! Any line parses to a command or a reply code; never a panic.
use amqp_relay::listeners::smtp::command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        if let Err(m) = command::parse(line) {
            assert!((500..=555).contains(&m.code), "{m:?}");
        }
    }
});
