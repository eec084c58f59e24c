//! `policy-extras.queue` and `policy-extras.listener_domains` with
//! configuration written the way KumoMTA's helpers document it (less what
//! only SMTP delivery uses).

use super::*;
use crate::model::message::Message;
use crate::policy::events::SMTP_SERVER_MESSAGE_RECEIVED;
use bytes::Bytes;

const QUEUE_TOML: &str = r#"
tenant_header = "X-Tenant"
remove_tenant_header = true
campaign_header = "X-Campaign"
remove_campaign_header = true
default_tenant = "default-tenant"

[tenant.'default-tenant']

[tenant.'mytenant']
max_age = '10 hours'
require_authz = ["scott"]

[queue.default]
max_age = '24 hours'
protocol = { custom_lua = { constructor = 'make.amqp' } }

[queue.'gmail.com']
max_age = '22 hours'
retry_interval = '17 mins'

[queue.'gmail.com'.'mytenant']
retry_interval = '3 mins'

[queue.'gmail.com'.'mytenant'.'welcome-campaign']
max_age = '1 hour'

[queue.'*.example.com']
retry_interval = '2 mins'
"#;

/// A second file overriding the first, as KumoMTA merges them.
const OVERRIDE_JSON: &str = r#"{"queue": {"gmail.com": {"max_age": "6 hours"}}}"#;

fn policy(dir: &std::path::Path, toml: &str) -> Result<Arc<Policy>, PolicyError> {
    std::fs::write(dir.join("queue.toml"), toml).unwrap();
    std::fs::write(dir.join("override.json"), OVERRIDE_JSON).unwrap();
    let src = format!(
        r#"
        local queue_module = require 'policy-extras.queue'
        local queue_helper = queue_module:setup {{ '{0}/queue.toml', '{0}/override.json' }}
        kumo.on('smtp_server_message_received', function(msg)
          queue_helper:apply(msg)
        end)
        "#,
        dir.display()
    );
    let path = dir.join("policy.lua");
    std::fs::write(&path, src).unwrap();
    Policy::load(&path, Arc::new(AmqpPool::default()))
}

fn message(headers: &str, meta: &[(&str, &str)]) -> Arc<Message> {
    let meta: serde_json::Map<_, _> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    Arc::new(Message::new(
        "s@example.com".into(),
        "u@gmail.com".into(),
        meta.into(),
        Bytes::from(format!("{headers}Subject: hi\r\n\r\nbody\r\n")),
    ))
}

#[tokio::test]
async fn tenants_and_campaigns_come_from_headers_into_the_queue_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path(), QUEUE_TOML).unwrap();
    let m = message(
        "X-Tenant: mytenant\r\nX-Campaign: welcome-campaign\r\n",
        &[("authz_id", "scott")],
    );
    p.message_hook(&SMTP_SERVER_MESSAGE_RECEIVED, &m)
        .await
        .unwrap();
    let q = m.queue_name().unwrap();
    assert_eq!(q.to_string(), "welcome-campaign:mytenant@gmail.com");
    let text = String::from_utf8(m.data().unwrap().to_vec()).unwrap();
    assert_eq!(text, "Subject: hi\r\n\r\nbody\r\n", "both headers removed");

    // default < domain (+ later file) < tenant < domain.tenant < campaign
    let hour = std::time::Duration::from_secs(3600);
    let c = p.queue_config(&q).await.unwrap();
    assert_eq!(
        (c.max_age, c.retry_interval),
        (hour, 3 * 60 * std::time::Duration::from_secs(1))
    );
    let plain = p
        .queue_config(&QueueName::new("gmail.com", None, None, None))
        .await
        .unwrap();
    assert_eq!(
        (plain.max_age, plain.retry_interval.as_secs()),
        (6 * hour, 17 * 60)
    );
    let tenant = p
        .queue_config(&QueueName::new("other.net", Some("mytenant"), None, None))
        .await
        .unwrap();
    assert_eq!(tenant.max_age, 10 * hour);
    assert!(matches!(
        tenant.protocol,
        crate::model::config::Protocol::CustomLua(_)
    ));
    let wild = p
        .queue_config(&QueueName::new("mx.eu.example.com", None, None, None))
        .await
        .unwrap();
    assert_eq!(
        (wild.max_age, wild.retry_interval.as_secs()),
        (24 * hour, 120)
    );

    // No tenant header: the default tenant.
    let m = message("", &[]);
    p.message_hook(&SMTP_SERVER_MESSAGE_RECEIVED, &m)
        .await
        .unwrap();
    assert_eq!(
        m.queue_name().unwrap().to_string(),
        "default-tenant@gmail.com"
    );
}

#[tokio::test]
async fn unknown_or_unauthorised_tenants_are_rejected_as_kumomta_does() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path(), QUEUE_TOML).unwrap();
    for (headers, meta, want) in [
        (
            "X-Tenant: nobody\r\n",
            &[][..],
            "tenant 'nobody' specified by 'X-Tenant' header is not defined",
        ),
        (
            "X-Tenant: mytenant\r\n",
            &[][..],
            "tenant 'mytenant' requires SMTP AUTH",
        ),
        (
            "X-Tenant: mytenant\r\n",
            &[("authz_id", "eve")][..],
            "authz_id 'eve' is not authorized to send as tenant 'mytenant'",
        ),
    ] {
        match p
            .message_hook(&SMTP_SERVER_MESSAGE_RECEIVED, &message(headers, meta))
            .await
        {
            Err(PolicyError::Rejected(r)) => {
                assert_eq!(r.code, 500);
                assert!(r.message.contains(want), "{}", r.message);
            }
            other => panic!("{headers}: {other:?}"),
        }
    }
}

