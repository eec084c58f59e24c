use super::*;
use crate::operator::crd::AmqpRouteSpec;
use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mlua::{Lua, Table, Value};

fn route(ns: &str, name: &str, spec: serde_json::Value) -> AmqpRoute {
    let spec: AmqpRouteSpec = serde_json::from_value(spec).unwrap();
    let mut r = AmqpRoute::new(name, spec);
    r.metadata.namespace = Some(ns.into());
    r.metadata.generation = Some(1);
    r
}

fn simple(ns: &str, name: &str, domain: &str) -> AmqpRoute {
    route(
        ns,
        name,
        serde_json::json!({
            "match": {"domain": domain},
            "broker": {"url": "amqp://rabbit:5672/%2f"},
            "publish": {"routingKey": "logging"}
        }),
    )
}

fn secret(ns: &str, name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        data: Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into()),
        ..Default::default()
    }
}

/// Runs a rendered policy against a stub `kumo` that records what the
/// policy publishes, so tests see exactly the values that reach the broker.
/// The returned Lua keeps the table alive.
fn publish_params(policy: &str, domain: &str) -> (Lua, Table) {
    let (lua, resp) = send_with_confirm(policy, domain, "{ status = 'Ack' }");
    assert_eq!(resp.unwrap(), "250 Ack");
    let stub: Table = lua.globals().get("STUB").unwrap();
    let published: Table = stub.get("published").unwrap();
    let first = published.get(1).unwrap();
    (lua, first)
}

