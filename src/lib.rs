//! amqp-relay: SMTP and HTTP in, a durable spool, a KumoMTA-compatible Lua
//! policy, and RabbitMQ out.
//!
//! Modules import only those above them in this list (no cycles):
//! - [`model`]: messages, queue names, and the serde configuration that
//!   policies, listeners and the engine share.
//! - [`policy`]: the Lua runtime (loading, the state pool, the typed events),
//!   the `kumo` module in `policy::kumo` with one file per KumoMTA module
//!   (`kumo.amqp` on lapin in `mod_amqp`), and delivery sessions.
//! - [`engine`]: the redb spool with its on-disk schedule, queues, the pager
//!   that bounds memory, delivery scheduling and outcomes, log records,
//!   hot reload, metrics.
//! - [`listeners`]: the SMTP listener and the HTTP API (injection, admin,
//!   health, metrics).
//! - [`relay`] and [`cli`]: `amqp-relay relay` and the command line
//!   ([`admin_cli`]: `amqp-relay admin`, a client of the admin API);
//!   [`routes_api`] beside the relay: its Kubernetes API watch of the routes,
//!   feeding the engine files (the engine knows no Kubernetes).
//! - [`operator`] (beside them): the `AmqpRoute` resource, rendering routes
//!   into a policy, and the controller.
//! - [`signal`] (a leaf both commands use): when to stop.
//! - [`spool_marker`]: where a stopping relay says what its spool holds.

pub mod admin_cli;
pub mod cli;
pub mod engine;
pub mod listeners;
pub mod model;
pub mod operator;
pub mod policy;
pub mod relay;
pub mod routes_api;
pub mod signal;
pub mod spool_marker;
#[cfg(test)]
mod test_support;
