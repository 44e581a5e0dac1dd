//! The client subcommands of the `ganglion` binary: `send`, `broadcast`, `listen`, `query`,
//! `queue push` and `queue pull`, built on `ganglion-client`. `serve` (the node) stays the
//! default; see `docs/cli.md`.
//!
//! - [`args`]: connection, target and payload arguments;
//! - [`output`]: text or JSON lines;
//! - [`dispatch`]: send, broadcast, query;
//! - [`listen`]: identify and print what arrives;
//! - [`queue`]: push and pull.

mod args;
mod dispatch;
mod listen;
mod output;
mod queue;

use std::fmt;

use args::ConnectArgs;
use ganglion_client::{Client, Error};

/// The client subcommands (flattened into the binary's subcommands).
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// SEND a message to one client matching a query (or a request that waits for a reply).
    Send(dispatch::SendArgs),
    /// BROADCAST a message to every client matching a query.
    Broadcast(dispatch::BroadcastArgs),
    /// Identify with metadata and print every message that arrives (until ctrl-c or --count).
    Listen(listen::ListenArgs),
    /// List the clients matching a query (QUERY_NODES).
    Query(dispatch::QueryArgs),
    /// Push to or pull from a queue.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
}

/// Why a command failed, and its exit code: 2 for bad arguments, 1 for everything else.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    pub fn runtime(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        let code = match error {
            Error::Dsn(_) | Error::Metadata(_) | Error::QueueName { .. } | Error::Config(_) => 2,
            _ => 1,
        };
        Failure {
            code,
            message: error.to_string(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Runs a client command; returns the process exit code.
pub fn run(command: ClientCommand) -> i32 {
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return 1;
        }
    };
    let result = runtime.block_on(async {
        match command {
            ClientCommand::Send(args) => dispatch::send(args).await,
            ClientCommand::Broadcast(args) => dispatch::broadcast(args).await,
            ClientCommand::Listen(args) => listen::listen(args).await,
            ClientCommand::Query(args) => dispatch::query(args).await,
            ClientCommand::Queue(command) => queue::run(command).await,
        }
    });
    match result {
        Ok(()) => 0,
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.code
        }
    }
}

/// Client-side logs go to stderr, warnings and up unless `RUST_LOG` says otherwise.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Connects with the connection arguments. (Commands parse their target first, so a bad
/// `--where` fails before anything is dialled.)
async fn connect(connect: &ConnectArgs) -> Result<Client, Failure> {
    Ok(connect.builder()?.connect().await?)
}

/// Ctrl-c (or SIGTERM), caught from the moment it is created: commands that run until
/// interrupted create it before they announce themselves, so a signal sent right after the
/// announcement stops them cleanly instead of killing them.
pub struct Interrupt {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Interrupt {
    pub fn new() -> Interrupt {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = signal(SignalKind::interrupt())
                .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
                .ok();
            Interrupt { signals }
        }
        #[cfg(not(unix))]
        Interrupt {}
    }

    /// Resolves on the next ctrl-c or SIGTERM.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((int, term)) = &mut self.signals {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
