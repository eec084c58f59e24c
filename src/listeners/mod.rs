//! Where messages come in.

pub mod http;
