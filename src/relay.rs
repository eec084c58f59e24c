//! `amqp-relay relay`: load the policy, open the spool, re-queue, listen.

use crate::engine::logs::Logs;
use crate::engine::spool::Spool;
use crate::engine::{Engine, Limits};
use crate::listeners::http;
use crate::listeners::smtp::{self, EsmtpListener};
use crate::model::listener_config::{HttpListener, loopback};
use crate::policy::Policy;
use crate::policy::amqp::AmqpPool;
use crate::policy::kumo::InitConfig;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct RelayArgs {
    /// The Lua policy file.
    #[arg(long, env = "AMQP_RELAY_POLICY")]
    pub policy: PathBuf,
    /// Spool directory, when the policy's init does not define one.
    #[arg(
        long,
        env = "AMQP_RELAY_DATA_DIR",
        default_value = "/var/spool/amqp-relay"
    )]
    pub data_dir: PathBuf,
    /// HTTP listener, when the policy's init starts none.
    #[arg(long, env = "AMQP_RELAY_HTTP_LISTEN", default_value = "127.0.0.1:8000")]
    pub http_listen: String,
    /// CIDRs allowed to inject over HTTP (with --http-listen).
    #[arg(long, env = "AMQP_RELAY_HTTP_TRUSTED_HOSTS", value_delimiter = ',', default_values_t = loopback())]
    pub http_trusted_hosts: Vec<String>,
    /// SMTP listener, when the policy has no init (none by default).
    #[arg(long, env = "AMQP_RELAY_SMTP_LISTEN")]
    pub smtp_listen: Option<String>,
    /// Reload the policy when its files change (on by default).
    #[arg(long, env = "AMQP_RELAY_WATCH_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_policy: bool,
    /// Also watch the policy ConfigMap through the Kubernetes API (NAMESPACE/NAME),
    /// for changes in well under a second instead of the kubelet's minute or two.
    #[arg(long, env = "AMQP_RELAY_POLICY_CONFIGMAP")]
    pub policy_configmap: Option<String>,
    /// Where that ConfigMap is mounted: its keys are the files of this directory.
    #[arg(
        long,
        env = "AMQP_RELAY_POLICY_CONFIGMAP_DIR",
        default_value = "/etc/amqp-relay/routes-policy"
    )]
    pub policy_configmap_dir: PathBuf,
    /// Also watch the routes Secret (the brokers' credentials) through the
    /// API (NAMESPACE/NAME): `kumo.secret_load` reads its keys as the files of
    /// --routes-secret-dir before the disk, and a change reloads the policy.
    #[arg(long, env = "AMQP_RELAY_ROUTES_SECRET")]
    pub routes_secret: Option<String>,
    #[arg(
        long,
        env = "AMQP_RELAY_ROUTES_SECRET_DIR",
        default_value = crate::policy::overlay::DEFAULT_SECRETS_DIR
    )]
    pub routes_secret_dir: PathBuf,
    /// With --policy-configmap: how long to wait for the Kubernetes API to
    /// answer before serving the mounted copies of the ConfigMap and Secret
    /// (a relay restarted while the control plane is down, or with broken
    /// RBAC); the watch takes over when the API answers. 0: never.
    #[arg(long, env = "AMQP_RELAY_API_WAIT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub api_wait_timeout: Duration,
    /// CIDRs allowed to relay over SMTP (with --smtp-listen).
    #[arg(long, env = "AMQP_RELAY_SMTP_RELAY_HOSTS", value_delimiter = ',', default_values_t = loopback())]
    pub smtp_relay_hosts: Vec<String>,
    /// Messages held in memory (ready or being delivered), whatever the
    /// backlog; the rest wait on the spool's schedule on disk.
    #[arg(long, env = "AMQP_RELAY_MAX_ACTIVE_MESSAGES", default_value_t = 20_000)]
    pub max_active_messages: usize,
    /// Bytes of message bodies kept in memory for those messages; past it,
    /// bodies are read back from the spool to be delivered.
    #[arg(long, env = "AMQP_RELAY_BODY_MEMORY", default_value = "64MiB", value_parser = parse_bytes)]
    pub body_memory: u64,
    /// The spool database's page cache.
    #[arg(long, env = "AMQP_RELAY_SPOOL_CACHE", default_value = "4MiB", value_parser = parse_bytes)]
    pub spool_cache: u64,
    /// A queue with nothing to do for this long is dropped from memory.
    #[arg(long, env = "AMQP_RELAY_QUEUE_IDLE", default_value = "60s", value_parser = parse_duration)]
    pub queue_idle: Duration,
    /// Held messages (the running policy routes no longer their queue)
    /// expire, with an Expiration record, once they have waited this long.
    #[arg(long, env = "AMQP_RELAY_HELD_MAX_AGE", default_value = "7d", value_parser = parse_duration)]
    pub held_max_age: Duration,
    /// On SIGTERM, after reception stops: how long to go on delivering what
    /// the spool holds (until it is empty, or nothing left can go out before
    /// this passes) before stopping; 0: stop at once. Keep it and
    /// --shutdown-timeout together below the pod's termination grace period.
    #[arg(long, env = "AMQP_RELAY_DRAIN_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// A ConfigMap (NAMESPACE/NAME) where the relay writes, under
    /// --spool-name, what its spool holds when it stops (and that it runs):
    /// the operator drains spools a scale-in left with mail in them.
    #[arg(long, env = "AMQP_RELAY_SPOOL_REPORT_CONFIGMAP")]
    pub spool_report_configmap: Option<String>,
    /// This spool's name in that ConfigMap (the pod's name).
    #[arg(long, env = "AMQP_RELAY_SPOOL_NAME")]
    pub spool_name: Option<String>,
    /// On SIGTERM, how long listeners and delivery sessions may take to
    /// finish what they are doing; keep it below the pod's termination grace period.
    #[arg(long, env = "AMQP_RELAY_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    crate::model::config::parse_size(s)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::model::config::parse_duration(s)
}

