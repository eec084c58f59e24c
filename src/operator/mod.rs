//! The operator side: the AmqpRoute type and what it renders to.

pub mod crd;
