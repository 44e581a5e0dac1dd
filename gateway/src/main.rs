//! `ganglion`: run a node.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ganglion_gateway::config::LogFormat;
use ganglion_gateway::{Config, Gateway, Overrides};
use tracing_subscriber::EnvFilter;

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (the default).
    Serve(ServeArgs),
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
    init_logging(&config);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(config, env))
}

async fn serve(config: Config, env: HashMap<String, String>) -> anyhow::Result<()> {
    let gateway = Gateway::start(config, &env).await?;
    shutdown_signal().await;
    gateway.drain().await;
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
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
