//! amqp-relay: SMTP and HTTP in, a durable spool, a KumoMTA-compatible Lua
//! policy, and RabbitMQ out.
//!
//! - [`engine`]: messages, the redb spool with group commit, per-queue
//!   scheduling and retry, custom_lua delivery sessions, metrics.
//! - [`policy`]: the Lua runtime, the `kumo` module (with `kumo.amqp` on
//!   lapin), and the events the engine fires.
//! - [`listeners`]: the HTTP injection API (and health, metrics).
//! - [`operator`]: the `AmqpRoute` custom resource.
//! - [`relay`]: wires them together for `amqp-relay relay`.
//! - [`cli`]: the command line.

pub mod cli;
pub mod engine;
pub mod listeners;
pub mod model;
pub mod operator;
pub mod policy;
pub mod relay;
