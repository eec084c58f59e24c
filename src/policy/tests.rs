use super::*;
use crate::model::message::Message;
use bytes::Bytes;

fn load(src: &str) -> Result<Arc<Policy>, PolicyError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.lua");
    std::fs::write(&path, src).unwrap();
    // The policy keeps its source; the directory may go.
    Policy::load(&path, Arc::new(AmqpPool::default()))
}

fn name(domain: &str) -> QueueName {
    QueueName::new(domain, Some("t"), Some("c"), None)
}

#[tokio::test]
async fn queue_config_from_the_first_handler_that_answers() {
    let p = load(
        r#"
        kumo.on('get_queue_config', function(domain, tenant, campaign)
          if domain ~= 'a' then return nil end
          return kumo.make_queue_config { retry_interval = '5m', max_age = 60,
            protocol = { custom_lua = { constructor = 'make.a', batch_size = 10 } } }
        end)
        kumo.on('get_queue_config', function(domain, tenant, campaign)
          assert(tenant == 't' and campaign == 'c')
          return kumo.make_queue_config {}
        end)
        "#,
    )
    .unwrap();
    let a = p.queue_config(&name("a")).await.unwrap();
    assert_eq!(a.retry_interval.as_secs(), 300);
    assert_eq!(a.max_age.as_secs(), 60);
    match a.protocol {
        crate::model::config::Protocol::CustomLua(c) => {
            assert_eq!(c.constructor, "make.a");
            assert_eq!(c.batch_size, 10);
        }
        other => panic!("{other:?}"),
    }
    // The empty table is KumoMTA's default config: SMTP.
    let b = p.queue_config(&name("b")).await.unwrap();
    assert_eq!(b.protocol, crate::model::config::Protocol::Smtp);
    assert_eq!(b.retry_interval.as_secs(), 20 * 60);
}

#[tokio::test]
async fn handler_returning_the_wrong_thing_is_an_error() {
    let p = load("kumo.on('get_queue_config', function() return 42 end)").unwrap();
    let err = p.queue_config(&name("a")).await.unwrap_err().to_string();
    assert!(err.contains("returned a integer"), "{err}");
}

