//! Where messages come in.

pub mod http;
pub mod smtp;
