//! The command line: `relay` and `check`.

use crate::policy::Policy;
use crate::policy::amqp::AmqpPool;
use crate::relay::{self, RelayArgs};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "amqp-relay",
    version,
    about = "Relay SMTP and HTTP traffic into RabbitMQ through a KumoMTA-compatible Lua policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads running listeners, policies and deliveries [default: one per
    /// core but one, left to the spool writer and the broker connections'
    /// I/O threads; at least one].
    #[arg(long, global = true, env = "AMQP_RELAY_WORKER_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay engine on a policy.
    Relay(RelayArgs),
    /// Deliver what a spool holds, with the relay's policy and routes but no
    /// listeners, then exit: 0 when the spool is empty, 3 when mail is left
    /// (held, or undeliverable in time); the report goes to stdout, the
    /// spool's directory and, with --spool-report-configmap, the API.
    Drain(crate::relay::DrainArgs),
    /// Run the operator: AmqpRoutes → policy ConfigMap + credentials Secret, with status.
    Operator(crate::operator::run::OperatorArgs),
    /// Print the AmqpRoute CustomResourceDefinition (YAML).
    Crd,
    /// Talk to a running relay's admin API: queue-summary, bounce, suspend,
    /// resume, suspensions, bump-epoch, policy.
    Admin(crate::admin_cli::AdminArgs),
    /// Render, offline, the ConfigMap and Secret the operator would write from
    /// AmqpRoute (and Secret, RabbitmqCluster) YAML. Rejected routes are reported on stderr and
    /// make the exit code non-zero.
    Render {
        /// YAML files or directories of them.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// The relay the policy is for: objects are named <relay>-policy and <relay>-routes.
        #[arg(long, default_value = "amqp-relay")]
        relay: String,
        /// Namespace of the output, and of inputs that name none.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Where the relay mounts the routes Secret.
        #[arg(long, default_value = crate::operator::render::DEFAULT_SECRETS_DIR)]
        secrets_dir: String,
        /// As the operator's: namespaces whose RabbitmqClusters routes of
        /// other namespaces may use.
        #[arg(long, value_delimiter = ',')]
        shared_rabbitmq_cluster_namespaces: Vec<String>,
        /// As the operator's: namespaces whose routes' logEvents take every
        /// queue's log records.
        #[arg(long, value_delimiter = ',')]
        log_events_all_namespaces: Vec<String>,
    },
    /// Load a policy and report errors (file and line) without serving.
    Check {
        #[arg(long, env = "AMQP_RELAY_POLICY")]
        policy: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,lapin=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour for a person at a terminal; plain text for a log file or a collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match runtime(cli.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Not more workers than cores: the relay's own threads (spool writer,
/// broker I/O) are busy under load, and idle workers woken for each confirm
/// cost more CPU than they add. A policy computing for long hands its
/// worker's other tasks away (`policy::call_limit`) instead.
fn runtime(workers: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = workers.map_or_else(
        || {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .saturating_sub(1)
                .max(1)
        },
        usize::from,
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

/// Runs one command; the long-running ones until SIGTERM or Ctrl-C.
async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Relay(args) => relay::run(args, crate::signal::terminated()).await,
        Command::Drain(args) => return relay::drain_job(args, crate::signal::terminated()).await,
        Command::Check { policy } => check(policy).await,
        Command::Render {
            files,
            relay,
            namespace,
            secrets_dir,
            shared_rabbitmq_cluster_namespaces,
            log_events_all_namespaces,
        } => {
            let ownership = crate::operator::ownership::Ownership::default()
                .with_all_log_records(log_events_all_namespaces);
            render(
                files,
                &relay,
                &namespace,
                &secrets_dir,
                &shared_rabbitmq_cluster_namespaces,
                &ownership,
            )
            .await
        }
        Command::Operator(args) => {
            crate::operator::run::run(args, crate::signal::terminated()).await
        }
        Command::Crd => {
            print!("{}", crate::operator::crd::crd_yaml());
            Ok(())
        }
        Command::Admin(args) => crate::admin_cli::run(args).await,
    }
    .map(|()| ExitCode::SUCCESS)
}

async fn check(path: PathBuf) -> anyhow::Result<()> {
    let policy = Policy::load(&path, Arc::new(AmqpPool::default()))?;
    let init = policy.run_init().await?;
    policy.probe(&[]).await?;
    // What the relay would refuse at start is refused here too.
    for l in &init.http_listeners {
        crate::listeners::http::checked(l).map_err(anyhow::Error::msg)?;
    }
    for l in &init.esmtp_listeners {
        crate::listeners::smtp::Settings::new(l.clone()).map_err(anyhow::Error::msg)?;
    }
    if init.has_init {
        println!(
            "policy {} is valid (init: {} http and {} smtp listener(s), {} log hook(s))",
            path.display(),
            init.http_listeners.len(),
            init.esmtp_listeners.len(),
            init.log_hooks.len()
        );
    } else {
        println!("policy {} is valid (no init event)", path.display());
    }
    Ok(())
}

fn yaml_files(path: &std::path::Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            if p.is_dir() || yaml {
                yaml_files(&p, out)?;
            }
        }
    } else {
        out.push(path.to_owned());
    }
    Ok(())
}

async fn render(
    files: Vec<PathBuf>,
    relay: &str,
    namespace: &str,
    secrets_dir: &str,
    shared_cluster_namespaces: &[String],
    ownership: &crate::operator::ownership::Ownership,
) -> anyhow::Result<()> {
    use crate::operator::{manifests, render};
    let mut paths = Vec::new();
    for f in &files {
        yaml_files(f, &mut paths)?;
    }
    let mut inputs = manifests::Inputs::default();
    for p in &paths {
        let text =
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        manifests::read_yaml(&text, &p.display().to_string(), namespace, &mut inputs);
    }
    for s in &inputs.skipped {
        eprintln!("note: {s}");
    }
    for e in &inputs.errors {
        eprintln!("error: {e}");
    }
    inputs.routes.retain(|r| {
        let ours = r.served_by(relay, namespace, true);
        if !ours {
            eprintln!(
                "note: route {}/{}: its relayRef names another relay; left out",
                r.metadata.namespace.as_deref().unwrap_or(namespace),
                r.metadata.name.as_deref().unwrap_or("")
            );
        }
        ours
    });
    let clusters = render::cluster::Clusters {
        found: std::mem::take(&mut inputs.clusters),
        shared_namespaces: shared_cluster_namespaces.to_vec(),
        ..Default::default()
    };
    let out = render::render_owned(
        &inputs.routes,
        &inputs.secrets,
        &clusters,
        secrets_dir,
        ownership,
    );
    // Never ship a policy the engine cannot load.
    crate::operator::sync::compile(&out.policy)
        .await
        .map_err(|e| anyhow::anyhow!("internal error: {e}"))?;
    print!(
        "{}---\n{}",
        manifests::to_yaml(&manifests::policy_configmap(relay, namespace, &out)),
        manifests::to_yaml(&manifests::routes_secret(relay, namespace, &out, None))
    );
    for id in &out.accepted {
        eprintln!("route {id}: accepted");
    }
    for (id, why) in &out.rejected {
        eprintln!("route {id}: rejected ({}): {}", why.reason, why.message);
    }
    match (inputs.errors.len(), out.rejected.len()) {
        (0, 0) => Ok(()),
        (0, r) => anyhow::bail!("{r} route(s) rejected"),
        (e, r) => anyhow::bail!("{e} document(s) unreadable, {r} route(s) rejected"),
    }
}
