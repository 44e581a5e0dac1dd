//! `ganglion`: run a node, or talk to one (the client subcommands in `cli/`).

mod cli;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ganglion_gateway::config::LogFormat;
use ganglion_gateway::{Config, Gateway, Overrides, telemetry};

/// ganglion: a gateway that routes messages to services by what they say about themselves.
/// mimalloc: frames and queue records are allocated on one thread and freed on another, which
/// glibc's allocator handles poorly (a fifth of the CPU time of the queue benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

// Parsed once; the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (the default).
    Serve(ServeArgs),
    /// The client commands: send, broadcast, listen, query, queue (docs/cli.md).
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// TOML configuration file (also GANGLION_CONFIG).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// HTTP + websocket listener, e.g. [::]:4000 (also GANGLION_LISTEN or PORT).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Directory of the durable queue store (default ./data; created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// This node's id (default: the host name).
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// Log format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormatArg>,
    /// Any setting as KEY=VALUE with a dotted key, e.g. --set auth.password=s3cret. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::Client(command)) => std::process::exit(cli::run(command)),
        None => cli.serve,
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let overrides = Overrides {
        config_file: args.config,
        listen: args.listen,
        node_id: args.node_id,
        data_dir: args.data_dir,
        log_format: args.log_format.map(|f| match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }),
        settings: args.settings,
    };
    let config = Config::load(&env, &overrides)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(config, env))
}

async fn serve(config: Config, env: HashMap<String, String>) -> anyhow::Result<()> {
    // Inside the runtime: the span exporter runs as a task on it.
    let telemetry = telemetry::init(&config)?;
    let served = async {
        let gateway = Gateway::start(config, &env).await?;
        shutdown_signal().await;
        gateway.drain().await;
        anyhow::Ok(())
    }
    .await;
    // Also after a failed start: its spans and the error's logs still go out.
    telemetry.shutdown().await;
    served
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