/// KumoMTA's `make_egress_path` has `enable_tls`, this relay (no SMTP
/// delivery) does not: a handler that builds it fails the load, wherever
/// the probe reaches it, and names the key and the line.
#[tokio::test]
async fn a_refused_make_config_fails_the_load_not_the_first_message() {
    let bad = load(
        "kumo.on('get_egress_path_config', function(domain, source, site)\n\
           return kumo.make_egress_path { enable_tls = 'OpportunisticInsecure' }\n\
         end)",
    )
    .unwrap();
    let err = bad.probe(&[]).await.unwrap_err();
    assert!(matches!(err, PolicyError::BadConfig { .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("enable_tls"), "{err}");
    assert!(err.contains("policy.lua:2"), "names the line: {err}");

    // Only for the domains it routes: found when asked about a live queue.
    let conditional = load(
        "kumo.on('get_queue_config', function(domain)\n\
           if domain == 'amqp' then return kumo.make_queue_config { retry_interval = 'soon' } end\n\
         end)",
    )
    .unwrap();
    conditional.probe(&[]).await.unwrap();
    let err = conditional
        .probe(&[name("amqp")])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("retry_interval") && err.contains("amqp"),
        "{err}"
    );

    // A handler that raises for a domain it does not know is not a bad config.
    let strict = load(
        "kumo.on('get_egress_path_config', function(domain) error('no path for ' .. domain) end)",
    )
    .unwrap();
    strict.probe(&[]).await.unwrap();
}

#[tokio::test]
async fn egress_path_defaults_and_overrides() {
    let p = load("").unwrap();
    assert_eq!(
        p.egress_path_config(&name("a")).await.unwrap(),
        EgressPathConfig::default()
    );
    let p = load(
        "kumo.on('get_egress_path_config', function(domain, source, site)
           return kumo.make_egress_path { connection_limit = 2, idle_timeout = '1s' } end)",
    )
    .unwrap();
    let e = p.egress_path_config(&name("a")).await.unwrap();
    assert_eq!(e.connection_limit, 2);
    assert_eq!(e.idle_timeout.as_secs(), 1);
    let p = load("kumo.on('get_egress_path_config', function() return kumo.make_egress_path { connection_limit = 0 } end)").unwrap();
    let err = p
        .egress_path_config(&name("a"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("connection_limit must be at least 1"), "{err}");
    let p = load("kumo.on('get_egress_path_config', function() return kumo.make_egress_path { conection_limit = 2 } end)").unwrap();
    let err = p
        .egress_path_config(&name("a"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("conection_limit"), "{err}");
}

#[test]
fn unsupported_events_and_duplicates_fail_to_load() {
    let err = load("kumo.on('get_egress_pool', function() end)")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not supported by amqp-relay"), "{err}");
    let err = load("kumo.on('init', function() end)\nkumo.on('init', function() end)")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(":1") && err.contains(":2"), "{err}");
    // Multi-handler events take several.
    assert!(load("kumo.on('get_queue_config', function() end)\nkumo.on('get_queue_config', function() end)").is_ok());
}

#[tokio::test]
async fn init_collects_listeners_and_spool() {
    let p = load(
        "kumo.on('init', function()
           kumo.define_spool { name = 'data', path = '/tmp/x', kind = 'RocksDB' }
           kumo.define_spool { name = 'meta', path = '/tmp/y' }
           kumo.start_http_listener { listen = '127.0.0.1:0', trusted_hosts = { '10.0.0.0/8' } }
         end)",
    )
    .unwrap();
    let cfg = p.run_init().await.unwrap();
    assert!(cfg.has_init);
    assert_eq!(cfg.spool_dir.as_deref(), Some(Path::new("/tmp/x")));
    assert_eq!(
        cfg.http_listeners[0].trusted_hosts,
        vec!["10.0.0.0/8".to_string()]
    );
    assert!(!load("").unwrap().run_init().await.unwrap().has_init);
    let none = load(
        "kumo.on('init', function() kumo.define_spool { name = 'data', path = '/tmp/x' } end)",
    )
    .unwrap()
    .run_init()
    .await
    .unwrap_err()
    .to_string();
    assert!(none.contains("init starts no listener"), "{none}");
    // Outside init these are errors.
    let err = load("kumo.start_http_listener { listen = ':0' }")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("only be called from the 'init' event"),
        "{err}"
    );
}

#[test]
fn a_kumo_function_the_relay_lacks_fails_the_load_not_the_first_message() {
    let err = load(
        "kumo.on('smtp_server_message_received', function(msg)\n  local signer = kumo.dkim.rsa_sha256_signer { key = 'k' }\nend)",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains(":2: kumo.dkim is a KumoMTA function amqp-relay does not provide"),
        "{err}"
    );
    assert!(load("kumo.on('init', function() kumo.start_http_listener { listen = '127.0.0.1:0' } end)\nkumo.on('x', function() return kumo.string.trim(kumo.time.now().rfc3339) end)").is_ok());
}

#[tokio::test]
async fn smtp_trace_headers_as_kumomta_except_the_supplemental_header() {
    let init = |opts: &str| {
        format!(
            "kumo.on('init', function() kumo.start_esmtp_listener {{ listen = '127.0.0.1:0'{opts} }} end)"
        )
    };
    let cfg = load(&init("")).unwrap().run_init().await.unwrap();
    assert!(cfg.esmtp_listeners[0].received_header, "on by default");
    let off = ", trace_headers = { received_header = false, supplemental_header = false }";
    let cfg = load(&init(off)).unwrap().run_init().await.unwrap();
    assert!(!cfg.esmtp_listeners[0].received_header);
    let asked = ", trace_headers = { include_meta_names = { 'tenant' } }";
    let err = load(&init(asked))
        .unwrap()
        .run_init()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("X-KumoRef") && err.contains("kumo.start_esmtp_listener"),
        "{err}"
    );
}

