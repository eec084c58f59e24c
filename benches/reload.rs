//! Reload latency: from a policy file change to the relay running the new
//! version (a new config epoch, seen on /api/policy), through the file watch.
//! Target: <= 200 ms. Baseline in the same run: loading that policy
//! in-process, the part no watcher can avoid.
//!
//! Run: `cargo bench --bench reload`

use amqp_relay::policy::Policy;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHANGES: usize = 20;

fn policy(version: usize) -> String {
    // A policy of realistic size: the operator's rendering of 200 routes would
    // be larger; this one has a handful of handlers and a data table.
    let mut s = String::from("local ROUTES = {\n");
    for i in 0..200 {
        s.push_str(&format!(
            "  {{ domain = 'd{i}.example', routing_key = 'rk.{i}.{version}' }},\n"
        ));
    }
    s.push_str("}\nkumo.on('get_queue_config', function(domain)\n  return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make.x' } } }\nend)\n");
    s.push_str("kumo.on('make.x', function() return { send = function() return '250' end } end)\n");
    s
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.lua");
    std::fs::write(&path, policy(0)).unwrap();

    let mut loads = Vec::new();
    for _ in 0..CHANGES {
        let t = Instant::now();
        Policy::load(&path, Default::default()).unwrap();
        loads.push(t.elapsed());
    }

    let mut relay = Command::new(env!("CARGO_BIN_EXE_amqp-relay"))
        .args(["relay", "--http-listen", "127.0.0.1:0", "--policy"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("spool"))
        .env("RUST_LOG", "warn,amqp_relay::listeners=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = BufReader::new(relay.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("http listener on ")
                .nth(1)
                .map(|a| a.trim().to_owned())
        })
        .expect("the relay's http listener");
    let client = reqwest::Client::new();
    let epoch = || async {
        client
            .get(format!("http://{addr}/api/policy"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()["epoch"]
            .as_u64()
            .unwrap()
    };
    let mut reloads = Vec::new();
    for v in 1..=CHANGES {
        let before = epoch().await;
        let t = Instant::now();
        std::fs::write(&path, policy(v)).unwrap();
        while epoch().await == before {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no reload after 10 s"
            );
        }
        reloads.push(t.elapsed());
    }
    let _ = relay.kill();
    let _ = relay.wait();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p100) = (percentile(&mut reloads, 0.5), percentile(&mut reloads, 1.0));
    println!(
        "reload via file watch, {CHANGES} changes: p50 {:.1} ms, max {:.1} ms (target <= 200 ms) -> {}",
        ms(p50),
        ms(p100),
        if p100 <= Duration::from_millis(200) {
            "within target"
        } else {
            "OVER target"
        }
    );
    println!(
        "baseline: loading the same policy in-process: p50 {:.1} ms (same run)",
        ms(percentile(&mut loads, 0.5))
    );
}
