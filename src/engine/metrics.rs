//! Prometheus metrics of the relay.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A histogram of durations from 100 µs to about 3 s in doublings: a send
/// (publish and confirm) or a spool commit (its fsync included), so the two
/// read side by side.
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

pub struct Metrics {
    registry: Registry,
    /// Metrics named as KumoMTA names them (no `amqp_relay_` prefix).
    kumo: Registry,
    pub received: Counter,
    pub delivered: Counter,
    pub transient: Counter,
    pub bounced: Counter,
    pub expired: Counter,
    pub queue_depth: Family<QueueLabel, Gauge>,
    pub held: Family<QueueLabel, Gauge>,
    pub spooled: Gauge,
    pub active: Gauge,
    pub queues: Gauge,
    pub tasks: Gauge,
    pub reloads: Counter,
    pub reload_failures: Counter,
    pub epoch: Gauge,
    pub routes_from_mount: Gauge,
    pub draining: Gauge,
    pub ready: Gauge,
    /// Seconds per call of a sender's `send`: for a publishing policy, the
    /// publish and its confirm.
    pub send_seconds: Histogram,
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
            held: Family::default(),
            spooled: Gauge::default(),
            active: Gauge::default(),
            queues: Gauge::default(),
            tasks: Gauge::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            epoch: Gauge::default(),
            routes_from_mount: Gauge::default(),
            draining: Gauge::default(),
            ready: Gauge::default(),
            send_seconds: seconds_histogram(),
            registry: Registry::default(),
            kumo: Registry::default(),
        };
        let mut kumo = Registry::default();
        kumo.register(
            "user_lua_latency",
            "how long something user-defined took to run in your lua policy",
            crate::policy::USER_LUA_LATENCY.clone(),
        );
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
            "Messages of a queue in memory: ready and in flight",
            m.queue_depth.clone(),
        );
        registry.register(
            "held_messages",
            "Spooled messages of a queue the running policy cannot deliver now (held, never bounced)",
            m.held.clone(),
        );
        registry.register(
            "spooled_messages",
            "Messages in the spool",
            m.spooled.clone(),
        );
        use super::spool::stats as spool;
        registry.register(
            "spool_commit_seconds",
            "Time of each spool write transaction, its fsync included (acknowledgements wait for one)",
            spool::COMMIT_SECONDS.clone(),
        );
        registry.register(
            "spool_commit_failures",
            "Spool write transactions that failed (a full disk, an I/O error)",
            spool::COMMIT_FAILURES.clone(),
        );
        registry.register(
            "delivery_send_seconds",
            "Time of each call of a delivery session's send (for a publishing policy: the publish and its confirm)",
            m.send_seconds.clone(),
        );
        registry.register(
            "queues",
            "Queues in memory (idle ones are dropped)",
            m.queues.clone(),
        );
        registry.register(
            "tasks",
            "Asynchronous tasks alive in the relay",
            m.tasks.clone(),
        );
        registry.register(
            "active_messages",
            "Messages in memory (ready or being delivered); the rest wait on disk",
            m.active.clone(),
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
        registry.register(
            "routes_from_mount",
            "Sources of the routes (policy ConfigMap, routes Secret) served from their mounted copies because the Kubernetes API did not answer",
            m.routes_from_mount.clone(),
        );
        use crate::policy::amqp::metrics as broker;
        registry.register(
            "broker_connections_opened",
            "Connections opened to each broker (climbs during a failover)",
            broker::CONNECTIONS_OPENED.clone(),
        );
        registry.register(
            "broker_channels_retired",
            "Channels set aside after the broker rejected a publish on them",
            broker::CHANNELS_RETIRED.clone(),
        );
        registry.register(
            "broker_nacks",
            "Publishes the broker rejected (nack)",
            broker::NACKS.clone(),
        );
        registry.register(
            "draining",
            "1 while the relay, stopping, delivers what its spool holds and takes nothing new",
            m.draining.clone(),
        );
        registry.register(
            "ready",
            "1 when /readyz says ready: reception open and the routes read",
            m.ready.clone(),
        );
        m.epoch.set(1);
        Metrics {
            registry,
            kumo,
            ..m
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &self.kumo);
        let _ = encode_eof(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lua_timers_appear_under_kumomtas_name() {
        let m = super::Metrics::default();
        crate::policy::USER_LUA_LATENCY
            .get_or_create(&crate::policy::TimerLabel {
                label: "metrics-test".into(),
            })
            .observe(0.2);
        let out = m.encode();
        assert!(
            out.contains("user_lua_latency_bucket{le=\"0.25\",label=\"metrics-test\"} 1")
                && out.contains("amqp_relay_received_total")
                && out.trim_end().ends_with("# EOF")
                && out.matches("# EOF").count() == 1,
            "{out}"
        );
    }

    /// Every relay metric the chart's alerts and dashboard query is in what
    /// /metrics serves (`Metrics::encode`), suffixes of counters and
    /// histograms included.
    #[test]
    fn the_charts_queries_use_only_exported_relay_metrics() {
        use crate::policy::amqp::metrics as broker;
        let m = super::Metrics::default();
        // Families show only once they have a member.
        let q = super::QueueLabel {
            queue: "t@amqp".into(),
        };
        m.queue_depth.get_or_create(&q).set(1);
        m.held.get_or_create(&q).set(1);
        let b = broker::label("amqp://rabbit:5672");
        for family in [
            &broker::CONNECTIONS_OPENED,
            &broker::CHANNELS_RETIRED,
            &broker::NACKS,
        ] {
            family.get_or_create(&b).inc();
        }
        crate::policy::USER_LUA_LATENCY
            .get_or_create(&crate::policy::TimerLabel {
                label: "chart-test".into(),
            })
            .observe(0.1);
        crate::test_support::assert_chart_queries_exported(
            &m.encode(),
            |w| {
                (w.starts_with("amqp_relay_") && !w.starts_with("amqp_relay_operator_"))
                    || w.starts_with("user_lua_latency")
            },
            18,
        );
    }
}
