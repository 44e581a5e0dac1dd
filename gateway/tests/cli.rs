//! The `ganglion` binary as users run it.

mod support;

use std::process::Command;

use serde_json::json;
use support::{Client, Node};

fn ganglion(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ganglion"))
        .args(args)
        .output()
        .expect("the ganglion binary runs")
}

#[test]
fn help_lists_the_serve_flags() {
    let out = ganglion(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--listen", "--data-dir", "--set", "serve"] {
        assert!(text.contains(flag), "--help mentions {flag}:\n{text}");
    }
}

#[test]
fn an_unknown_setting_is_refused_by_name_before_anything_starts() {
    let out = ganglion(&["--set", "gateway.heartbeat_intervl_ms=5"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("heartbeat_intervl_ms"), "{text}");
}

#[test]
fn a_port_in_use_is_reported_with_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("ganglion-cli-port-{}", std::process::id()));
    let out = ganglion(&["--listen", &addr, "--data-dir", dir.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&addr) && text.contains("another process"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_client_and_exits_cleanly() {
    let dir = std::env::temp_dir().join(format!("ganglion-cli-drain-{}", std::process::id()));
    let mut node = Node::start(&dir, &[]);
    let mut client = Client::identify(node.addr, "app", "c1").await;
    let pid = node.child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let goodbye = client.recv().await.expect("op 7 before the close");
    assert_eq!(goodbye["op"], 7);
    assert_eq!(goodbye["d"], json!({"reason": "draining"}));
    assert!(
        client.recv().await.is_none(),
        "the connection closes after op 7"
    );
    let status = node.child.wait().unwrap();
    assert!(
        status.success(),
        "ganglion exits with success after a drain: {status}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