/// A Lua state with a stub `kumo` that records what a policy publishes, the
/// policy loaded. `DEAD[url]` makes a connect to `url` fail; `NOW` is
/// `os.time()`.
fn stub_lua(policy: &str, confirm: &str) -> Lua {
    let lua = Lua::new();
    lua.globals()
        .set(
            "CONFIRM",
            lua.load(format!("return {confirm}"))
                .eval::<Table>()
                .unwrap(),
        )
        .unwrap();
    lua.load(
        r#"
        local handlers, published = {}, {}
        DEAD, NOW = {}, 1000
        os.time = function() return NOW end
        local kumo = {
          on = function(name, f) handlers[name] = f end,
          make_queue_config = function(t) return t end,
          make_egress_path = function(t) return t end,
          reject = function(code, text) error(code .. ' ' .. text) end,
          json_encode = function() return '{}' end,
          secret_load = function(t) return SECRETS and SECRETS[t.key_path] or 'amqp://from-secret' end,
          amqp = { build_client = function(url, tls)
            if DEAD[url] then error('connect to ' .. url .. ' refused') end
            BUILD_TLS = tls
            BUILDS = (BUILDS or 0) + 1
            return { publish = function(self, p)
              -- A connection that dies after it was built.
              if LOST and LOST[url] then
                LOST[url] = nil
                error('publish failed: connection reset by peer')
              end
              p.url = url
              table.insert(published, p)
              -- CONFIRMS, when set, answers each publish in turn (the last repeats).
              local answer = CONFIRM
              if CONFIRMS then
                answer = CONFIRMS[math.min(#published, #CONFIRMS)]
              end
              return { wait = function() return answer end }
            end, close = function() end }
          end },
          time = { sleep = function(d) SLEPT = (SLEPT or 0) + d end },
        }
        package.loaded.kumo = kumo
        STUB = { handlers = handlers, published = published }
        "#,
    )
    .exec()
    .unwrap();
    lua.load(policy).set_name("@routes.lua").exec().unwrap();
    lua
}

/// The route constructor's sender for `domain`.
fn sender(lua: &Lua, domain: &str) -> mlua::Result<Table> {
    let stub: Table = lua.globals().get("STUB").unwrap();
    let handlers: Table = stub.get("handlers").unwrap();
    let ctor: mlua::Function = handlers.get("amqp-relay.route").unwrap();
    ctor.call((domain, Value::Nil, Value::Nil))
}

/// `sender:send` of one message; the URL it went to.
fn send(lua: &Lua, sender: &Table) -> mlua::Result<String> {
    let msg = lua
        .load(
            "return { get_data = function() return 'body' end, id = function() return 'id1' end }",
        )
        .eval::<Table>()
        .unwrap();
    let send: mlua::Function = sender.get("send").unwrap();
    send.call::<String>((sender, msg))?;
    let stub: Table = lua.globals().get("STUB").unwrap();
    let published: Table = stub.get("published").unwrap();
    let last: Table = published.get(published.raw_len()).unwrap();
    last.get("url")
}

/// Runs `sender:send` with a stub broker whose confirm is `confirm` (Lua).
fn send_with_confirm(policy: &str, domain: &str, confirm: &str) -> (Lua, mlua::Result<String>) {
    let lua = stub_lua(policy, confirm);
    let resp = send_on(&lua, domain);
    (lua, resp)
}

/// A session's `send` of one message on the stubbed policy in `lua`.
fn send_on(lua: &Lua, domain: &str) -> mlua::Result<String> {
    let sender = sender(lua, domain).unwrap();
    let msg = lua
        .load(
            "return { get_data = function() return 'body' end, id = function() return 'id1' end }",
        )
        .eval::<Table>()
        .unwrap();
    let send: mlua::Function = sender.get("send").unwrap();
    send.call::<String>((&sender, msg))
}

#[test]
fn a_route_renders_to_a_policy_the_engine_loads() {
    let out = render(&[simple("ns", "r1", "AMQP")], &[], DEFAULT_SECRETS_DIR);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(out.accepted.len(), 1);
    assert!(out.secret.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(POLICY_KEY);
    std::fs::write(&path, &out.policy).unwrap();
    crate::policy::Policy::load(&path, Default::default()).unwrap();
    let (_lua, p) = publish_params(&out.policy, "amqp");
    assert_eq!(p.get::<String>("routing_key").unwrap(), "logging");
    assert_eq!(p.get::<String>("url").unwrap(), "amqp://rabbit:5672/%2f");
    let props: Table = p.get("properties").unwrap();
    assert_eq!(props.get::<i64>("delivery_mode").unwrap(), 2);
}

#[tokio::test]
async fn queue_config_only_for_routed_domains() {
    let out = render(&[simple("ns", "r1", "amqp")], &[], DEFAULT_SECRETS_DIR);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(POLICY_KEY);
    std::fs::write(&path, &out.policy).unwrap();
    let policy = crate::policy::Policy::load(&path, Default::default()).unwrap();
    use crate::model::config::Protocol;
    use crate::model::queue_name::QueueName;
    let q = policy
        .queue_config(&QueueName::new("amqp", Some("t"), None, None))
        .await
        .unwrap();
    assert!(
        matches!(q.protocol, Protocol::CustomLua(ref c) if c.constructor == "amqp-relay.route")
    );
    let other = policy
        .queue_config(&QueueName::new("other", None, None, None))
        .await
        .unwrap();
    assert_eq!(other.protocol, Protocol::Smtp);
    let e = policy
        .egress_path_config(&QueueName::new("amqp", Some("t"), Some("c"), None))
        .await
        .unwrap();
    assert_eq!(e.connection_limit, 32);
}

#[test]
fn credentials_go_to_the_secret_never_the_policy() {
    let r = route(
        "ns",
        "r1",
        serde_json::json!({
            "match": {"domain": "amqp"},
            "broker": {"urlSecretRef": {"name": "rabbit", "key": "url"}},
            "publish": {"routingKey": "k"}
        }),
    );
    let s = secret(
        "ns",
        "rabbit",
        "url",
        "amqp://user:s3cret@rabbit:5672/%2f\n",
    );
    let out = render(&[r], &[s], "/mnt/routes");
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert!(!out.policy.contains("s3cret"));
    assert_eq!(
        out.secret.get("ns.r1.url").map(|v| v.as_slice()),
        Some(b"amqp://user:s3cret@rabbit:5672/%2f".as_slice())
    );
    assert!(out.policy.contains("\"/mnt/routes\""));
}

#[test]
fn bad_routes_are_left_out_with_a_reason_and_the_rest_ship() {
    let bad = |name: &str, spec: serde_json::Value| route("ns", name, spec);
    let routes = vec![
        simple("ns", "good", "amqp"),
        bad(
            "creds",
            serde_json::json!({"match": {"domain": "a"}, "broker": {"url": "amqp://u:p@h/"}, "publish": {"routingKey": "k"}}),
        ),
        bad(
            "nosecret",
            serde_json::json!({"match": {"domain": "b"}, "broker": {"urlSecretRef": {"name": "missing", "key": "url"}}, "publish": {"routingKey": "k"}}),
        ),
        bad(
            "nokey",
            serde_json::json!({"match": {"domain": "c"}, "broker": {"urlSecretRef": {"name": "rabbit", "key": "nope"}}, "publish": {"routingKey": "k"}}),
        ),
        bad(
            "duration",
            serde_json::json!({"match": {"domain": "d"}, "broker": {"url": "amqp://h/"}, "publish": {"routingKey": "k"}, "delivery": {"retryInterval": "soon"}}),
        ),
        bad(
            "domain",
            serde_json::json!({"match": {"domain": "x@y"}, "broker": {"url": "amqp://h/"}, "publish": {"routingKey": "k"}}),
        ),
        bad(
            "both",
            serde_json::json!({"match": {"domain": "e"}, "broker": {"url": "amqp://h/", "urlSecretRef": {"name": "rabbit", "key": "url"}}, "publish": {"routingKey": "k"}}),
        ),
        bad(
            "longkey",
            serde_json::json!({"match": {"domain": "f"}, "broker": {"url": "amqp://h/"}, "publish": {"routingKey": "k".repeat(256)}}),
        ),
        bad(
            "secretjunk",
            serde_json::json!({"match": {"domain": "g"}, "broker": {"urlSecretRef": {"name": "junk", "key": "url"}}, "publish": {"routingKey": "k"}}),
        ),
    ];
    let secrets = [
        secret("ns", "rabbit", "url", "amqp://h/"),
        secret("ns", "junk", "url", "password-only"),
    ];
    let out = render(&routes, &secrets, DEFAULT_SECRETS_DIR);
    assert_eq!(out.accepted.len(), 1, "{:?}", out.rejected);
    let reason = |n: &str| {
        out.rejected
            .iter()
            .find(|(id, _)| id.name == n)
            .map(|(_, r)| r.message.clone())
            .unwrap_or_else(|| panic!("{n} not rejected"))
    };
    assert!(reason("creds").contains("must not hold credentials"));
    assert!(reason("nosecret").contains("ns/missing not found"));
    assert!(reason("nokey").contains("no key \"nope\""));
    assert!(reason("duration").contains("retryInterval"));
    assert!(reason("domain").contains("match.domain"));
    assert!(reason("both").contains("exactly one"));
    assert!(reason("longkey").contains("255"));
    let junk = reason("secretjunk");
    assert!(
        junk.contains("does not hold an amqp:// URL") && !junk.contains("password-only"),
        "{junk}"
    );
}

#[test]
fn the_older_route_wins_a_queue() {
    let mut old = simple("ns", "zz-old", "amqp");
    let mut new = simple("ns", "aa-new", "amqp");
    let t = |s: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(s.parse().unwrap());
    old.metadata.creation_timestamp = Some(t("2026-01-01T00:00:00Z"));
    new.metadata.creation_timestamp = Some(t("2026-02-01T00:00:00Z"));
    let out = render(&[new.clone(), old.clone()], &[], DEFAULT_SECRETS_DIR);
    assert_eq!(out.accepted[0].name, "zz-old");
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].0.name, "aa-new");
    assert!(
        out.rejected[0]
            .1
            .message
            .contains("ns/zz-old already serves")
    );
    assert_eq!(out.rejected[0].1.reason, "Conflict");
    // A different tenant is a different queue: no conflict.
    let mut tenant = simple("ns", "tenant", "amqp");
    tenant.spec.route_match.tenant = Some("t".into());
    let out = render(&[old, tenant], &[], DEFAULT_SECRETS_DIR);
    assert_eq!(out.accepted.len(), 2);
}

#[test]
fn output_is_stable_whatever_the_input_order() {
    let routes: Vec<_> = (0..20)
        .map(|i| simple("ns", &format!("r{i}"), &format!("d{i}")))
        .collect();
    let a = render(&routes, &[], DEFAULT_SECRETS_DIR);
    let mut rev = routes.clone();
    rev.reverse();
    let b = render(&rev, &[], DEFAULT_SECRETS_DIR);
    assert_eq!(a.policy, b.policy);
    assert_eq!(a.hash, b.hash);
    let mut changed = routes;
    changed[3].spec.publish.routing_key = "other".into();
    assert_ne!(render(&changed, &[], DEFAULT_SECRETS_DIR).hash, a.hash);
}

#[test]
fn hostile_values_reach_the_broker_exactly_and_run_no_code() {
    let hostile = [
        "\"]] os.exit(1) --[[",
        "'); os.execute('touch /tmp/pwned') --",
        "a\nb\rc\td",
        "nul\0byte",
        "\\\"\\",
        "]==]",
        "漢字🙂",
        &"x".repeat(255),
    ];
    for h in hostile {
        let mut r = simple("ns", "r", "amqp");
        r.spec.publish.routing_key = h.into();
        r.spec.publish.exchange = h.chars().take(200).collect();
        r.spec.publish.content_type = Some(h.into());
        r.spec.publish.headers = [(h.to_string(), h.to_string())].into();
        let out = render(&[r], &[], h);
        assert!(out.rejected.is_empty(), "{h:?}: {:?}", out.rejected);
        let (_lua, p) = publish_params(&out.policy, "amqp");
        assert_eq!(p.get::<String>("routing_key").unwrap(), h);
        assert_eq!(
            p.get::<String>("exchange").unwrap(),
            h.chars().take(200).collect::<String>()
        );
        let props: Table = p.get("properties").unwrap();
        assert_eq!(props.get::<String>("content_type").unwrap(), h);
        let headers: Table = props.get("headers").unwrap();
        assert_eq!(headers.get::<String>(h).unwrap(), h);
    }
}

#[test]
fn nack_and_return_follow_on_nack_and_on_return() {
    let nack = "{ status = 'Nack' }";
    let returned = "{ status = 'Ack', reply_code = 312, reply_text = 'NO_ROUTE' }";
    for (on_nack, on_return, confirm, want) in [
        ("retry", "bounce", nack, "451"),
        ("bounce", "retry", nack, "550"),
        ("retry", "bounce", returned, "550"),
        ("bounce", "retry", returned, "451"),
    ] {
        let mut r = simple("ns", "r", "amqp");
        r.spec.publish.on_nack = serde_json::from_value(serde_json::json!(on_nack)).unwrap();
        r.spec.publish.on_return = serde_json::from_value(serde_json::json!(on_return)).unwrap();
        r.spec.publish.mandatory = true;
        let out = render(&[r], &[], DEFAULT_SECRETS_DIR);
        let (_lua, resp) = send_with_confirm(&out.policy, "amqp", confirm);
        let err = resp.unwrap_err().to_string();
        assert!(err.contains(want), "{on_nack}/{on_return} {confirm}: {err}");
    }
}

#[test]
fn a_nack_the_route_retries_is_tried_again_promptly_before_it_waits() {
    let r = simple("ns", "r", "amqp");
    let out = render(&[r], &[], DEFAULT_SECRETS_DIR);
    // Nacked twice (a failover's moment), then taken: delivered, not retried later.
    let lua = stub_lua(&out.policy, "{ status = 'Ack' }");
    lua.load("CONFIRMS = { { status = 'Nack' }, { status = 'Nack' }, { status = 'Ack' } }")
        .exec()
        .unwrap();
    let resp = send_on(&lua, "amqp");
    assert_eq!(resp.unwrap(), "250 Ack");
    let stub: Table = lua.globals().get("STUB").unwrap();
    assert_eq!(stub.get::<Table>("published").unwrap().raw_len(), 3);
    assert!((lua.globals().get::<f64>("SLEPT").unwrap() - 0.35).abs() < 1e-9);
    // Nacked every time: after the last prompt try, a 451 for the retry schedule.
    let (lua, resp) = send_with_confirm(&out.policy, "amqp", "{ status = 'Nack' }");
    assert!(resp.unwrap_err().to_string().contains("451"));
    let stub: Table = lua.globals().get("STUB").unwrap();
    assert_eq!(
        stub.get::<Table>("published").unwrap().raw_len(),
        8,
        "one try and seven prompt ones"
    );
    let slept: f64 = lua.globals().get("SLEPT").unwrap();
    assert!(
        (slept - 15.85).abs() < 1e-9,
        "{slept} s, well within the 60 s send timeout"
    );
    // A returned message is a routing answer: no prompt retry.
    let (lua, resp) = send_with_confirm(
        &out.policy,
        "amqp",
        "{ status = 'Ack', reply_code = 312, reply_text = 'NO_ROUTE' }",
    );
    assert!(resp.is_err());
    let stub: Table = lua.globals().get("STUB").unwrap();
    assert_eq!(stub.get::<Table>("published").unwrap().raw_len(), 1);
}

#[test]
fn a_connection_lost_mid_publish_moves_to_the_next_node_at_once() {
    let mut r = simple("ns", "r", "amqp");
    r.spec.broker.urls = Some(vec!["amqp://a:5672/%2f".into(), "amqp://b:5672/%2f".into()]);
    r.spec.broker.url = None;
    let out = render(&[r], &[], DEFAULT_SECRETS_DIR);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    let lua = stub_lua(&out.policy, "{ status = 'Ack' }");
    // The first node's connection dies with the publish; then it refuses.
    lua.load("LOST = { ['amqp://a:5672/%2f'] = true }")
        .exec()
        .unwrap();
    let sender = sender(&lua, "amqp").unwrap();
    lua.load("DEAD['amqp://a:5672/%2f'] = true").exec().unwrap();
    let msg = lua
        .load(
            "return { get_data = function() return 'body' end, id = function() return 'id1' end }",
        )
        .eval::<Table>()
        .unwrap();
    let send: mlua::Function = sender.get("send").unwrap();
    assert_eq!(send.call::<String>((&sender, msg)).unwrap(), "250 Ack");
    let stub: Table = lua.globals().get("STUB").unwrap();
    let published: Table = stub.get("published").unwrap();
    assert_eq!(published.raw_len(), 1);
    let first: Table = published.get(1).unwrap();
    assert_eq!(first.get::<String>("url").unwrap(), "amqp://b:5672/%2f");
}

#[test]
fn a_default_route_keeps_a_message_no_queue_takes() {
    // Defaults only: mandatory is on and a returned message is retried, so a
    // routing key that matches no queue never loses the message silently.
    let out = render(&[simple("ns", "r", "amqp")], &[], DEFAULT_SECRETS_DIR);
    let (_lua, p) = publish_params(&out.policy, "amqp");
    let options: Table = p.get("options").unwrap();
    assert!(options.get::<bool>("mandatory").unwrap());
    let returned = "{ status = 'Ack', reply_code = 312, reply_text = 'NO_ROUTE' }";
    let (_lua, resp) = send_with_confirm(&out.policy, "amqp", returned);
    let err = resp.unwrap_err().to_string();
    assert!(err.contains("451"), "a temporary failure, retried: {err}");
}

#[test]
fn random_hostile_strings_always_compile_and_come_back_exactly() {
    // A property test with a fixed seed: strings drawn from the characters
    // that break naive quoting, up to 60 characters (at most 240 bytes).
    let alphabet: Vec<char> = "\"'[]=-\\\n\r\t\0 .()%;:{}$@!#x\u{7f}é漢🙂"
        .chars()
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..300 {
        let len = rng.usize(0..=60);
        let s: String = (0..len)
            .map(|_| alphabet[rng.usize(..alphabet.len())])
            .collect();
        let mut r = simple("ns", "r", "amqp");
        r.spec.publish.routing_key = s.clone();
        r.spec.publish.headers = [("h".to_string(), s.clone())].into();
        let out = render(&[r], &[], &s);
        let (_lua, p) = publish_params(&out.policy, "amqp");
        assert_eq!(p.get::<String>("routing_key").unwrap(), s);
        let props: Table = p.get("properties").unwrap();
        let headers: Table = props.get("headers").unwrap();
        assert_eq!(headers.get::<String>("h").unwrap(), s);
    }
}

#[test]
fn tls_ca_goes_to_the_secret_and_the_client() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let tls_route = |url: &str| {
        route(
            "ns",
            "tls",
            serde_json::json!({
                "match": {"domain": "amqp"},
                "broker": {"url": url, "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}}},
                "publish": {"routingKey": "k"}
            }),
        )
    };
    let secrets = [secret("ns", "ca", "ca.crt", pem)];
    let out = render(&[tls_route("amqps://rabbit:5671/%2f")], &secrets, "/mnt/r");
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(
        out.secret.get("ns.tls.ca").map(|v| v.as_slice()),
        Some(pem.as_bytes())
    );
    let (lua, _) = publish_params(&out.policy, "amqp");
    let tls: Table = lua.globals().get("BUILD_TLS").unwrap();
    assert_eq!(
        tls.get::<String>("root_ca_cert").unwrap(),
        "/mnt/r/ns.tls.ca"
    );

    let plain = render(&[tls_route("amqp://rabbit:5672/%2f")], &secrets, "/mnt/r");
    assert!(plain.rejected[0].1.message.contains("needs amqps:// URLs"));
    let no_pem = render(
        &[tls_route("amqps://rabbit/")],
        &[secret("ns", "ca", "ca.crt", "junk")],
        "/mnt/r",
    );
    assert!(no_pem.rejected[0].1.message.contains("no PEM certificate"));
}

#[tokio::test]
async fn log_events_routes_configure_a_hook_and_pick_record_types() {
    let r = route(
        "ns",
        "events",
        serde_json::json!({
            "match": {"domain": "events", "tenant": "relay"},
            "broker": {"url": "amqp://rabbit/"},
            "publish": {"routingKey": "relay.events"},
            "logEvents": {"types": ["Delivery", "Bounce"], "headers": ["Subject"], "meta": ["tenant"]}
        }),
    );
    let out = render(&[r], &[], DEFAULT_SECRETS_DIR);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(POLICY_KEY);
    std::fs::write(&path, &out.policy).unwrap();
    let policy = crate::policy::Policy::load(&path, Default::default()).unwrap();
    let init = policy.run_init().await.unwrap();
    assert!(!init.has_init);
    assert_eq!(init.log_hooks.len(), 1);
    assert_eq!(init.log_hooks[0].name, "route.ns.events");
    assert_eq!(init.log_hooks[0].headers, vec!["Subject".to_string()]);

    let record = |t: &str| {
        let mut meta = serde_json::Map::new();
        // A record about a message of a queue this route serves.
        meta.insert(
            "log_record".into(),
            serde_json::json!({"type": t, "queue": "relay@events"}),
        );
        std::sync::Arc::new(crate::model::message::Message::new(
            "nobody@localhost".into(),
            "log@x".into(),
            meta.into(),
            bytes::Bytes::new(),
        ))
    };
    let delivery = record("Delivery");
    assert!(
        policy
            .should_enqueue_log_record(&delivery, "route.ns.events")
            .await
            .unwrap()
    );
    assert_eq!(delivery.queue_name().unwrap().to_string(), "relay@events");
    assert!(
        !policy
            .should_enqueue_log_record(&record("Reception"), "route.ns.events")
            .await
            .unwrap()
    );
    assert!(
        !policy
            .should_enqueue_log_record(&record("Delivery"), "other-hook")
            .await
            .unwrap()
    );

    let mut bad = route(
        "ns",
        "bad",
        serde_json::json!({"match": {"domain": "e"}, "broker": {"url": "amqp://h/"}, "publish": {"routingKey": "k"}, "logEvents": {"types": ["Sent"]}}),
    );
    bad.metadata.generation = Some(1);
    let out = render(&[bad], &[], DEFAULT_SECRETS_DIR);
    assert!(
        out.rejected[0]
            .1
            .message
            .contains("unknown record type \"Sent\"")
    );
}

/// A record of `kind` about a message of `queue`, as the engine offers it to
/// the log hooks.
fn log_record(kind: &str, queue: &str) -> crate::model::message::MessageRef {
    let mut meta = serde_json::Map::new();
    meta.insert(
        "log_record".into(),
        serde_json::json!({"type": kind, "queue": queue, "sender": "ceo@a.example", "headers": {"Subject": "secret"}}),
    );
    std::sync::Arc::new(crate::model::message::Message::new(
        "nobody@localhost".into(),
        "log@x".into(),
        meta.into(),
        bytes::Bytes::new(),
    ))
}

#[tokio::test]
async fn a_routes_log_events_take_only_its_own_queues_records() {
    let tenant = |ns: &str, domain: &str| {
        route(
            ns,
            "events",
            serde_json::json!({
                "match": {"domain": domain},
                "broker": {"url": "amqp://rabbit/"},
                "publish": {"routingKey": "events"},
                "logEvents": {"types": ["Delivery"], "headers": ["Subject"], "meta": ["extra"]}
            }),
        )
    };
    let routes = [
        tenant("team-a", "a.example"),
        tenant("team-b", "b.example"),
        tenant("platform", "ops.example"),
    ];
    let ownership = Ownership::default().with_all_log_records(vec!["platform".into()]);
    let out = render_owned(
        &routes,
        &[],
        &Default::default(),
        DEFAULT_SECRETS_DIR,
        &ownership,
    );
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(POLICY_KEY);
    std::fs::write(&path, &out.policy).unwrap();
    let policy = crate::policy::Policy::load(&path, Default::default()).unwrap();
    policy.run_init().await.unwrap();
    let takes = |hook: &'static str, queue: &'static str| {
        let policy = policy.clone();
        async move {
            policy
                .should_enqueue_log_record(&log_record("Delivery", queue), hook)
                .await
                .unwrap()
        }
    };
    let (a, b, ops) = (
        "route.team-a.events",
        "route.team-b.events",
        "route.platform.events",
    );
    // Each tenant sees its own queues' records, the tenant and campaign
    // variants of its domain included, and nobody else's.
    assert!(takes(a, "a.example").await);
    assert!(takes(a, "news:shop@a.example").await);
    assert!(!takes(a, "b.example").await, "team-a read team-b's mail");
    assert!(takes(b, "b.example").await);
    assert!(!takes(b, "a.example").await, "team-b read team-a's mail");
    assert!(!takes(b, "unrouted.example").await);
    assert!(
        !takes(a, "").await,
        "a record without a queue belongs to no tenant"
    );
    // The namespace the install names takes every record.
    assert!(takes(ops, "a.example").await);
    assert!(takes(ops, "b.example").await);
    assert!(takes(ops, "unrouted.example").await);
    // Without that setting, the platform route is a tenant like the others.
    let out = render(&routes, &[], DEFAULT_SECRETS_DIR);
    std::fs::write(&path, &out.policy).unwrap();
    let policy = crate::policy::Policy::load(&path, Default::default()).unwrap();
    policy.run_init().await.unwrap();
    let record = log_record("Delivery", "a.example");
    assert!(
        !policy
            .should_enqueue_log_record(&record, ops)
            .await
            .unwrap()
    );
}

#[test]
fn the_published_hash_reveals_no_credential() {
    let r = route(
        "ns",
        "r",
        serde_json::json!({
            "match": {"domain": "amqp"},
            "broker": {"urlSecretRef": {"name": "rabbit", "key": "url"}},
            "publish": {"routingKey": "k"}
        }),
    );
    let with = |url: &str, rv: &str| {
        let mut s = secret("ns", "rabbit", "url", url);
        s.metadata.uid = Some("u1".into());
        s.metadata.resource_version = Some(rv.into());
        render(std::slice::from_ref(&r), &[s], DEFAULT_SECRETS_DIR)
    };
    let a = with("amqp://u:one@rabbit/%2f", "7");
    let b = with("amqp://u:two@rabbit/%2f", "7");
    assert_ne!(a.secret, b.secret, "the credentials differ");
    assert_eq!(a.hash, b.hash, "no credential value enters the hash");
    // A rotation is a new version of the Secret: the hash follows it.
    let c = with("amqp://u:two@rabbit/%2f", "8");
    assert_ne!(b.hash, c.hash);
    // And the policy's own content still counts.
    let mut other = r.clone();
    other.spec.publish.routing_key = "k2".into();
    let mut s = secret("ns", "rabbit", "url", "amqp://u:two@rabbit/%2f");
    s.metadata.resource_version = Some("8".into());
    s.metadata.uid = Some("u1".into());
    assert_ne!(render(&[other], &[s], DEFAULT_SECRETS_DIR).hash, c.hash);
}

#[test]
fn a_tenant_cannot_take_another_tenants_domain() {
    use crate::operator::ownership::Ownership;
    let rules =
        Ownership::parse(r#"{"team-a": ["a.example"], "team-b": ["*.b.example"]}"#).unwrap();
    let mut intruder = simple("team-b", "grab", "a.example");
    intruder.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2020-01-01T00:00:00Z".parse().unwrap(),
        ));
    let owner = simple("team-a", "mine", "a.example");
    let own_sub = simple("team-b", "sub", "mail.b.example");
    let out = render_owned(
        &[intruder, owner, own_sub],
        &[],
        &Clusters::default(),
        DEFAULT_SECRETS_DIR,
        &rules,
    );
    assert_eq!(out.rejected.len(), 1, "{:?}", out.rejected);
    let (id, why) = &out.rejected[0];
    assert_eq!(
        (id.namespace.as_str(), id.name.as_str()),
        ("team-b", "grab")
    );
    assert_eq!(why.reason, "DomainNotAllowed");
    assert!(why.message.contains("*.b.example"), "{}", why.message);
    // The owner's route serves the domain although the intruder's is older.
    let names: Vec<_> = out.accepted.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["mine", "sub"]);
}

