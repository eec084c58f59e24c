//! The operator side: the AmqpRoute type and what it renders to.

pub mod crd;
pub mod lua_literal;
pub mod manifests;
pub mod render;
