//! Live policy: reloads under a stream of messages lose nothing, take effect
//! for everything published afterwards, and a broken policy never does.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::AMQPValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

fn version(d: &lapin::message::Delivery) -> i64 {
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("version").cloned())
    {
        Some(AMQPValue::LongLongInt(v)) => v,
        other => panic!("version header: {other:?}"),
    }
}

async fn bump(relay: &Relay) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(relay.url("/api/admin/bump-config-epoch"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_nothing_and_broken_ones_never_apply() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_bound(&conn, "reload-x", "reload-q", &["rk-0", "rk-1", "rk-2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    let write = |v: &str| {
        write_policy(
            dir.path(),
            "policy.lua",
            &crate::policy_template("versioned.lua"),
            &[("VERSION", v), ("URL", &url)],
        )
    };
    let policy = write("0");
    let relay = Arc::new(Relay::start_with_env(
        &policy,
        &dir.path().join("spool"),
        &[("AMQP_RELAY_WATCH_POLICY", "false")],
    ));

    // A continuous stream: one message per request, numbered.
    let seq = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (relay, seq, stop) = (relay.clone(), seq.clone(), stop.clone());
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let n = seq.fetch_add(1, Ordering::AcqRel);
                let (status, resp) = relay
                    .inject("s@x.com", &[format!("m{n}@amqp")], &format!("{n}"))
                    .await;
                assert_eq!(status, 200, "message {n}: {resp}");
                accepted.push(n);
            }
            accepted
        })
    };

    // After reload k returns, messages from `from_seq[k]` on must follow version k or later.
    let mut applied: Vec<(usize, i64)> = Vec::new();
    let mut broken_versions = Vec::new();
    let mut last_epoch = 1;
    for v in 1..=20i64 {
        if v == 7 || v == 14 {
            std::fs::write(
                &policy,
                format!("-- version {v}, broken\nkumo.on('get_queue_config', function(\n"),
            )
            .unwrap();
            let (status, resp) = bump(&relay).await;
            assert_eq!(status, 422, "{resp}");
            assert!(
                resp["error"].as_str().unwrap().contains("policy.lua:"),
                "names file and line: {resp}"
            );
            broken_versions.push(v);
            // Extra domain follows the last good version meanwhile.
        } else {
            write(&v.to_string());
            let (status, resp) = bump(&relay).await;
            assert_eq!(status, 200, "{resp}");
            let epoch = resp["epoch"].as_u64().unwrap();
            assert_eq!(epoch, last_epoch + 1, "{resp}");
            last_epoch = epoch;
            applied.push((seq.load(Ordering::Acquire), v));
            // Routes added and removed: 'extra' is routed in even versions only.
            let (status, _) = relay
                .inject("s@x.com", &["e@extra".to_string()], &format!("extra {v}"))
                .await;
            assert_eq!(status, if v % 2 == 0 { 200 } else { 400 }, "version {v}");
        }
        // Let the stream run on each version.
        let mark = seq.load(Ordering::Acquire);
        while seq.load(Ordering::Acquire) < mark + 20 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::Release);
    let accepted = stream.await.unwrap();
    assert!(
        relay
            .metric("amqp_relay_policy_reload_failures_total")
            .await
            >= 2.0
    );
    assert_eq!(relay.metric("amqp_relay_policy_reloads_total").await, 18.0);

    let extras = applied.iter().filter(|(_, v)| v % 2 == 0).count();
    let want = accepted.len() + extras;
    let got = consume(&conn, "reload-q", want, Duration::from_secs(60)).await;
    assert_eq!(
        got.len(),
        want,
        "no message lost; relay log:\n{}",
        relay.log_text()
    );
    let mut by_seq: HashMap<usize, i64> = HashMap::new();
    for d in &got {
        let body = String::from_utf8(d.data.clone()).unwrap();
        let v = version(d);
        assert!(
            !broken_versions.contains(&v),
            "a broken version published: {v}"
        );
        if let Ok(n) = body.parse::<usize>() {
            assert!(by_seq.insert(n, v).is_none(), "message {n} twice");
        }
    }
    assert_eq!(by_seq.len(), accepted.len());
    for (from, v) in &applied {
        for (n, got_v) in &by_seq {
            if n >= from {
                assert!(
                    got_v >= v,
                    "message {n}, injected after version {v} was live, went out as version {got_v}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_and_configmap_style_symlink_swaps_reload_by_themselves() {
    let broker = Broker::shared();
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    // A kubelet-style mount: routes.lua -> ..data/routes.lua, ..data -> ..v1.
    let mount = dir.path().join("mount");
    let v = |n: &str| {
        let d = mount.join(format!("..{n}"));
        std::fs::create_dir_all(&d).unwrap();
        write_policy(
            &d,
            "routes.lua",
            &crate::policy_template("versioned.lua"),
            &[("VERSION", n), ("URL", &url)],
        );
    };
    v("1");
    std::os::unix::fs::symlink("..1", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.lua", mount.join("routes.lua")).unwrap();
    let base = dir.path().join("base.lua");
    std::fs::write(
        &base,
        format!(
            "package.path = '{}/?.lua;' .. package.path\nrequire 'routes'\n",
            mount.display()
        ),
    )
    .unwrap();
    let relay = Relay::start(&base, &dir.path().join("spool"));
    let report = || async {
        reqwest::get(relay.url("/api/policy"))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let first = report().await;
    assert_eq!(first["epoch"], 1);
    assert!(
        first["files"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.ends_with("routes.lua")),
        "{first}"
    );

    // Swap the ..data symlink atomically, as the kubelet does.
    v("2");
    std::os::unix::fs::symlink("..2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    relay
        .await_metric("amqp_relay_policy_epoch", 2.0, Duration::from_secs(10))
        .await;
    assert_ne!(report().await["hash"], first["hash"]);

    // A broken edit of the base file is refused and reported; the relay stays ready.
    std::fs::write(&base, "this is not lua\n").unwrap();
    relay
        .await_metric(
            "amqp_relay_policy_reload_failures_total",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    let now = report().await;
    assert_eq!(now["epoch"], 2);
    assert!(
        now["last_error"]["error"]
            .as_str()
            .unwrap()
            .contains("base.lua:1:"),
        "{now}"
    );
    let ready = reqwest::get(relay.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("policy reload failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_changes_arrive_through_the_api_before_the_files_change() {
    use crate::fake_kube::FakeKube;
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_bound(&conn, "reload-x", "api-reload-q", &["rk-2", "rk-0"]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    let policy_text = |v: &str| {
        let d = tempfile::tempdir().unwrap();
        let p = write_policy(
            d.path(),
            "routes.lua",
            &crate::policy_template("versioned.lua"),
            &[("VERSION", v), ("URL", &url)],
        );
        std::fs::read_to_string(p).unwrap()
    };
    // The mount holds version 1 and never changes in this test.
    let mount = dir.path().join("mount");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(mount.join("routes.lua"), policy_text("1")).unwrap();
    let base = dir.path().join("base.lua");
    std::fs::write(
        &base,
        format!(
            "package.path = '{}/?.lua;' .. package.path\nrequire 'routes'\n",
            mount.display()
        ),
    )
    .unwrap();
    let kube = FakeKube::start(
        dir.path(),
        "mail",
        "edge-policy",
        [("routes.lua".to_string(), policy_text("1"))].into(),
    )
    .await;

    let mut cmd_env = vec![("KUBECONFIG", kube.kubeconfig.to_str().unwrap().to_owned())];
    cmd_env.push(("AMQP_RELAY_POLICY_CONFIGMAP", "mail/edge-policy".into()));
    cmd_env.push((
        "AMQP_RELAY_POLICY_CONFIGMAP_DIR",
        mount.display().to_string(),
    ));
    let env: Vec<(&str, &str)> = cmd_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let relay = Relay::start_with_env(&base, &dir.path().join("spool"), &env);
    // The watch is established once the relay's client is listening.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while kube.watchers() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never watched the ConfigMap:\n{}",
            relay.log_text()
        );
        tokio::task::yield_now().await;
    }
    kube.update([("routes.lua".to_string(), policy_text("2"))].into());
    relay
        .await_metric("amqp_relay_policy_epoch", 2.0, Duration::from_secs(10))
        .await;
    let (status, _) = relay
        .inject("s@x.com", &["api@amqp".to_string()], "via api")
        .await;
    assert_eq!(status, 200);
    let got = consume(&conn, "api-reload-q", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "relay log:\n{}", relay.log_text());
    assert_eq!(
        version(&got[0]),
        2,
        "published by the version that came through the API"
    );

    // The API server restarts, and before it answers again a change lands
    // and its history is compacted past the relay's resourceVersion: the
    // relay's re-watch gets 410 Gone, lists again and runs version 3.
    kube.api.pause(true);
    kube.api.end_watches();
    kube.update([("routes.lua".to_string(), policy_text("3"))].into());
    kube.api.compact();
    kube.api.pause(false);
    relay
        .await_metric("amqp_relay_policy_epoch", 3.0, Duration::from_secs(30))
        .await;
    let (status, _) = relay
        .inject("s@x.com", &["api@amqp".to_string()], "after 410")
        .await;
    assert_eq!(status, 200);
    let got = consume(&conn, "api-reload-q", 1, Duration::from_secs(30)).await;
    assert_eq!(version(&got[0]), 3, "relay log:\n{}", relay.log_text());
    let lists = kube
        .api
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, p)| p.contains("/configmaps?") && !p.contains("watch="))
        .count();
    assert_eq!(lists, 2, "one list at start, one after the 410");
}
