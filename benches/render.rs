//! Rendering 1,000 AmqpRoutes into a policy (target ≤ 100 ms), and compiling
//! it in the engine, against a baseline measured in the same run: serialising
//! the same routes to JSON, which any renderer must at least match.
//!
//! Run: `cargo bench --bench render`

use amqp_relay::operator::crd::{AmqpRoute, AmqpRouteSpec};
use amqp_relay::operator::render::{DEFAULT_SECRETS_DIR, POLICY_KEY, render};
use amqp_relay::policy::Policy;
use std::time::{Duration, Instant};

fn routes(n: usize) -> Vec<AmqpRoute> {
    (0..n)
        .map(|i| {
            let spec: AmqpRouteSpec = serde_json::from_value(serde_json::json!({
                "match": {"domain": format!("d{i}.example"), "tenant": format!("t{}", i % 7)},
                "broker": {"url": "amqp://rabbit:5672/%2f"},
                "publish": {
                    "exchange": "events", "routingKey": format!("rk.{i}\"]]"),
                    "contentType": "application/json",
                    "headers": {"x-route": format!("r{i}"), "x-team": "mail"}
                },
                "delivery": {"retryInterval": "30s", "maxAge": "1d", "connectionLimit": 8}
            }))
            .unwrap();
            let mut r = AmqpRoute::new(&format!("route-{i}"), spec);
            r.metadata.namespace = Some(format!("ns{}", i % 10));
            r
        })
        .collect()
}

fn median(mut f: impl FnMut(), runs: usize) -> Duration {
    f(); // warm up
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[runs / 2]
}

fn main() {
    let rs = routes(1000);
    let baseline = median(
        || {
            std::hint::black_box(serde_json::to_string(&rs).unwrap());
        },
        21,
    );
    let mut policy = String::new();
    let rendering = median(
        || {
            let out = render(&rs, &[], DEFAULT_SECRETS_DIR);
            assert_eq!(out.accepted.len(), 1000);
            policy = out.policy;
        },
        21,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(POLICY_KEY);
    std::fs::write(&path, &policy).unwrap();
    let compiling = median(
        || {
            std::hint::black_box(Policy::load(&path, Default::default()).unwrap());
        },
        11,
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "render 1000 routes:           {:8.2} ms (median of 21; target <= 100 ms)",
        ms(rendering)
    );
    println!(
        "baseline: JSON of the routes: {:8.2} ms (same run)",
        ms(baseline)
    );
    println!(
        "render / baseline:            {:8.2}x",
        ms(rendering) / ms(baseline)
    );
    println!(
        "compile the rendered policy:  {:8.2} ms (median of 11; {} bytes of Lua)",
        ms(compiling),
        policy.len()
    );
    println!(
        "render + compile:             {:8.2} ms -> {}",
        ms(rendering + compiling),
        if rendering + compiling <= Duration::from_millis(100) {
            "within target"
        } else {
            "OVER target"
        }
    );
}