#[test]
fn what_the_relay_cannot_do_fails_the_load_naming_file_and_section() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, want) in [
        (
            "[tenant.'t1']\negress_pool = 'pool-1'\n",
            "[tenant.'t1']: egress_pool is for SMTP delivery",
        ),
        (
            "scheduling_header = 'X-Schedule'\n",
            "scheduling_header is not provided",
        ),
        (
            "[queue.'a.com'.'t'.'c']\nmax_age = 'soon'\n",
            "[queue.'a.com'.'t'.'c']: kumo.make_queue_config",
        ),
        ("[queue\n", "queue.toml"),
    ] {
        let err = policy(dir.path(), toml).err().unwrap().to_string();
        assert!(err.contains(want), "{toml}: {err}");
        assert!(err.contains("queue.toml"), "{err}");
    }
    std::fs::remove_file(dir.path().join("queue.toml")).ok();
    let path = dir.path().join("policy.lua");
    let err = Policy::load(&path, Arc::new(AmqpPool::default()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("queue.toml"), "a missing file is named: {err}");
}

const LISTENER_DOMAINS: &str = r#"
["example.com"]
relay_to = true

["send.example.com"]
relay_from = [ '10.0.0.0/24' ]

["auth-send.example.com"]
relay_from_authz = [ 'username1', 'username2' ]

["*.example.com"]
relay_to = true

["www.example.com"]
relay_to = false

[listener."127.0.0.1:25"."*.example.com"]
relay_to = false
"#;

fn listener_policy(dir: &std::path::Path, toml: &str) -> Result<Arc<Policy>, PolicyError> {
    std::fs::write(dir.join("ld.toml"), toml).unwrap();
    let src = format!(
        "local listener_domains = require 'policy-extras.listener_domains'\n\
         kumo.on('get_listener_domain', listener_domains:setup {{ '{}/ld.toml' }})",
        dir.display()
    );
    let path = dir.join("policy.lua");
    std::fs::write(&path, src).unwrap();
    Policy::load(&path, Arc::new(AmqpPool::default()))
}

#[tokio::test]
async fn listener_domains_answer_per_domain_wildcard_listener_and_authz() {
    use super::conn_meta::ConnMeta;
    let dir = tempfile::tempdir().unwrap();
    let p = listener_policy(dir.path(), LISTENER_DOMAINS).unwrap();
    let conn = ConnMeta::default();
    conn.set("received_from", "10.1.2.3:40000");
    let ld = |domain: &'static str, listener: &'static str, conn: ConnMeta| {
        let p = p.clone();
        async move { p.listener_domain(domain, listener, &conn).await.unwrap() }
    };
    let relay_to = |d: Option<crate::model::listener_config::ListenerDomain>| d.map(|d| d.relay_to);
    assert_eq!(
        relay_to(ld("example.com", "0.0.0.0:25", conn.clone()).await),
        Some(true)
    );
    assert_eq!(
        relay_to(ld("mx.example.com", "0.0.0.0:25", conn.clone()).await),
        Some(true),
        "wildcard"
    );
    assert_eq!(
        relay_to(ld("www.example.com", "0.0.0.0:25", conn.clone()).await),
        Some(false),
        "exact beats wildcard"
    );
    assert_eq!(
        relay_to(ld("mx.example.com", "127.0.0.1:25", conn.clone()).await),
        Some(false),
        "per listener"
    );
    assert_eq!(
        relay_to(ld("other.net", "0.0.0.0:25", conn.clone()).await),
        None
    );
    let send = ld("send.example.com", "0.0.0.0:25", conn.clone())
        .await
        .unwrap();
    assert!(
        send.relays_from("10.0.0.7".parse().unwrap())
            && !send.relays_from("10.1.2.3".parse().unwrap())
    );
    let peer: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    let anon = ld("auth-send.example.com", "0.0.0.0:25", conn.clone())
        .await
        .unwrap();
    assert!(!anon.relays_from(peer));
    conn.set("authz_id", "username2");
    let authed = ld("auth-send.example.com", "0.0.0.0:25", conn.clone())
        .await
        .unwrap();
    assert!(authed.relays_from(peer), "relay_from_authz adds the peer");
}

#[test]
fn listener_domain_entries_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, want) in [
        (
            "[\"bounce.example.com\"]\nlog_oob = true\n",
            "['bounce.example.com'] on listener '*': kumo.make_listener_domain: log_oob and log_arf are not provided",
        ),
        (
            "[listener.\"127.0.0.1:25\".\"*.example.com\"]\nlog_arf = \"yes\"\n",
            "log_arf",
        ),
        (
            "[\"a.com\"]\nrelay_from = [ 'not-an-ip' ]\n",
            "relay_from: \"not-an-ip\" is not an IP address",
        ),
        (
            "[\"a.com\"]\nrelay_from_authz = 'scott'\n",
            "relay_from_authz must be a list",
        ),
    ] {
        let err = listener_policy(dir.path(), toml).err().unwrap().to_string();
        assert!(
            err.contains(want) && err.contains("ld.toml"),
            "{toml}: {err}"
        );
    }
}
