//! Reload latency: from a policy file change to the relay running the new
//! version (a new config epoch, seen on /api/policy), through the file watch.
//! Target: <= 200 ms. And through the Kubernetes API watch of the policy
//! ConfigMap (a fake API server over HTTP, the relay's real kube client):
//! target <= 1 s. Baseline in the same run: loading that policy in-process,
//! the part no watcher can avoid.
//!
//! Run: `cargo bench --bench reload`

#[path = "../tests/e2e/fake_kube.rs"]
#[allow(dead_code)] // the tests use more of it
mod fake_kube;
#[path = "common/relay_log.rs"]
mod relay_log;

use amqp_relay::policy::Policy;
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

    let reloads = measure(&dir, &path, None).await;

    // Through the API: the mount never changes, the ConfigMap does.
    let mount = dir.path().join("mount");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(mount.join("routes.lua"), policy(0)).unwrap();
    let base = dir.path().join("base.lua");
    std::fs::write(
        &base,
        format!(
            "package.path = '{}/?.lua;' .. package.path\nrequire 'routes'\n",
            mount.display()
        ),
    )
    .unwrap();
    let kube = fake_kube::FakeKube::start(
        dir.path(),
        "mail",
        "edge-policy",
        [("routes.lua".to_string(), policy(0))].into(),
    )
    .await;
    let api = measure(&dir, &base, Some((&kube, &mount))).await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let report = |what: &str, mut v: Vec<Duration>, target: Duration| {
        let (p50, max) = (percentile(&mut v, 0.5), percentile(&mut v, 1.0));
        println!(
            "{what}, {CHANGES} changes: p50 {:.1} ms, max {:.1} ms (target <= {} ms) -> {}",
            ms(p50),
            ms(max),
            target.as_millis(),
            if max <= target {
                "within target"
            } else {
                "OVER target"
            }
        );
    };
    report("reload via file watch", reloads, Duration::from_millis(200));
    report("reload via API watch ", api, Duration::from_secs(1));
    println!(
        "baseline: loading the same policy in-process: p50 {:.1} ms (same run)",
        ms(percentile(&mut loads, 0.5))
    );
}

async fn measure(
    dir: &tempfile::TempDir,
    path: &std::path::Path,
    api: Option<(&fake_kube::FakeKube, &std::path::Path)>,
) -> Vec<Duration> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amqp-relay"));
    cmd.args(["relay", "--http-listen", "127.0.0.1:0", "--policy"])
        .arg(path)
        .arg("--data-dir")
        .arg(dir.path().join(format!("spool-{}", api.is_some())))
        .env("RUST_LOG", "warn,amqp_relay::listeners=info")
        .stderr(Stdio::piped());
    if let Some((kube, mount)) = api {
        cmd.env("KUBECONFIG", &kube.kubeconfig)
            .env("AMQP_RELAY_POLICY_CONFIGMAP", "mail/edge-policy")
            .env("AMQP_RELAY_POLICY_CONFIGMAP_DIR", mount)
            .env("AMQP_RELAY_WATCH_POLICY", "false");
    }
    let mut relay = cmd.spawn().unwrap();
    let addr = relay_log::listener_addr(&mut relay, "http");
    if let Some((kube, _)) = api {
        let t = Instant::now();
        while kube.watchers() == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the relay never watched the ConfigMap"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
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
    let mut out = Vec::new();
    for v in 1..=CHANGES {
        let before = epoch().await;
        let t = Instant::now();
        match api {
            Some((kube, _)) => kube.update([("routes.lua".to_string(), policy(v))].into()),
            None => std::fs::write(path, policy(v)).unwrap(),
        }
        while epoch().await == before {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no reload after 10 s"
            );
        }
        out.push(t.elapsed());
    }
    let _ = relay.kill();
    let _ = relay.wait();
    out
}