fn secret_of(ns: &str, name: &str, pairs: &[(&str, &str)]) -> Secret {
    let mut s = secret(ns, name, pairs[0].0, pairs[0].1);
    let data = s.data.as_mut().unwrap();
    for (k, v) in &pairs[1..] {
        data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
    }
    s
}

fn two_urls_with_credentials(name: &str) -> AmqpRoute {
    route(
        "ns",
        name,
        serde_json::json!({
            "match": {"domain": name},
            "broker": {
                "urls": ["amqp://rabbit-0:5672/%2f", "amqp://rabbit-1:5672/%2f"],
                "credentialsSecretRef": {"name": "rabbit-user"},
                "failbackInterval": "30s"
            },
            "publish": {"routingKey": "k"}
        }),
    )
}

#[test]
fn credentials_are_composed_into_each_url_in_the_secret_never_the_policy() {
    let user = secret_of(
        "ns",
        "rabbit-user",
        &[("username", "relay"), ("password", "p@ss:w/rd%\n")],
    );
    let out = render(&[two_urls_with_credentials("r1")], &[user], "/mnt/r");
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert!(!out.policy.contains("p@ss") && !out.policy.contains("relay:"));
    let text = |k: &str| String::from_utf8(out.secret[k].clone()).unwrap();
    assert_eq!(
        text("ns.r1.url"),
        "amqp://relay:p%40ss%3Aw%2Frd%25@rabbit-0:5672/%2f"
    );
    assert_eq!(
        text("ns.r1.url-2"),
        "amqp://relay:p%40ss%3Aw%2Frd%25@rabbit-1:5672/%2f"
    );
    assert_eq!(
        out.route_keys[&out.accepted[0]],
        ["ns.r1.url", "ns.r1.url-2"]
    );

    let no_key = secret_of("ns", "rabbit-user", &[("user", "relay")]);
    let bad = render(&[two_urls_with_credentials("r1")], &[no_key], "/mnt/r");
    let msg = &bad.rejected[0].1.message;
    assert!(
        msg.contains("broker.credentialsSecretRef") && msg.contains("no key \"username\""),
        "{msg}"
    );
    let inline = route(
        "ns",
        "r2",
        serde_json::json!({
            "match": {"domain": "x"},
            "broker": {"urls": ["amqp://a/", "amqp://u:p@b/"]},
            "publish": {"routingKey": "k"}
        }),
    );
    let msg = &render(&[inline], &[], "/r").rejected[0].1.message;
    assert!(
        msg.starts_with("broker.urls[1] must not hold credentials"),
        "{msg}"
    );
}