impl RelayArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_active: self.max_active_messages.max(1),
            body_memory: usize::try_from(self.body_memory).unwrap_or(usize::MAX),
            queue_idle: self.queue_idle,
            held_max_age: self.held_max_age,
        }
    }
}

/// What the relay serves, from the policy's `init` or else the flags.
struct Setup {
    http: Vec<HttpListener>,
    smtp: Vec<smtp::Settings>,
    data_dir: PathBuf,
}

fn setup(init: InitConfig, args: &RelayArgs) -> anyhow::Result<Setup> {
    let (http, smtp, data_dir) = if init.has_init {
        (
            init.http_listeners,
            init.esmtp_listeners,
            init.spool_dir.unwrap_or_else(|| args.data_dir.clone()),
        )
    } else {
        (
            vec![HttpListener::with_defaults(
                args.http_listen.clone(),
                args.http_trusted_hosts.clone(),
            )],
            args.smtp_listen
                .iter()
                .map(|listen| {
                    let mut l = EsmtpListener::with_defaults(listen.clone());
                    l.relay_hosts = args.smtp_relay_hosts.clone();
                    l
                })
                .collect(),
            args.data_dir.clone(),
        )
    };
    // Check listener settings before anything is opened.
    let smtp = smtp
        .into_iter()
        .map(smtp::Settings::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    Ok(Setup {
        http,
        smtp,
        data_dir,
    })
}

/// A relay engine on its spool, with its routes watched, not listening yet.
struct Started {
    engine: Arc<Engine>,
    setup: Setup,
    marker: crate::spool_marker::Marker,
}

async fn start(args: &RelayArgs) -> anyhow::Result<Started> {
    let amqp = Arc::new(AmqpPool::default());
    let policy = Policy::load(&args.policy, amqp)?;
    let mut init = policy.run_init().await?;
    policy.probe(&[]).await?;
    let (local_logs, log_hooks) = (init.local_logs.take(), std::mem::take(&mut init.log_hooks));
    let setup = setup(init, args)?;

    let started = std::time::Instant::now();
    let cache = usize::try_from(args.spool_cache).unwrap_or(usize::MAX);
    let (spool, opened) = Spool::open_with_cache(&setup.data_dir, cache)?;
    let node = crate::engine::log_record::init_node_id(&setup.data_dir)
        .map_err(|e| anyhow::anyhow!("node id in {}: {e}", setup.data_dir.display()))?;
    tracing::info!(%node, "log records carry this node id");
    if opened.quarantined > 0 {
        tracing::error!(
            count = opened.quarantined,
            "corrupt spool records were set aside"
        );
    }
    tracing::info!(messages = opened.messages, elapsed = ?started.elapsed(), policy = %policy.path().display(), hash = %policy.hash(), "spool opened");
    let marker = crate::spool_marker::Marker::new(
        &setup.data_dir,
        args.spool_report_configmap.as_deref(),
        args.spool_name.as_deref(),
    )
    .await;
    marker
        .publish(&crate::model::spool_report::SpoolReport::running(
            crate::model::message::now_ms() / 1000,
        ))
        .await;
    let (logs, hook_rx) = Logs::new(local_logs, log_hooks).map_err(anyhow::Error::msg)?;
    let engine = Engine::new(spool, policy.clone(), logs, args.limits());
    if let Some(rx) = hook_rx {
        tokio::spawn(crate::engine::logs::run_hooks(engine.clone(), rx));
    }
    crate::routes_api::watch_routes(
        &engine,
        crate::routes_api::Settings {
            policy_configmap: args.policy_configmap.as_deref(),
            routes_secret: args.routes_secret.as_deref(),
            policy_configmap_dir: args.policy_configmap_dir.clone(),
            routes_secret_dir: args.routes_secret_dir.clone(),
            api_wait_timeout: args.api_wait_timeout,
        },
    )?;
    if args.watch_policy {
        crate::engine::policy_watch::spawn(engine.clone()).map_err(anyhow::Error::msg)?;
    }
    engine.start();
    Ok(Started {
        engine,
        setup,
        marker,
    })
}

/// Runs the relay until `shutdown` resolves (SIGTERM in production) or a
/// listener fails, then drains and stops.
pub async fn run(
    args: RelayArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let Started {
        engine,
        setup,
        marker,
    } = start(&args).await?;
    let mut servers = listen(&engine, setup).await?;
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        Some(r) = servers.join_next() => {
            match r {
                Ok(Err(e)) => tracing::error!(error = %e, "listener failed"),
                Err(e) => tracing::error!(error = %e, "listener task failed"),
                Ok(Ok(())) => {}
            }
        }
    }
    let drain = if args.drain_timeout.is_zero() {
        engine.close_reception();
        None
    } else {
        Some(drain(&engine, args.drain_timeout).await?)
    };
    let report = stop(&engine, servers, args.shutdown_timeout, drain).await?;
    marker.publish(&report).await;
    Ok(())
}

