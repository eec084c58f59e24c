//! Bad input gets a clear error that says what is wrong and where.

use crate::harness::*;
use std::process::Command;

fn check(policy: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("check")
        .arg("--policy")
        .arg(policy)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_accepts_the_seed_and_names_file_and_line_of_errors() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.lua");
    std::fs::write(&seed, crate::seed_policy()).unwrap();
    let (ok, text) = check(&seed);
    assert!(ok, "{text}");

    let broken = dir.path().join("broken.lua");
    std::fs::write(
        &broken,
        "kumo.on('init', function()\n  local x = = 1\nend)\n",
    )
    .unwrap();
    let (ok, text) = check(&broken);
    assert!(!ok);
    assert!(text.contains(&format!("{}:2:", broken.display())), "{text}");

    // The relay refuses to start on it, with the same location.
    let out = Command::new(BIN)
        .args(["relay", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("spool"))
        .arg("--policy")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2:", broken.display())), "{err}");

    // Errors raised while running the policy, and in init, are located too.
    let runtime = dir.path().join("runtime.lua");
    std::fs::write(&runtime, "\n\nkumo.on('init', function()\n  kumo.start_http_listener { listen = '127.0.0.1:0', bogus = 1 }\nend)\n").unwrap();
    let (ok, text) = check(&runtime);
    assert!(!ok);
    assert!(text.contains("bogus") && text.contains(":4:"), "{text}");

    // What the relay would refuse at start, check refuses too (it said valid).
    let no_cert = dir.path().join("no_cert.lua");
    std::fs::write(&no_cert, "kumo.on('init', function()\n  kumo.start_http_listener { listen = '127.0.0.1:0', use_tls = true }\nend)\n").unwrap();
    let (ok, text) = check(&no_cert);
    assert!(!ok, "{text}");
    assert!(text.contains("use_tls needs tls_certificate"), "{text}");
    let smtp = dir.path().join("smtp_relay_hosts.lua");
    std::fs::write(&smtp, "kumo.on('init', function()\n  kumo.start_http_listener { listen = '127.0.0.1:0' }\n  kumo.start_esmtp_listener { listen = '127.0.0.1:0', relay_hosts = { 'not-a-net' } }\nend)\n").unwrap();
    let (ok, text) = check(&smtp);
    assert!(!ok && text.contains("relay_hosts"), "{text}");

    // An egress path key KumoMTA has and the relay lacks: found by check,
    // not by the first message (a 451 at reception).
    let egress = dir.path().join("egress.lua");
    std::fs::write(&egress, "kumo.on('init', function()\n  kumo.start_http_listener { listen = '127.0.0.1:0' }\nend)\nkumo.on('get_egress_path_config', function(domain, source, site)\n  return kumo.make_egress_path { enable_tls = 'Required' }\nend)\n").unwrap();
    let (ok, text) = check(&egress);
    assert!(!ok, "{text}");
    assert!(
        text.contains("enable_tls") && text.contains("egress.lua:5"),
        "{text}"
    );

    let twice = dir.path().join("twice.lua");
    std::fs::write(
        &twice,
        "kumo.on('make.x', function() end)\nkumo.on('make.x', function() end)\n",
    )
    .unwrap();
    let (ok, text) = check(&twice);
    assert!(!ok);
    assert!(
        text.contains("twice.lua:1") && text.contains("twice.lua:2"),
        "{text}"
    );

    let unsupported = dir.path().join("dkim.lua");
    std::fs::write(
        &unsupported,
        "local signer = kumo.dkim.rsa_sha256_signer {}\n",
    )
    .unwrap();
    let (ok, text) = check(&unsupported);
    assert!(!ok);
    assert!(
        text.contains("kumo.dkim is not provided by amqp-relay"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("seed.lua");
    std::fs::write(&policy, crate::seed_policy()).unwrap();
    let relay = Relay::start(&policy, &dir.path().join("spool"));
    let live = reqwest::get(relay.url("/api/check-liveness/v1"))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    let (status, resp) = relay.inject_raw("{\"envelope_sender\": ").await;
    assert_eq!(status, 400);
    assert!(resp["error"].as_str().unwrap().contains("EOF"), "{resp}");

    let (status, resp) = relay
        .inject_raw(r#"{"envelope_sender": "a@b", "content": "x"}"#)
        .await;
    assert_eq!(status, 400);
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .contains("missing field `recipients`"),
        "{resp}"
    );

    let (status, resp) = relay
        .inject_raw(r#"{"envelope_sender": "a@b", "content": "x", "recipients": [{"email": "r@amqp"}], "colour": 1}"#)
        .await;
    assert_eq!(status, 400);
    assert!(resp["error"].as_str().unwrap().contains("colour"), "{resp}");

    let (status, resp) = relay
        .inject_raw(
            r#"{"envelope_sender": "a@b", "content": 7, "recipients": [{"email": "r@amqp"}]}"#,
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .contains("content must be the full message as a string or a builder object"),
        "{resp}"
    );

    let (status, resp) = relay
        .inject_raw(r#"{"envelope_sender": "a@b", "content": "x", "recipients": [{"email": "no-at-sign"}]}"#)
        .await;
    assert_eq!(status, 400);
    // Checked before anything is built, as SMTP checks RCPT: the request fails.
    let error = resp["error"].as_str().unwrap();
    assert!(
        error.contains("recipients[0].email \"no-at-sign\"") && error.contains("local@domain"),
        "{resp}"
    );

    assert_eq!(
        relay.metric("amqp_relay_received_total").await,
        0.0,
        "nothing was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_queue_config_key_is_named_and_nothing_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    // Built for every domain: the relay refuses to start, naming key and line.
    let always = dir.path().join("typo.lua");
    std::fs::write(
        &always,
        "kumo.on('init', function() kumo.start_http_listener { listen = '127.0.0.1:0' } end)\n\
         kumo.on('get_queue_config', function(domain)\n  return kumo.make_queue_config { retry_intreval = '1m' }\nend)\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["relay", "--data-dir"])
        .arg(dir.path().join("spool-always"))
        .arg("--policy")
        .arg(&always)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("retry_intreval") && err.contains("typo.lua:3"),
        "{err}"
    );

    // Built only for the domain mail goes to: met at reception, a temporary
    // refusal naming key and line.
    let policy = dir.path().join("conditional.lua");
    std::fs::write(
        &policy,
        "kumo.on('get_queue_config', function(domain)\n  if domain == 'amqp' then return kumo.make_queue_config { retry_intreval = '1m' } end\nend)\n",
    )
    .unwrap();
    let relay = Relay::start(&policy, &dir.path().join("spool"));
    let (status, resp) = relay.inject("s@x.com", &["r@amqp".to_string()], "x").await;
    assert_eq!(status, 503, "temporary: fixing the policy makes it work");
    let err = resp["errors"][0].as_str().unwrap();
    assert!(
        err.contains("retry_intreval") && err.contains("conditional.lua:2"),
        "{err}"
    );
    assert_eq!(relay.metric("amqp_relay_received_total").await, 0.0);
}

#[test]
fn render_reports_rejected_routes_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("routes.yaml");
    std::fs::write(
        &f,
        "apiVersion: amqprelay.io/v1alpha1\nkind: AmqpRoute\nmetadata: {name: good}\nspec:\n  match: {domain: a}\n  broker: {url: 'amqp://rabbit/'}\n  publish: {routingKey: k}\n---\napiVersion: amqprelay.io/v1alpha1\nkind: AmqpRoute\nmetadata: {name: leaky}\nspec:\n  match: {domain: b}\n  broker: {url: 'amqp://user:hunter2@rabbit/'}\n  publish: {routingKey: k}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["render", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "route default/leaky: rejected (Invalid): broker.url must not hold credentials"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("route default/good: accepted"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("kind: ConfigMap") && !stdout.contains("hunter2"),
        "{stdout}"
    );

    // Unreadable documents are named by file, place, route and field; the
    // readable routes in the same and other files are still rendered.
    let garbage = dir.path().join("garbage.yaml");
    std::fs::write(&garbage, "kind: AmqpRoute\nspec: [1, 2\n").unwrap();
    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: amqprelay.io/v1alpha1\nkind: AmqpRoute\nmetadata: {name: bad-port, namespace: team}\nspec:\n  match: {domain: c}\n  broker: {url: 'amqp://rabbit/'}\n  publish: {routingKey: k}\n  delivery: {connectionLimit: lots}\n---\napiVersion: amqprelay.io/v1alpha1\nkind: AmqpRoute\nmetadata: {name: fine, namespace: team}\nspec:\n  match: {domain: d}\n  broker: {url: 'amqp://rabbit/'}\n  publish: {routingKey: k}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["render", "-f"])
        .arg(&garbage)
        .arg("-f")
        .arg(&typo)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("garbage.yaml, document 1"),
        "the error names the file: {stderr}"
    );
    assert!(
        stderr.contains(
            "typo.yaml, document 1: AmqpRoute team/bad-port: spec.delivery.connectionLimit:"
        ),
        "the error names the route and the field: {stderr}"
    );
    assert!(stderr.contains("route team/fine: accepted"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("kind: ConfigMap") && stdout.contains("team/fine"),
        "the readable route is rendered: {stdout}"
    );
}