#[test]
fn a_connection_fails_over_in_order_and_moves_back_when_the_first_answers() {
    let user = secret_of("ns", "rabbit-user", &[("username", "u"), ("password", "p")]);
    let out = render(&[two_urls_with_credentials("r1")], &[user], "/mnt/r");
    let lua = stub_lua(&out.policy, "{ status = 'Ack' }");
    let secrets = lua.create_table().unwrap();
    for (k, v) in &out.secret {
        secrets
            .set(format!("/mnt/r/{k}"), String::from_utf8(v.clone()).unwrap())
            .unwrap();
    }
    lua.globals().set("SECRETS", secrets).unwrap();
    let (first, second) = (
        "amqp://u:p@rabbit-0:5672/%2f",
        "amqp://u:p@rabbit-1:5672/%2f",
    );
    let dead: Table = lua.globals().get("DEAD").unwrap();
    dead.set(first, true).unwrap();
    let s = sender(&lua, "r1").unwrap();
    assert_eq!(send(&lua, &s).unwrap(), second);
    // The first answers again: not tried before the failback interval...
    dead.set(first, Value::Nil).unwrap();
    lua.load("NOW = NOW + 29").exec().unwrap();
    assert_eq!(send(&lua, &s).unwrap(), second);
    // ...then the connection moves back.
    lua.load("NOW = NOW + 2").exec().unwrap();
    assert_eq!(send(&lua, &s).unwrap(), first);
    // Every URL down: the session fails with every URL's error, no credentials shown by the stub's.
    dead.set(first, true).unwrap();
    dead.set(second, true).unwrap();
    let err = sender(&lua, "r1").unwrap_err().to_string();
    assert!(
        err.contains("rabbit-0") && err.contains("rabbit-1"),
        "{err}"
    );
}