#[tokio::test]
async fn message_object_and_json_helpers() {
    let p = load(
        r#"
        kumo.on('http_message_generated', function(msg)
          assert(tostring(msg:sender()) == 's@example.com')
          assert(msg:recipient().domain == 'amqp' and msg:recipient().user == 'u')
          assert(msg:get_first_named_header_value('subject') == 'hi')
          assert(msg:queue_name() == 'amqp')
          msg:set_meta('tenant', 'acme')
          msg:set_meta('n', { a = 1 })
          assert(msg:get_meta('n').a == 1)
          local j = kumo.json_decode(kumo.json_encode({ x = 'y', l = { 1, 2 } }))
          assert(j.x == 'y' and j.l[2] == 2)
          assert(kumo.serde.json_parse('[true]')[1] == true)
          msg:set_data(msg:get_data() .. '\0tail')
          if msg:num_attempts() ~= 0 then error('attempts') end
        end)
        "#,
    )
    .unwrap();
    let m = Arc::new(Message::new(
        "s@example.com".into(),
        "u@amqp".into(),
        Default::default(),
        Bytes::from_static(b"Subject: hi\r\n\r\nbody"),
    ));
    p.message_hook(&crate::policy::events::HTTP_MESSAGE_GENERATED, &m)
        .await
        .unwrap();
    assert_eq!(m.queue_name().unwrap().to_string(), "acme@amqp");
    assert!(m.data().unwrap().ends_with(b"\0tail"));
}

/// As KumoMTA's docs show them: tag the message, take the X- headers into
/// meta (campaign routing, logging), then strip them before it leaves.
#[tokio::test]
async fn header_methods_work_as_kumomta_documents() {
    let p = load(
        r#"
        kumo.on('smtp_server_message_received', function(msg)
          msg:prepend_header('Received', 'from relay')
          msg:append_header('X-Relay', 'amqp-relay')
          msg:import_x_headers()
          msg:set_meta('campaign', msg:get_meta('x_campaign_id'))
          msg:remove_x_headers { 'x-mailer' }
          local received = msg:get_all_named_header_values('received')
          assert(#received == 2 and received[1] == 'from relay', received[1])
          msg:remove_all_named_headers('Received')
          msg:prepend_header('Subject', 'Grüße', true)
        end)
        "#,
    )
    .unwrap();
    let m = Arc::new(Message::new(
        "s@example.com".into(),
        "u@amqp".into(),
        Default::default(),
        Bytes::from_static(
            b"Received: from client\r\nX-Campaign-ID: spring\r\nX-Mailer: foo\r\n\r\nbody\r\n",
        ),
    ));
    p.message_hook(&crate::policy::events::SMTP_SERVER_MESSAGE_RECEIVED, &m)
        .await
        .unwrap();
    assert_eq!(m.get_meta("x_mailer"), Some(serde_json::json!("foo")));
    assert_eq!(m.queue_name().unwrap().to_string(), "spring:@amqp");
    let data = m.data().unwrap();
    let text = String::from_utf8_lossy(&data);
    assert!(text.starts_with("Subject: =?utf-8?"), "{text}");
    assert!(
        text.ends_with("X-Campaign-ID: spring\r\nX-Relay: amqp-relay\r\n\r\nbody\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("Received") && !text.contains("X-Mailer"),
        "{text}"
    );

    let bad = load(
        "kumo.on('smtp_server_message_received', function(msg) msg:append_header('X-A', 'v\\r\\nBcc: x@y') end)",
    )
    .unwrap();
    let err = bad
        .message_hook(&crate::policy::events::SMTP_SERVER_MESSAGE_RECEIVED, &m)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("append_header") && err.contains("fold"),
        "{err}"
    );
}

#[tokio::test]
async fn unsupported_message_methods_are_refused_at_load_and_named_at_run_time() {
    let err = load(
        "kumo.on('smtp_server_message_received', function(msg)\n  msg:dkim_sign(signer)\nend)",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("policy.lua:2: message:dkim_sign() is a KumoMTA method"),
        "{err}"
    );
    // Called in a way the scan cannot see: named when it runs, not a nil call.
    let p = load("kumo.on('smtp_server_message_received', function(msg) local f = 'set_' .. 'sender'; msg[f](msg, 'a@b') end)").unwrap();
    let m = Arc::new(Message::new(
        "s@x".into(),
        "u@amqp".into(),
        Default::default(),
        Bytes::new(),
    ));
    let err = p
        .message_hook(&crate::policy::events::SMTP_SERVER_MESSAGE_RECEIVED, &m)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("message:set_sender() is a KumoMTA method amqp-relay does not provide"),
        "{err}"
    );
}

