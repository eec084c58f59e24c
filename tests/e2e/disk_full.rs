//! A full disk: new mail is refused with a reason; nothing already accepted
//! is lost; service resumes when space returns.

use crate::broker::{Broker, free_port};
use crate::harness::*;
use lapin::types::FieldTable;
use std::process::Command;
use std::time::Duration;

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "this test mounts a small tmpfs for the spool and needs root"
        );
        Tmpfs(dir.to_owned())
    }

    fn grow(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_refuses_then_recovers_and_loses_nothing() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "diskfull-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let fs = Tmpfs::mount(&spool, "3m");
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("modes.lua"),
        &[
            ("QUEUE", "diskfull-q"),
            ("URL", &broker.url()),
            ("MAX_AGE", "1h"),
        ],
    );
    // Nothing can be delivered, so everything stays in the spool.
    let nowhere = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let relay = Relay::start_with_env(&policy, &spool, &[("BROKER_URL", &nowhere)]);
    let body = format!("Subject: fill\r\n\r\n{}", "y".repeat(60 * 1024));
    let mut accepted = 0;
    let refusal = loop {
        let (status, resp) = relay
            .inject("s@x.com", &[format!("f{accepted}@amqp")], &body)
            .await;
        if status != 200 {
            break (status, resp);
        }
        accepted += 1;
        assert!(accepted < 1000, "a 3 MB spool never filled up");
    };
    assert!(accepted > 0);
    assert_eq!(refusal.0, 503, "{}", refusal.1);
    let reason = refusal.1["errors"][0].as_str().unwrap();
    assert!(
        reason.contains("452") && reason.contains("out of space"),
        "{reason}"
    );
    // Still serving, still refusing clearly while full.
    assert_eq!(
        reqwest::get(relay.url("/api/check-liveness/v1"))
            .await
            .unwrap()
            .status(),
        200
    );

    // Space returns: new mail is accepted again.
    fs.grow("64m");
    let (status, resp) = relay
        .inject("s@x.com", &[format!("f{accepted}@amqp")], &body)
        .await;
    assert_eq!(status, 200, "{resp}");
    accepted += 1;
    relay.kill9();

    // Everything accepted is still there and goes out once the broker is reachable.
    let relay = Relay::start(&policy, &spool);
    let got = consume(&conn, "diskfull-q", accepted, Duration::from_secs(60)).await;
    assert_eq!(got.len(), accepted, "relay log:\n{}", relay.log_text());
}