#[test]
fn routes_that_do_not_fit_the_api_limit_are_too_large_youngest_first() {
    let at = |r: &mut AmqpRoute, secs: i64| {
        r.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
        ));
    };
    let big = |name: &str, secs: i64| {
        let mut r = route(
            "ns",
            name,
            serde_json::json!({
                "match": {"domain": name},
                "broker": {"url": "amqp://rabbit/"},
                "publish": {"routingKey": "k", "headers": {"pad": "x".repeat(6000)}}
            }),
        );
        at(&mut r, secs);
        r
    };
    // The youngest is listed first: age decides, not input order.
    let routes = [big("young", 300), big("old", 100), big("mid", 200)];
    let base = render(&[], &[], "/r").policy.len();
    let inputs = Inputs {
        secrets: &[],
        clusters: &Clusters::default(),
        secrets_dir: "/r",
        ownership: &Ownership::default(),
    };
    let out = render_within(&routes, &inputs, base + 13_000);
    let names = |ids: &[RouteId]| ids.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&out.accepted), ["mid", "old"]);
    assert_eq!(out.rejected.len(), 1);
    let (id, why) = &out.rejected[0];
    assert_eq!((id.name.as_str(), why.reason), ("young", "TooLarge"));
    assert!(why.message.contains("ConfigMap"), "{}", why.message);
    assert!(POLICY_KEY.len() + out.policy.len() <= base + 13_000);
    // At the real limit all three fit.
    assert!(render(&routes, &[], "/r").rejected.is_empty());
}