/// The batched form of KumoMTA's helper (since 2024.11.08), as Postmastery's
/// KumoMTA integration guide writes it: batch options beside the name, and a
/// sender whose method "must be named send_batch when batch_size > 1".
#[tokio::test]
async fn log_hooks_helper_takes_kumomtas_batch_options() {
    let p = load(
        r#"
        local log_hooks = require 'policy-extras.log_hooks'
        kumo.on('init', function() kumo.start_http_listener { listen = '127.0.0.1:0' } end)
        log_hooks:new {
          name = 'postmastery-webhook',
          batch_size = 500,
          min_batch_size = 100,
          max_batch_latency = "60s",
          log_parameters = { meta = { 'from', 'subject' } },
          constructor = function(domain, tenant, campaign)
            local connection = {}
            function connection:send_batch(messages) return '250 ok' end
            return connection
          end,
        }
        "#,
    )
    .unwrap();
    let q = p
        .queue_config(&QueueName::new(
            "postmastery-webhook.log_hook",
            None,
            None,
            None,
        ))
        .await
        .unwrap();
    let crate::model::config::Protocol::CustomLua(c) = q.protocol else {
        panic!("custom_lua expected: {:?}", q.protocol);
    };
    assert_eq!(c.constructor, "make.postmastery-webhook.log_hook");
    assert_eq!((c.batch_size, c.min_batch_size), (500, 100));
    assert_eq!(c.max_batch_latency, std::time::Duration::from_secs(60));
}

#[tokio::test]
async fn log_hooks_helper_behaves_as_kumomtas() {
    let p = load(
        r#"
        local log_hooks = require 'policy-extras.log_hooks'
        kumo.on('init', function() kumo.start_http_listener { listen = '127.0.0.1:0' } end)
        log_hooks:new {
          name = 'webhook',
          log_parameters = { headers = { 'Subject' } },
          queue_config = { max_retry_interval = '5m' },
          constructor = function(domain, tenant, campaign) return {} end,
        }
        "#,
    )
    .unwrap();
    assert!(p.defines("make.webhook.log_hook"));
    let q = p
        .queue_config(&QueueName::new("webhook.log_hook", None, None, None))
        .await
        .unwrap();
    assert_eq!(q.retry_interval, std::time::Duration::from_secs(60));
    assert_eq!(
        q.max_retry_interval,
        Some(std::time::Duration::from_secs(300))
    );
    assert!(
        matches!(q.protocol, crate::model::config::Protocol::CustomLua(ref c) if c.constructor == "make.webhook.log_hook")
    );
    // A mail domain named like the hook is not the hook's.
    let mail = p
        .queue_config(&QueueName::new("webhook", None, None, None))
        .await
        .unwrap();
    assert_eq!(mail.protocol, crate::model::config::Protocol::Smtp);
    let init = p.run_init().await.unwrap();
    assert_eq!(init.log_hooks[0].name, "webhook");
    assert_eq!(init.log_hooks[0].headers, ["Subject"]);

    for (src, want) in [
        (
            "log_hooks:new { name = 'a', constructor = function() end, filter = function() end }",
            "log_hooks:new: option 'filter' is not supported: amqp-relay has no log_hooks filter",
        ),
        (
            "log_hooks:new { name = 'a', constructor = function() end, batch_size = 2, min_batch_size = 5 }",
            "log_hooks:new: kumo.make_queue_config: min_batch_size must not exceed batch_size",
        ),
        (
            "log_hooks:new { name = 'a', constructor = function() end, batch_size = '10' }",
            "log_hooks:new: 'batch_size' must be a number, not string",
        ),
        (
            "log_hooks:new { name = 'a', constructor = function() end, url = 'http://x/' }",
            "log_hooks:new: unknown option 'url'",
        ),
        ("log_hooks:new { name = 'a' }", "'constructor' is required"),
        (
            "log_hooks:new { name = 'a', constructor = function() end }\nlog_hooks:new { name = 'a', constructor = function() end }",
            "log_hook with name 'a' has already been configured",
        ),
        (
            "log_hooks:new_json { name = 'a', url = 'http://x/' }",
            "log_hooks:new_json posts records over HTTP (kumo.http), which amqp-relay does not provide",
        ),
    ] {
        let err = load(&format!(
            "local log_hooks = require 'policy-extras.log_hooks'\n{src}"
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains(want), "{src}: {err}");
        assert!(
            err.contains("policy.lua:"),
            "names the policy's line: {err}"
        );
    }
}

#[test]
fn kumomtas_other_helpers_are_refused_by_name_at_load() {
    let err = load("local queue_module = require 'policy-extras.shaping'")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("policy.lua:1:")
            && err.contains("require 'policy-extras.shaping': not provided by amqp-relay"),
        "{err}"
    );
}

