#![no_main]
//! Parsing and printing queue names round-trip.
use amqp_relay::model::queue_name::QueueName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|name: &str| {
    if let Ok(q) = QueueName::parse(name) {
        let again = QueueName::parse(&q.to_string()).expect("a printed name parses");
        assert_eq!(again, q);
    }
});