#[test]
fn routes_sharing_a_ca_or_credential_keep_keys_that_do_not_move() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let tls = |name: &str| {
        route(
            "ns",
            name,
            serde_json::json!({
                "match": {"domain": name},
                "broker": {
                    "url": "amqps://rabbit:5671/%2f",
                    "credentialsSecretRef": {"name": "rabbit-user"},
                    "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}}
                },
                "publish": {"routingKey": "k"}
            }),
        )
    };
    let secrets = [
        secret("ns", "ca", "ca.crt", pem),
        secret_of("ns", "rabbit-user", &[("username", "u"), ("password", "p")]),
    ];
    let out = render(&[tls("a"), tls("b"), tls("c")], &secrets, "/r");
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    for (id, keys) in &out.route_keys {
        let own = [format!("ns.{}.url", id.name), format!("ns.{}.ca", id.name)];
        assert_eq!(keys, &own, "each route's own keys");
    }
    // Route a goes: b's keys, digest and rendered code stay as they were,
    // so b is not a new version (not back to Propagating).
    let without_a = render(&[tls("b"), tls("c")], &secrets, "/r");
    let b = |o: &Rendered| {
        let id = o
            .route_keys
            .keys()
            .find(|id| id.name == "b")
            .unwrap()
            .clone();
        (o.route_keys[&id].clone(), o.digests[&id].clone())
    };
    assert_eq!(b(&out), b(&without_a));
}

