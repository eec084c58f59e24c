//! What `kumo.make_queue_config`, `make_egress_path` and
//! `make_listener_domain` return, and the events read back as answers.

use crate::model::config::{EgressPathConfig, QueueConfig};
use crate::model::listener_config::ListenerDomain;
use mlua::UserData;

pub struct QueueConfigUd(pub QueueConfig);
impl UserData for QueueConfigUd {}
pub struct EgressPathUd(pub EgressPathConfig);
impl UserData for EgressPathUd {}
pub struct ListenerDomainUd(pub ListenerDomain);
impl UserData for ListenerDomainUd {}