/// Reception stops (readiness off, SMTP closed, HTTP injection refused;
/// health, metrics and admin still answer), and what the spool holds goes
/// out until it is empty, nothing left can go out in time, or `limit` passes.
async fn drain(
    engine: &Arc<Engine>,
    limit: Duration,
) -> anyhow::Result<crate::engine::drain::DrainEnd> {
    engine.close_reception();
    engine.metrics.draining.set(1);
    tracing::info!(
        ?limit,
        "draining: taking no new mail, delivering what the spool holds"
    );
    let end = engine.drain(limit).await?;
    tracing::info!(?end, "drain over");
    Ok(end)
}

async fn listen(
    engine: &Arc<Engine>,
    setup: Setup,
) -> anyhow::Result<tokio::task::JoinSet<std::io::Result<()>>> {
    let http_listeners = setup
        .http
        .into_iter()
        .map(|cfg| http::Listener::new(cfg, engine.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let mut servers = tokio::task::JoinSet::new();
    for l in http_listeners {
        let sock = tokio::net::TcpListener::bind(&l.cfg.listen)
            .await
            .with_context(|| format!("http listener: cannot bind {}", l.cfg.listen))?;
        // Logged here, not in the task, so the lines come in declaration order.
        tracing::info!(target: "amqp_relay::listeners", "http listener on {}", sock.local_addr()?);
        servers.spawn(l.serve(sock));
    }
    for settings in setup.smtp {
        let sock = tokio::net::TcpListener::bind(&settings.cfg.listen)
            .await
            .with_context(|| format!("smtp listener: cannot bind {}", settings.cfg.listen))?;
        tracing::info!(target: "amqp_relay::listeners", "smtp listener on {}", sock.local_addr()?);
        servers.spawn(smtp::serve(sock, engine.clone(), settings));
    }
    Ok(servers)
}

/// A graceful stop: readiness off and no new connections; listeners finish
/// the requests and transactions under way, delivery sessions their current
/// send (all within `limit`); then everything is made durable. What was not
/// sent stays spooled, and what was sent is removed, so a restart delivers
/// each message once. Returns what the spool holds.
async fn stop(
    engine: &Arc<Engine>,
    mut servers: tokio::task::JoinSet<std::io::Result<()>>,
    limit: Duration,
    drain: Option<crate::engine::drain::DrainEnd>,
) -> anyhow::Result<crate::model::spool_report::SpoolReport> {
    let deadline = tokio::time::Instant::now() + limit;
    engine.begin_shutdown();
    let listeners = async { while servers.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, listeners).await.is_err() {
        tracing::warn!(
            ?limit,
            "listeners still busy at the shutdown limit; closing them"
        );
        servers.abort_all();
    }
    let left = engine
        .drain_sessions(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    if left > 0 {
        tracing::warn!(
            sessions = left,
            "delivery sessions still sending at the shutdown limit; their messages stay spooled and are sent again after the restart"
        );
    }
    let report = engine.finish(drain).await?;
    if report.left > 0 {
        tracing::warn!(left = report.left, queues = ?report.queues, held = ?report.held, "stopped with mail in the spool");
    }
    tracing::info!(left = report.left, "stopped");
    Ok(report)
}

#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    pub relay: RelayArgs,
    /// How long to deliver before giving up.
    #[arg(long = "timeout", env = "AMQP_RELAY_DRAIN_JOB_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Try messages that wait for a later retry once now (as `postqueue -f`).
    #[arg(long, env = "AMQP_RELAY_DRAIN_RETRY_NOW", default_value_t = true, action = clap::ArgAction::Set)]
    pub retry_now: bool,
}

/// What `amqp-relay drain` exits with when mail is left.
pub const DRAIN_LEFT_MAIL: u8 = 3;

/// `amqp-relay drain`: the relay on a spool, with its policy and routes but
/// no listeners, delivering until the spool is empty, nothing left can go
/// out, or the timeout; it reports what is left and exits 0 only if nothing is.
pub async fn drain_job(
    args: DrainArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<std::process::ExitCode> {
    let Started { engine, marker, .. } = start(&args.relay).await?;
    engine.close_reception();
    if args.retry_now {
        let moved = engine.retry_now().await?;
        tracing::info!(moved, "messages waiting for a later retry are due now");
    }
    let end = tokio::select! {
        end = engine.drain(args.timeout) => Some(end?),
        _ = shutdown => None,
    };
    let report = stop(
        &engine,
        tokio::task::JoinSet::new(),
        args.relay.shutdown_timeout,
        end,
    )
    .await?;
    marker.publish(&report).await;
    println!("{}", serde_json::to_string(&report)?);
    Ok(if report.left == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(DRAIN_LEFT_MAIL)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        relay: RelayArgs,
    }

    #[test]
    fn the_spool_cache_flag_defaults_to_the_spools_own_default() {
        let cmd = Cmd::try_parse_from(["relay", "--policy", "p.lua"]).unwrap();
        assert_eq!(
            cmd.relay.spool_cache,
            crate::engine::spool::DEFAULT_CACHE_BYTES as u64
        );
    }
}