fn rabbitmq_cluster(ns: &str, name: &str, with_status: bool) -> cluster::Cluster {
    cluster_object(ns, name, with_status, serde_json::json!({}), "team")
}

/// A RabbitmqCluster as the API serves it: `spec`, and the namespaces its
/// topology-allowed-namespaces annotation admits.
fn cluster_object(
    ns: &str,
    name: &str,
    with_status: bool,
    spec: serde_json::Value,
    allowed: &str,
) -> cluster::Cluster {
    let mut o = serde_json::json!({
        "apiVersion": "rabbitmq.com/v1beta1",
        "kind": "RabbitmqCluster",
        "metadata": {"name": name, "namespace": ns,
                     "annotations": {cluster::ALLOWED_NAMESPACES: allowed}},
        "spec": spec,
    });
    if with_status {
        o["status"] = serde_json::json!({"defaultUser": {
            "secretReference": {"name": format!("{name}-default-user"), "namespace": ns,
                                "keys": {"username": "username", "password": "password"}},
            "serviceReference": {"name": name, "namespace": ns}
        }});
    }
    cluster::Cluster::from_object(&o).unwrap()
}

fn cluster_route(ns: &str, broker: serde_json::Value) -> AmqpRoute {
    route(
        ns,
        "via-cluster",
        serde_json::json!({
            "match": {"domain": "amqp"},
            "broker": broker,
            "publish": {"routingKey": "k"}
        }),
    )
}

#[test]
fn a_rabbitmq_cluster_ref_uses_its_service_and_default_user() {
    let user = secret_of(
        "messaging",
        "rabbit-default-user",
        &[
            ("username", "default_user_x"),
            ("password", "pw/1"),
            ("port", "5672"),
        ],
    );
    let found = Clusters {
        found: vec![
            rabbitmq_cluster("messaging", "rabbit", true),
            rabbitmq_cluster("messaging", "booting", false),
        ],
        shared_namespaces: vec!["messaging".into()],
        ..Default::default()
    };
    let go = |r: AmqpRoute, shared: &Clusters, secrets: &[Secret]| {
        render_owned(&[r], secrets, shared, "/r", &Ownership::default())
    };
    let out = go(
        cluster_route(
            "team",
            serde_json::json!({"rabbitmqClusterRef": {"name": "rabbit", "namespace": "messaging"}}),
        ),
        &found,
        std::slice::from_ref(&user),
    );
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(
        String::from_utf8(out.secret["team.via-cluster.url"].clone()).unwrap(),
        "amqp://default_user_x:pw%2F1@rabbit.messaging.svc:5672/%2f"
    );
    // Another user's credentials over the cluster's address.
    let other = secret_of(
        "team",
        "relay-user",
        &[("username", "relay"), ("password", "x")],
    );
    let out = go(
        cluster_route(
            "team",
            serde_json::json!({
                "rabbitmqClusterRef": {"name": "rabbit", "namespace": "messaging"},
                "credentialsSecretRef": {"name": "relay-user"}
            }),
        ),
        &found,
        &[user.clone(), other],
    );
    assert_eq!(
        String::from_utf8(out.secret["team.via-cluster.url"].clone()).unwrap(),
        "amqp://relay:x@rabbit.messaging.svc:5672/%2f"
    );
    let message = |r: AmqpRoute, c: &Clusters| {
        go(r, c, std::slice::from_ref(&user)).rejected[0]
            .1
            .message
            .clone()
    };
    let not_shared = Clusters {
        shared_namespaces: vec![],
        ..found.clone()
    };
    let m = message(
        cluster_route(
            "team",
            serde_json::json!({"rabbitmqClusterRef": {"name": "rabbit", "namespace": "messaging"}}),
        ),
        &not_shared,
    );
    assert!(
        m.contains("another namespace") && m.contains("sharedRabbitmqClusterNamespaces"),
        "{m}"
    );
    let m = message(
        cluster_route(
            "messaging",
            serde_json::json!({"rabbitmqClusterRef": {"name": "booting"}}),
        ),
        &found,
    );
    assert!(m.contains("no status.defaultUser yet"), "{m}");
    let m = message(
        cluster_route(
            "messaging",
            serde_json::json!({"rabbitmqClusterRef": {"name": "nope"}}),
        ),
        &found,
    );
    assert!(
        m.ends_with("RabbitmqCluster messaging/nope not found"),
        "{m}"
    );
    // A rotated default-user password is a new version of the route.
    let digest = |pw: &str, version: &str| {
        let mut s = secret_of(
            "messaging",
            "rabbit-default-user",
            &[("username", "u"), ("password", pw)],
        );
        s.metadata.resource_version = Some(version.into());
        let out = go(
            cluster_route(
                "messaging",
                serde_json::json!({"rabbitmqClusterRef": {"name": "rabbit"}}),
            ),
            &found,
            &[s],
        );
        out.digests.values().next().unwrap().clone()
    };
    assert_ne!(digest("a", "1"), digest("b", "2"));
}

