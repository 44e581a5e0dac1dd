//! `ganglion queue push` and `ganglion queue pull`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use ganglion_client::{Client, Error, Query, QueueConfirm};
use serde_json::Value;
use tokio::time::Instant;

use super::args::{ConnectArgs, TargetArgs, payload};
use super::output::Output;
use super::{Failure, Interrupt, connect};

#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// Push messages: PAYLOAD (--count times; `{n}` in it becomes 0, 1, 2, ...), or one per
    /// line of stdin when PAYLOAD is absent or `-`. Each is confirmed by the node.
    Push(PushArgs),
    /// Consume messages, print and ack each (until ctrl-c or --count).
    Pull(PullArgs),
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// The queue.
    #[arg(value_name = "QUEUE")]
    pub queue: String,
    /// The payload: JSON if it parses as JSON, else a string; `-` or absent reads stdin.
    #[arg(value_name = "PAYLOAD")]
    pub payload: Option<String>,
    /// Push the payload this many times.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub count: u64,
    /// Send payloads as strings even if they parse as JSON.
    #[arg(long)]
    pub string: bool,
    /// Pushes awaiting their confirm at once.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub in_flight: usize,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The queue.
    #[arg(value_name = "QUEUE")]
    pub queue: String,
    /// Exit after this many messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Print without acking: the messages come back after the node's ack timeout.
    #[arg(long)]
    pub no_ack: bool,
}

pub async fn run(command: QueueCommand) -> Result<(), Failure> {
    match command {
        QueueCommand::Push(args) => push(args).await,
        QueueCommand::Pull(args) => pull(args).await,
    }
}

/// Where payloads come from.
enum Source {
    Repeat {
        template: String,
        count: u64,
        next: u64,
    },
    Stdin(std::io::Lines<std::io::StdinLock<'static>>),
}

impl Source {
    fn next(&mut self) -> Result<Option<String>, Failure> {
        match self {
            Source::Repeat {
                template,
                count,
                next,
            } => {
                if *next >= *count {
                    return Ok(None);
                }
                let text = template.replace("{n}", &next.to_string());
                *next += 1;
                Ok(Some(text))
            }
            Source::Stdin(lines) => match lines.next() {
                Some(Ok(line)) => Ok(Some(line)),
                Some(Err(e)) => Err(Failure::runtime(format!("cannot read stdin: {e}"))),
                None => Ok(None),
            },
        }
    }

    fn total(&self) -> Option<u64> {
        match self {
            Source::Repeat { count, .. } => Some(*count),
            Source::Stdin(_) => None,
        }
    }
}

async fn push(args: PushArgs) -> Result<(), Failure> {
    ganglion_client::check_queue_name(&args.queue)?;
    let query = args.target.query()?;
    let output = Output {
        json: args.connect.json,
    };
    let mut source = match args.payload.as_deref() {
        None | Some("-") => Source::Stdin(std::io::stdin().lock().lines()),
        Some(template) => Source::Repeat {
            template: template.to_owned(),
            count: args.count,
            next: 0,
        },
    };
    let client = connect(&args.connect).await?;
    let mut progress = Progress::new(source.total());
    let started = Instant::now();
    let result = async {
        let mut pending = FuturesUnordered::new();
        let mut exhausted = false;
        loop {
            while !exhausted && pending.len() < args.in_flight.max(1) {
                match source.next()? {
                    Some(text) => pending.push(publish(
                        &client,
                        &args.queue,
                        &query,
                        payload(&text, args.string),
                    )),
                    None => exhausted = true,
                }
            }
            let Some(confirm) = pending.next().await else {
                break;
            };
            let confirm = confirm?;
            if output.json {
                output.confirm(&confirm)?;
            }
            progress.pushed();
        }
        Ok(())
    }
    .await;
    progress.finish();
    let elapsed = started.elapsed();
    if result.is_ok() {
        let rate = progress.done as f64 / elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "pushed {} message{} to {} in {:.2} s ({:.0} msg/s)",
            progress.done,
            if progress.done == 1 { "" } else { "s" },
            args.queue,
            elapsed.as_secs_f64(),
            rate
        );
    }
    let _ = client.close().await;
    result
}

/// Publishes one message, again after a lost connection (at least once: the node may have
/// stored the first attempt).
async fn publish(
    client: &Client,
    queue: &str,
    target: &Query,
    payload: Value,
) -> Result<QueueConfirm, Failure> {
    loop {
        match client.publish(queue, target, &payload).await {
            Err(Error::ConnectionLost) => continue,
            Err(Error::QueueUnavailable) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => return Ok(other?),
        }
    }
}

/// The progress line of a long push: on a terminal, rewritten in place at most ten times a
/// second.
struct Progress {
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
    live: bool,
}

impl Progress {
    fn new(total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            total,
            done: 0,
            started: now,
            last: now,
            live: std::io::stderr().is_terminal(),
        }
    }

    fn pushed(&mut self) {
        self.done += 1;
        if self.live && self.last.elapsed() >= Duration::from_millis(100) {
            self.last = Instant::now();
            self.draw();
        }
    }

    fn draw(&self) {
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\rpushed {}{of} ({rate:.0} msg/s)\x1b[K", self.done);
        let _ = stderr.flush();
    }

    fn finish(&self) {
        if self.live && self.done > 0 {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[K");
            let _ = stderr.flush();
        }
    }
}

async fn pull(args: PullArgs) -> Result<(), Failure> {
    ganglion_client::check_queue_name(&args.queue)?;
    let output = Output {
        json: args.connect.json,
    };
    let mut interrupt = Interrupt::new();
    let client = connect(&args.connect).await?;
    let result = async {
        let mut consumer = client.consume(&args.queue).await?;
        // Once the node has the request: scripts wait for this line.
        client.sync().await?;
        eprintln!(
            "pulling {} as {}/{} (ctrl-c to stop)",
            args.queue,
            client.application_id(),
            client.client_id()
        );
        let mut received = 0u64;
        while args.count.is_none_or(|count| received < count) {
            let message = tokio::select! {
                () = interrupt.recv() => break,
                message = consumer.recv() => message,
            };
            let Some(message) = message else {
                return Err(Failure::runtime("the client closed"));
            };
            received += 1;
            output.queue_message(&message)?;
            if !args.no_ack {
                message.ack().await?;
            }
        }
        // The acks have reached the node before the connection closes.
        client.sync().await?;
        Ok(())
    }
    .await;
    let _ = client.close().await;
    result
}
