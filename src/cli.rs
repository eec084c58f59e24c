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
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay engine on a policy.
    Relay(RelayArgs),
    /// Print the AmqpRoute CustomResourceDefinition (YAML).
    Crd,
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
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Relay(args) => relay::run(args).await,
            Command::Check { policy } => check(policy).await,
            Command::Crd => {
                print!("{}", crate::operator::crd::crd_yaml());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn check(path: PathBuf) -> anyhow::Result<()> {
    let policy = Policy::load(&path, Arc::new(AmqpPool::default()))?;
    let init = policy.run_init().await?;
    match init {
        Some(cfg) => println!(
            "policy {} is valid (init: {} http listener(s))",
            path.display(),
            cfg.http_listeners.len()
        ),
        None => println!("policy {} is valid (no init event)", path.display()),
    }
    Ok(())
}