/// RabbitMQ's messaging-topology-operator derives AMQPS from the cluster
/// (`TLSEnabled()`: `spec.tls.secretName`), not from the referring resource:
/// a TLS cluster is amqps on 5671 even for a route without a tls block.
#[test]
fn a_tls_cluster_is_reached_over_amqps_whatever_the_route_says() {
    let user = |port: Option<&str>| {
        let mut kv = vec![("username", "u"), ("password", "p")];
        if let Some(p) = port {
            kv.push(("port", p));
        }
        secret_of("messaging", "rabbit-default-user", &kv)
    };
    let tls_cluster = Clusters {
        found: vec![cluster_object(
            "messaging",
            "rabbit",
            true,
            serde_json::json!({"tls": {"secretName": "rabbit-tls"}}),
            "",
        )],
        ..Default::default()
    };
    let own = |broker| cluster_route("messaging", broker);
    let url = |out: &Rendered| {
        String::from_utf8(out.secret["messaging.via-cluster.url"].clone()).unwrap()
    };
    let plain_route = own(serde_json::json!({"rabbitmqClusterRef": {"name": "rabbit"}}));
    // The cluster operator writes port 5671 for a TLS cluster.
    let out = render_owned(
        std::slice::from_ref(&plain_route),
        &[user(Some("5671"))],
        &tls_cluster,
        "/r",
        &Ownership::default(),
    );
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(url(&out), "amqps://u:p@rabbit.messaging.svc:5671/%2f");
    let out = render_owned(
        &[plain_route],
        &[user(None)],
        &tls_cluster,
        "/r",
        &Ownership::default(),
    );
    assert_eq!(url(&out), "amqps://u:p@rabbit.messaging.svc:5671/%2f");
    // A tls block asking for TLS from a cluster without it is an error, not plaintext.
    let plain_cluster = Clusters {
        found: vec![rabbitmq_cluster("messaging", "rabbit", true)],
        ..Default::default()
    };
    let out = render_owned(
        &[own(serde_json::json!({
            "rabbitmqClusterRef": {"name": "rabbit"},
            "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}}
        }))],
        &[user(None)],
        &plain_cluster,
        "/r",
        &Ownership::default(),
    );
    assert!(
        out.rejected[0]
            .1
            .message
            .contains("has no TLS (spec.tls.secretName)"),
        "{:?}",
        out.rejected
    );
}

/// Whoever may write a RabbitmqCluster's status must not be able to make the
/// operator hand another Secret's value to a broker: the default user is
/// `<cluster>-default-user` in the cluster's namespace, the Service
/// `<cluster>`, whatever the status names.
#[test]
fn a_cluster_status_cannot_point_at_another_secret_or_service() {
    let mut o = serde_json::json!({
        "apiVersion": "rabbitmq.com/v1beta1", "kind": "RabbitmqCluster",
        "metadata": {"name": "rabbit", "namespace": "messaging"},
        "status": {"defaultUser": {
            "secretReference": {"name": "payments-db", "namespace": "payments",
                                "keys": {"username": "user", "password": "dbpassword"}},
            "serviceReference": {"name": "evil", "namespace": "attacker"}}}
    });
    let c = cluster::Cluster::from_object(&o).unwrap();
    let user = c.default_user.as_ref().unwrap();
    assert_eq!(
        (user.namespace.as_str(), user.name.as_str()),
        ("messaging", "rabbit-default-user")
    );
    assert_eq!(user.key("password"), "password");
    assert_eq!(c.service, Some(("messaging".into(), "rabbit".into())));
    let stolen = secret_of(
        "payments",
        "payments-db",
        &[("user", "pay"), ("dbpassword", "s3cret")],
    );
    let real = secret_of(
        "messaging",
        "rabbit-default-user",
        &[("username", "u"), ("password", "p")],
    );
    let clusters = Clusters {
        found: vec![c],
        ..Default::default()
    };
    let out = render_owned(
        &[cluster_route(
            "messaging",
            serde_json::json!({"rabbitmqClusterRef": {"name": "rabbit"}}),
        )],
        &[stolen.clone(), real],
        &clusters,
        "/r",
        &Ownership::default(),
    );
    let url = String::from_utf8(out.secret["messaging.via-cluster.url"].clone()).unwrap();
    assert_eq!(url, "amqp://u:p@rabbit.messaging.svc:5672/%2f");
    // Without the real one the route waits; the other Secret is never used.
    let out = render_owned(
        &[cluster_route(
            "messaging",
            serde_json::json!({"rabbitmqClusterRef": {"name": "rabbit"}}),
        )],
        &[stolen],
        &clusters,
        "/r",
        &Ownership::default(),
    );
    assert!(
        out.rejected[0]
            .1
            .message
            .contains("messaging/rabbit-default-user"),
        "{:?}",
        out.rejected
    );
    o["status"] = serde_json::Value::Null;
    assert!(
        cluster::Cluster::from_object(&o)
            .unwrap()
            .default_user
            .is_none()
    );
}

/// A cluster in another namespace serves a route only when the operator
/// shares that namespace (sharedRabbitmqClusterNamespaces) and the cluster's
/// owner admits the route's namespace (MTO's annotation), `*` for all.
#[test]
fn another_namespaces_cluster_needs_both_gates() {
    let user = secret_of(
        "messaging",
        "rabbit-default-user",
        &[("username", "u"), ("password", "p")],
    );
    let route = cluster_route(
        "team",
        serde_json::json!({"rabbitmqClusterRef": {"name": "rabbit", "namespace": "messaging"}}),
    );
    let verdict = |allowed: &str, shared: bool| {
        let clusters = Clusters {
            found: vec![cluster_object(
                "messaging",
                "rabbit",
                true,
                serde_json::json!({}),
                allowed,
            )],
            shared_namespaces: if shared {
                vec!["messaging".into()]
            } else {
                vec![]
            },
            ..Default::default()
        };
        let out = render_owned(
            std::slice::from_ref(&route),
            std::slice::from_ref(&user),
            &clusters,
            "/r",
            &Ownership::default(),
        );
        out.rejected.first().map(|(_, r)| r.message.clone())
    };
    assert_eq!(verdict("team", true), None);
    assert_eq!(verdict("other, team", true), None);
    assert_eq!(verdict("*", true), None);
    let m = verdict("", true).unwrap();
    assert!(
        m.contains("does not admit namespace team") && m.contains("topology-allowed-namespaces"),
        "{m}"
    );
    assert!(
        verdict("other", true)
            .unwrap()
            .contains("does not admit namespace team")
    );
    assert!(
        verdict("team", false)
            .unwrap()
            .contains("sharedRabbitmqClusterNamespaces")
    );
}
