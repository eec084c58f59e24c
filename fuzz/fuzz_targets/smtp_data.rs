#![no_main]
//! The line reader behind DATA and commands: over any bytes it returns lines
//! no longer than the limit, consumes everything, and never panics.
use amqp_relay::listeners::smtp::lines::{Line, read_line};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        // A small buffer so lines straddle refills.
        let mut r = tokio::io::BufReader::with_capacity(7, data);
        let mut buf = Vec::new();
        let mut lines = 0usize;
        loop {
            match read_line(&mut r, &mut buf, LIMIT).await.unwrap() {
                Line::Eof => break,
                Line::Line { .. } => assert!(buf.len() <= LIMIT + 2 && !buf.ends_with(b"\n")),
                Line::TooLong => {}
            }
            lines += 1;
            assert!(lines <= data.len() + 1, "no progress");
        }
    });
});
