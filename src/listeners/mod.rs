//! Where messages come in.

pub mod http;
pub mod inject;
pub mod smtp;
