//! Requests to the echo service (`--example echo`), one after the other and then many at once,
//! with the round-trip time of each; and a request nobody answers, which times out.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use ganglion_client::{Client, Error, Query};
use serde_json::json;

#[tokio::main]
async fn main() -> ganglion_client::Result<()> {
    let dsn = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "singyeong://caller@localhost:4000".to_owned());
    let client = Client::connect(&dsn).await?;
    let echo = Query::application("echo")
        .eq("role", "echo")
        .gte("version", "1.0.0");

    for n in 0..5 {
        let started = Instant::now();
        let reply = client
            .request(&echo, &json!({"n": n}), Duration::from_secs(5))
            .await?;
        println!("reply {} in {:?}", reply.payload, started.elapsed());
    }

    // Concurrent requests share the connection; each reply finds its own request.
    let started = Instant::now();
    let replies = join_all((0..1000).map(|n| {
        let (client, echo) = (&client, &echo);
        async move { client.request(echo, &n, Duration::from_secs(5)).await }
    }))
    .await;
    let ok = replies.iter().filter(|r| r.is_ok()).count();
    println!(
        "{ok}/1000 concurrent requests answered in {:?}",
        started.elapsed()
    );

    match client
        .request(
            &Query::application("echo").eq("role", "nobody"),
            &1,
            Duration::from_millis(500),
        )
        .await
    {
        Err(Error::NoRoute) => println!("no client is a `nobody`: no_route, at once"),
        other => println!("unexpected: {other:?}"),
    }
    client.close().await
}
