//! `ganglion send`, `ganglion broadcast` and `ganglion query`.

use std::time::Duration;

use ganglion_client::{Dispatch, Error, Event};
use serde_json::{Value, json};

use super::args::{ConnectArgs, TargetArgs, parse_duration, payload};
use super::output::Output;
use super::{Failure, connect};

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// The payload: JSON if it parses as JSON, else a string.
    #[arg(value_name = "PAYLOAD")]
    pub payload: String,
    /// Send the payload as a string even if it parses as JSON.
    #[arg(long)]
    pub string: bool,
    /// A nonce for the recipient (JSON or a string).
    #[arg(long, value_name = "NONCE", conflicts_with = "request")]
    pub nonce: Option<String>,
    /// Wait for a reply (request/reply convention, docs/client.md) and print it.
    #[arg(long)]
    pub request: bool,
    /// How long --request waits for the reply.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// The payload: JSON if it parses as JSON, else a string.
    #[arg(value_name = "PAYLOAD")]
    pub payload: String,
    /// Send the payload as a string even if it parses as JSON.
    #[arg(long)]
    pub string: bool,
    /// A nonce for the recipients (JSON or a string).
    #[arg(long, value_name = "NONCE")]
    pub nonce: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn send(args: SendArgs) -> Result<(), Failure> {
    let query = args.target.query()?;
    let payload = payload(&args.payload, args.string);
    let output = Output {
        json: args.connect.json,
    };
    let client = connect(&args.connect).await?;
    let result = async {
        if args.request {
            let reply = client
                .request(&query, &payload, args.timeout)
                .await
                .map_err(no_match)?;
            return output.reply(&reply);
        }
        let nonce = args
            .nonce
            .as_deref()
            .map(|n| super::args::payload(n, false));
        routed(&client, Event::Send, &query, &payload, nonce, output).await
    }
    .await;
    let _ = client.close().await;
    result
}

pub async fn broadcast(args: BroadcastArgs) -> Result<(), Failure> {
    let query = args.target.query()?;
    let payload = payload(&args.payload, args.string);
    let output = Output {
        json: args.connect.json,
    };
    let client = connect(&args.connect).await?;
    let nonce = args
        .nonce
        .as_deref()
        .map(|n| super::args::payload(n, false));
    let result = routed(&client, Event::Broadcast, &query, &payload, nonce, output).await;
    let _ = client.close().await;
    result
}

/// A confirmed SEND/BROADCAST, reported once the node has routed it.
async fn routed(
    client: &ganglion_client::Client,
    event: Event,
    query: &ganglion_client::Query,
    payload: &Value,
    nonce: Option<Value>,
    output: Output,
) -> Result<(), Failure> {
    client
        .dispatch(Dispatch {
            event,
            target: query,
            payload,
            nonce: nonce.as_ref(),
            confirm: true,
        })
        .await
        .map_err(no_match)?;
    let json = json!({"event": event.as_str(), "status": "sent", "target": query.to_json(), "nonce": nonce});
    output.line(&json, || {
        format!("{} sent to {}", event.as_str(), query.to_json())
    })
}

fn no_match(error: Error) -> Failure {
    match error {
        Error::NoRoute => Failure::runtime("no client matched the target"),
        other => other.into(),
    }
}

pub async fn query(args: QueryArgs) -> Result<(), Failure> {
    let query = args.target.query()?;
    let output = Output {
        json: args.connect.json,
    };
    let client = connect(&args.connect).await?;
    let result = async {
        let mut nodes = client.query_nodes(&query).await?;
        nodes.sort_by(|a, b| (&a.app_id, &a.client_id).cmp(&(&b.app_id, &b.client_id)));
        if nodes.is_empty() && !output.json {
            eprintln!("no client matched");
        }
        for node in &nodes {
            output.client(node)?;
        }
        Ok(())
    }
    .await;
    let _ = client.close().await;
    result
}
