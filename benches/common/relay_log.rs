//! Shared by the benches: the address a spawned relay logs for a listener.

use std::io::{BufRead, BufReader};
use std::process::Child;

/// Reads the relay's stderr (piped) until `KIND listener on ADDR`, returns
/// ADDR, then keeps draining it so the relay never blocks on a full pipe.
pub fn listener_addr(relay: &mut Child, kind: &str) -> String {
    let stderr = relay.stderr.take().expect("the relay's stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let marker = format!("{kind} listener on ");
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split(&marker).nth(1).map(|a| a.trim().to_owned()))
        .unwrap_or_else(|| panic!("the relay exited before logging its {kind} listener"));
    std::thread::spawn(move || for _ in lines {});
    addr
}
