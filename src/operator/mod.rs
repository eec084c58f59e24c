//! The operator side: the AmqpRoute type and what it renders to.

pub mod crd;
pub mod credentials;
#[cfg(test)]
pub mod fake_api;
#[cfg(test)]
#[path = "fake_api_tests.rs"]
mod fake_api_tests;
pub mod leader;
pub mod lua_literal;
pub mod manifests;
pub mod ownership;
pub mod render;
pub mod run;
pub mod spools;
pub mod status;
pub mod sync;
