//! The types every layer shares and none owns: messages, queue names, and the
//! serde configuration that policies, listeners and the engine read.

pub mod address;
pub mod config;
pub mod digest;
pub mod headers;
pub mod listener_config;
pub mod log_config;
pub mod message;
pub mod queue_name;
pub mod response;
pub mod spool_report;
pub mod trace;
