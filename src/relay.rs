//! `amqp-relay relay`: load the policy, open the spool, re-queue, listen.

use crate::engine::Engine;
use crate::engine::logs::Logs;
use crate::engine::spool::Spool;
use crate::listeners::http;
use crate::listeners::smtp::{self, EsmtpListener};
use crate::model::listener_config::{HttpListener, loopback};
use crate::policy::Policy;
use crate::policy::amqp::AmqpPool;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// CIDRs allowed to relay over SMTP (with --smtp-listen).
    #[arg(long, env = "AMQP_RELAY_SMTP_RELAY_HOSTS", value_delimiter = ',', default_values_t = loopback())]
    pub smtp_relay_hosts: Vec<String>,
}

pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    let amqp = Arc::new(AmqpPool::default());
    let policy = Policy::load(&args.policy, amqp)?;
    let init = policy.run_init().await?;
    let local_logs = init.local_logs;
    let log_hooks = init.log_hooks;
    let (listeners, smtp_listeners, data_dir) = if init.has_init {
        (
            init.http_listeners,
            init.esmtp_listeners,
            init.spool_dir.unwrap_or(args.data_dir),
        )
    } else {
        (
            vec![HttpListener {
                listen: args.http_listen,
                trusted_hosts: args.http_trusted_hosts,
            }],
            args.smtp_listen
                .map(|listen| {
                    let mut l = EsmtpListener::with_defaults(listen);
                    l.relay_hosts = args.smtp_relay_hosts;
                    l
                })
                .into_iter()
                .collect(),
            args.data_dir,
        )
    };
    // Check listener settings before anything is opened.
    let smtp_settings = smtp_listeners
        .into_iter()
        .map(smtp::Settings::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;

    let (spool, recovered) = Spool::open(&data_dir)?;
    if recovered.quarantined > 0 {
        tracing::error!(
            count = recovered.quarantined,
            "corrupt spool records were set aside"
        );
    }
    let (logs, hook_rx) = Logs::new(local_logs, log_hooks).map_err(anyhow::Error::msg)?;
    let engine = Engine::new(spool, policy.clone(), logs);
    if let Some(rx) = hook_rx {
        tokio::spawn(crate::engine::logs::run_hooks(engine.clone(), rx));
    }
    let n = recovered.messages.len();
    let started = std::time::Instant::now();
    engine
        .requeue(recovered.messages.into_iter().map(Arc::new).collect())
        .await;
    tracing::info!(messages = n, elapsed = ?started.elapsed(), policy = %policy.path().display(), hash = %policy.hash(), "spool recovered");

    if let Some(spec) = &args.policy_configmap {
        let target =
            crate::engine::configmap_watch::Target::parse(spec, args.policy_configmap_dir.clone())
                .map_err(anyhow::Error::msg)?;
        crate::engine::configmap_watch::spawn(engine.clone(), target);
    }
    if args.watch_policy {
        crate::engine::policy_watch::spawn(engine.clone()).map_err(anyhow::Error::msg)?;
    }

    let mut servers = tokio::task::JoinSet::new();
    for l in listeners {
        let trusted = http::parse_trusted(&l.trusted_hosts).map_err(anyhow::Error::msg)?;
        let sock = tokio::net::TcpListener::bind(&l.listen)
            .await
            .with_context(|| format!("http listener: cannot bind {}", l.listen))?;
        // Logged here, not in the task, so the lines come in declaration order.
        tracing::info!(target: "amqp_relay::listeners", "http listener on {}", sock.local_addr()?);
        servers.spawn(http::serve(sock, engine.clone(), trusted));
    }

    for settings in smtp_settings {
        let sock = tokio::net::TcpListener::bind(&settings.cfg.listen)
            .await
            .with_context(|| format!("smtp listener: cannot bind {}", settings.cfg.listen))?;
        tracing::info!(target: "amqp_relay::listeners", "smtp listener on {}", sock.local_addr()?);
        servers.spawn(smtp::serve(sock, engine.clone(), settings));
    }

    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        Some(r) = servers.join_next() => {
            match r {
                Ok(Err(e)) => tracing::error!(error = %e, "listener failed"),
                Err(e) => tracing::error!(error = %e, "listener task failed"),
                Ok(Ok(())) => {}
            }
        }
    }
    engine.shutdown().await?;
    while servers.join_next().await.is_some() {}
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
