//! End-to-end tests: the relay binary, a real RabbitMQ node, real HTTP clients.

mod admin;
mod bad_input;
mod broker;
mod chaos;
mod control_plane;
mod disk_full;
mod durability;
mod failover;
mod fake_kube;
mod graceful;
mod harness;
mod held;
mod hostile;
mod http_security;
mod inject;
mod kumo_helpers;
mod log_hooks;
mod proxy;
mod publish;
mod queues;
mod reload;
mod render;
mod retry;
mod scale_in;
mod seed;
mod sessions;
mod smtp;
mod smtp_security;
mod tls;

use std::path::PathBuf;

pub fn policy_template(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/policies")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The seed page's Lua, as shipped in `policies/seed.lua`.
pub fn seed_policy() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/seed.lua");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
