//! An echo service: answers every request with its own payload, and prints other messages.
//!
//! ```sh
//! cargo run -p ganglion-client --example echo -- singyeong://echo@localhost:4000
//! cargo run -p ganglion-client --example request_reply -- singyeong://caller@localhost:4000
//! ```

use ganglion_client::{Client, Metadata};

#[tokio::main]
async fn main() -> ganglion_client::Result<()> {
    let dsn = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "singyeong://echo@localhost:4000".to_owned());
    let client = Client::builder(&dsn)?
        .metadata(
            Metadata::new()
                .string("role", "echo")
                .version("version", "1.0.0"),
        )
        .connect()
        .await?;
    let mut messages = client.messages()?;
    eprintln!(
        "echo: {}/{} ready",
        client.application_id(),
        client.client_id()
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            message = messages.recv() => {
                let Some(message) = message else { break };
                if message.is_request() {
                    // The reply goes to the requester alone, whatever its application.
                    client.reply(&message, &message.payload).await?;
                } else {
                    println!("{} {}", message.event.as_str(), message.payload);
                }
            }
        }
    }
    client.close().await
}
