//! `ganglion listen`: identify with metadata and print what arrives.

use std::io::IsTerminal as _;

use super::args::ConnectArgs;
use super::output::Output;
use super::{Failure, Interrupt};

#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Exit after this many messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Also print CLIENT_CONNECTED / CLIENT_DISCONNECTED of every application.
    #[arg(long)]
    pub updates: bool,
    /// Answer requests with their own payload (an echo service).
    #[arg(long)]
    pub echo: bool,
}

pub async fn listen(args: ListenArgs) -> Result<(), Failure> {
    let output = Output {
        json: args.connect.json,
    };
    let mut interrupt = Interrupt::new();
    let client = args
        .connect
        .builder()?
        .receive_client_updates(args.updates)
        .connect()
        .await?;
    let mut messages = client.messages()?;
    let mut updates = if args.updates {
        Some(client.client_updates()?)
    } else {
        None
    };
    // stderr, so stdout stays the messages alone; scripts wait for this line.
    eprintln!(
        "listening as {}/{} (ctrl-c to stop)",
        client.application_id(),
        client.client_id()
    );
    let interactive = std::io::stderr().is_terminal();
    let mut received = 0u64;
    let result = loop {
        if args.count.is_some_and(|count| received >= count) {
            break Ok(());
        }
        tokio::select! {
            () = interrupt.recv() => break Ok(()),
            message = messages.recv() => {
                let Some(message) = message else {
                    break Err(Failure::runtime(closed_reason(&client)));
                };
                received += 1;
                if let Err(failure) = output.message(&message) {
                    break Err(failure);
                }
                if args.echo && message.is_request()
                    && let Err(error) = client.reply(&message, &message.payload).await
                {
                    break Err(error.into());
                }
            }
            update = async { updates.as_mut()?.recv().await }, if updates.is_some() => {
                match update {
                    Some(update) => {
                        if let Err(failure) = output.update(&update) {
                            break Err(failure);
                        }
                    }
                    None => break Err(Failure::runtime(closed_reason(&client))),
                }
            }
        }
    };
    if interactive {
        eprintln!("received {received} messages");
    }
    let _ = client.close().await;
    result
}

fn closed_reason(client: &ganglion_client::Client) -> String {
    match client.state().last_disconnect {
        Some(reason) => format!("the client closed: {reason}"),
        None => "the client closed".to_owned(),
    }
}
