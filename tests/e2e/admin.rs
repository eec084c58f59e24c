//! Admin over HTTP: queue summary, suspend and resume, bounce.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use std::time::Duration;

async fn call(
    relay: &Relay,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut req = c.request(method, relay.url(path));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn waiting(summary: &Value, queue: &str) -> (u64, bool) {
    let q = summary["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == queue)
        .unwrap_or_else(|| panic!("{queue} in {summary}"));
    (
        q["scheduled"].as_u64().unwrap() + q["ready"].as_u64().unwrap(),
        q["suspended"].as_bool().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_summarise_bounce_resume() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "admin-q", FieldTable::default()).await;
    let setup = Setup::new(
        &crate::policy_template("modes.lua"),
        &[
            ("QUEUE", "admin-q"),
            ("URL", &broker.url()),
            ("MAX_AGE", "1h"),
        ],
    );
    let relay = setup.relay().start();
    use reqwest::Method;
    let (s, amqp) = call(
        &relay,
        Method::POST,
        "/api/admin/suspend/v1",
        Some(json!({"domain": "amqp", "reason": "maintenance"})),
    )
    .await;
    assert_eq!(s, 200, "{amqp}");
    let (s, _) = call(
        &relay,
        Method::POST,
        "/api/admin/suspend/v1",
        Some(json!({"domain": "other", "reason": "maintenance"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, list) = call(&relay, Method::GET, "/api/admin/suspend/v1", None).await;
    assert_eq!(list["suspensions"].as_array().unwrap().len(), 2);

    assert_eq!(
        relay
            .inject("s@x.com", &recipients("a", "amqp", 5), "to amqp")
            .await
            .0,
        200
    );
    assert_eq!(
        relay
            .inject("s@x.com", &recipients("o", "other", 3), "to other")
            .await
            .0,
        200
    );
    let (_, summary) = call(&relay, Method::GET, "/api/admin/queue-summary/v1", None).await;
    assert_eq!(waiting(&summary, "amqp"), (5, true), "{summary}");
    assert_eq!(waiting(&summary, "other"), (3, true), "{summary}");
    assert_eq!(relay.metric("amqp_relay_delivered_total").await, 0.0);

    let (s, report) = call(
        &relay,
        Method::POST,
        "/api/admin/bounce/v1",
        Some(json!({"domain": "other", "reason": "unwanted"})),
    )
    .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["total_bounced"], 3);
    assert_eq!(report["bounced"]["other"], 3);
    assert_eq!(relay.metric("amqp_relay_bounced_total").await, 3.0);

    let id = amqp["id"].as_str().unwrap();
    let (s, _) = call(
        &relay,
        Method::DELETE,
        "/api/admin/suspend/v1",
        Some(json!({"id": id})),
    )
    .await;
    assert_eq!(s, 200);
    let got = consume(&conn, "admin-q", 5, Duration::from_secs(30)).await;
    assert_eq!(
        got.len(),
        5,
        "resumed queue delivers; log:\n{}",
        relay.log_text()
    );
    assert!(got.iter().all(|d| d.data == b"to amqp"));

    let (s, _) = call(
        &relay,
        Method::DELETE,
        "/api/admin/suspend/v1",
        Some(json!({"id": "nope"})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, err) = call(
        &relay,
        Method::POST,
        "/api/admin/bounce/v1",
        Some(json!({"domain": "amqp"})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(err["error"].as_str().unwrap().contains("reason"), "{err}");
}

/// `amqp-relay admin …` as a person runs it; its stdout, stderr and success.
fn admin_cli(relay: &Relay, auth: &[&str], args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("admin")
        .arg("--endpoint")
        .arg(format!("http://{}", relay.http))
        .args(auth)
        .args(args)
        .env_remove("AMQP_RELAY_ADMIN_CREDENTIALS")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_steers_a_running_relay() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "admin-cli-q", FieldTable::default()).await;
    let setup = Setup::new(
        &crate::policy_template("admin_cli.lua"),
        &[("QUEUE", "admin-cli-q"), ("URL", &broker.url())],
    );
    let relay = setup.relay().init_listeners(1, 0).start();
    let password_file = setup.path().join("admin-password");
    std::fs::write(&password_file, "admin-secret\n").unwrap();
    let pw = password_file.to_str().unwrap();
    let admin = ["--user", "admin", "--password-file", pw];

    // Refusals say what to do, and exit non-zero.
    let (ok, _, err) = admin_cli(&relay, &[], &["queue-summary"]);
    assert!(
        !ok && err.contains("401") && err.contains("--user"),
        "{err}"
    );
    let (ok, _, err) = admin_cli(
        &relay,
        &["--user", "inject", "--password", "in-secret"],
        &["queue-summary"],
    );
    assert!(
        !ok && err.contains("403") && err.contains("admin_users"),
        "{err}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let out = std::process::Command::new(BIN)
        .args([
            "admin",
            "--endpoint",
            &format!("http://{gone}"),
            "queue-summary",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("cannot reach the relay at http://{gone}")),
        "{err}"
    );
    let (ok, _, err) = admin_cli(&relay, &admin, &["suspend", "--reason", "x"]);
    assert!(
        !ok && err.contains("no criteria"),
        "the API's own error: {err}"
    );

    // Suspend, fill, look, bounce, resume.
    let (ok, out, err) = admin_cli(
        &relay,
        &admin,
        &["suspend", "--domain", "amqp", "--reason", "maintenance"],
    );
    assert!(ok, "{err}");
    let id = out
        .trim()
        .strip_prefix("suspended: id ")
        .unwrap()
        .to_owned();
    let inject = reqwest::Client::new();
    for i in 0..3 {
        let r = inject
            .post(relay.url("/api/inject/v1"))
            .basic_auth("inject", Some("in-secret"))
            .json(
                &json!({"envelope_sender": "s@x.com", "content": format!("Subject: {i}\r\n\r\nx"),
                "recipients": [{"email": format!("r{i}@amqp")}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (ok, table, err) = admin_cli(&relay, &admin, &["queue-summary"]);
    assert!(ok, "{err}");
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("QUEUE") && header.contains("SUSPENDED"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("amqp "))
        .expect(&table);
    assert!(row.ends_with("yes"), "suspended: {table}");
    let (ok, json_out, _) = admin_cli(&relay, &admin, &["--json", "queue-summary"]);
    assert!(ok);
    let summary: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(waiting(&summary, "amqp"), (3, true), "{summary}");
    let (_, list, _) = admin_cli(&relay, &admin, &["suspensions"]);
    assert!(list.contains(&id) && list.contains("maintenance"), "{list}");

    let (ok, out, err) = admin_cli(
        &relay,
        &admin,
        &["bounce", "--domain", "amqp", "--reason", "not wanted"],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("bounced 3 message(s)"), "{out}");
    let (ok, out, _) = admin_cli(&relay, &admin, &["resume", &id]);
    assert!(ok && out.contains(&format!("resumed {id}")), "{out}");
    let (ok, _, err) = admin_cli(&relay, &admin, &["resume", &id]);
    assert!(
        !ok && err.contains("404") && err.contains("no suspension"),
        "{err}"
    );

    // The chart's way: a mounted credentials directory named by the environment.
    let creds = setup.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("username"), "admin").unwrap();
    std::fs::write(creds.join("password"), "admin-secret").unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "admin",
            "--endpoint",
            &format!("http://{}", relay.http),
            "bump-epoch",
        ])
        .env("AMQP_RELAY_ADMIN_CREDENTIALS", &creds)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("epoch "),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, policy, _) = admin_cli(&relay, &admin, &["--json", "policy"]);
    assert!(ok);
    let policy: Value = serde_json::from_str(&policy).unwrap();
    assert!(policy["hash"].is_string(), "{policy}");
    assert_eq!(
        waiting(&admin_summary(&relay, &admin), "amqp").0,
        0,
        "nothing left"
    );
}

fn admin_summary(relay: &Relay, auth: &[&str]) -> Value {
    let (ok, out, err) = admin_cli(relay, auth, &["--json", "queue-summary"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}
