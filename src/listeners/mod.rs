//! Where messages come in.

pub mod http;
pub mod inject;
pub mod memory;
pub mod net;
pub mod smtp;