#[tokio::test]
async fn reject_in_a_hook_is_a_rejection() {
    let p =
        load("kumo.on('http_message_generated', function(msg) kumo.reject(552, 'too big') end)")
            .unwrap();
    let m = Arc::new(Message::new(
        "s@x".into(),
        "u@amqp".into(),
        Default::default(),
        Bytes::new(),
    ));
    match p
        .message_hook(&crate::policy::events::HTTP_MESSAGE_GENERATED, &m)
        .await
    {
        Err(PolicyError::Rejected(r)) => {
            assert_eq!(r.code, 552);
            assert_eq!(r.message, "too big");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn require_finds_modules_beside_the_policy_but_no_native_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("helper.lua"), "return { answer = 42 }").unwrap();
    let path = dir.path().join("policy.lua");
    std::fs::write(
        &path,
        "local h = require 'helper'\nassert(h.answer == 42)\nassert(package.cpath == '')",
    )
    .unwrap();
    Policy::load(&path, Arc::new(AmqpPool::default())).unwrap();
}

#[tokio::test]
async fn a_module_required_only_inside_a_handler_is_part_of_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.lua");
    std::fs::write(
        &path,
        r#"
        kumo.on('get_queue_config', function(domain)
          local lazy = require 'lazy'
          return kumo.make_queue_config { retry_interval = lazy.interval }
        end)
        "#,
    )
    .unwrap();
    let lazy = dir.path().join("lazy.lua");
    std::fs::write(&lazy, "return { interval = '7s' }").unwrap();
    let p = Policy::load(&path, Arc::new(AmqpPool::default())).unwrap();
    assert!(
        p.files().contains_key(&lazy.display().to_string()),
        "the version reports the module: {:?}",
        p.files()
    );
    // The file changes on disk; this version still runs what it reported,
    // in its pooled state and in a state made afresh.
    std::fs::write(&lazy, "return { interval = '9s' }").unwrap();
    let states: Vec<_> = (0..2).map(|_| p.acquire().unwrap()).collect();
    drop(states);
    for _ in 0..3 {
        let c = p.queue_config(&name("a")).await.unwrap();
        assert_eq!(c.retry_interval.as_secs(), 7);
    }
    let next = Policy::load(&path, Arc::new(AmqpPool::default())).unwrap();
    assert_ne!(next.hash(), p.hash(), "a new version sees the change");
    assert_eq!(
        next.queue_config(&name("a"))
            .await
            .unwrap()
            .retry_interval
            .as_secs(),
        9
    );
}
