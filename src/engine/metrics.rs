//! Prometheus metrics of the relay.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

pub struct Metrics {
    registry: Registry,
    pub received: Counter,
    pub delivered: Counter,
    pub transient: Counter,
    pub bounced: Counter,
    pub expired: Counter,
    pub queue_depth: Family<QueueLabel, Gauge>,
    pub reloads: Counter,
    pub reload_failures: Counter,
    pub epoch: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("amqp_relay");
        let m = Metrics {
            received: Counter::default(),
            delivered: Counter::default(),
            transient: Counter::default(),
            bounced: Counter::default(),
            expired: Counter::default(),
            queue_depth: Family::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            epoch: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "received",
            "Messages accepted into the spool",
            m.received.clone(),
        );
        registry.register("delivered", "Messages delivered", m.delivered.clone());
        registry.register(
            "transient_failures",
            "Delivery attempts that failed temporarily",
            m.transient.clone(),
        );
        registry.register("bounced", "Messages failed permanently", m.bounced.clone());
        registry.register(
            "expired",
            "Messages expired after max_age",
            m.expired.clone(),
        );
        registry.register(
            "queue_depth",
            "Messages in a queue: scheduled, ready and in flight",
            m.queue_depth.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy reloads that took effect",
            m.reloads.clone(),
        );
        registry.register(
            "policy_reload_failures",
            "Policy reloads refused because the new policy did not load",
            m.reload_failures.clone(),
        );
        registry.register(
            "policy_epoch",
            "Config epoch of the running policy",
            m.epoch.clone(),
        );
        m.epoch.set(1);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
