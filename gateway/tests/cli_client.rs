//! The client subcommands of the real `ganglion` binary against a real node process:
//! `listen` in one process receives what `send` sends from another, selected by `--where`;
//! `send --request` gets the reply of `listen --echo`; `queue push` then `queue pull`;
//! `query`; the `--json` shapes; and the errors users see (bad `--where`, no route).

mod support;

use std::process::Stdio;

use serde_json::{Value, json};
use support::{Node, get_json, patience};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// A node for one test, with its own data directory.
struct TestNode {
    node: Node,
    dir: std::path::PathBuf,
}

impl TestNode {
    fn start(label: &str) -> TestNode {
        let dir = std::env::temp_dir().join(format!(
            "ganglion-cli-client-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TestNode {
            node: Node::start(&dir, &["--node-id", "cli-node"]),
            dir,
        }
    }

    fn dsn(&self) -> String {
        format!("singyeong://{}", self.node.addr)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.node.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ganglion(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ganglion"));
    command
        .args(args)
        .env_remove("GANGLION_DSN")
        .env_remove("GANGLION_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// What a finished command printed.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    }
}

async fn run(args: &[&str]) -> Ran {
    run_with_stdin(args, None).await
}

async fn run_with_stdin(args: &[&str], stdin: Option<&str>) -> Ran {
    let mut command = ganglion(args);
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().expect("the ganglion binary starts");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let output = tokio::time::timeout(patience(), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("ganglion {args:?} finished in time"))
        .unwrap();
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `ganglion listen` (or `queue pull`), ready once it said so on stderr.
struct Running {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Running {
    async fn listen(args: &[&str]) -> Running {
        Running::start(args, "listening as ").await
    }

    /// Starts a command and waits for its first stderr line, which starts with `ready`.
    async fn start(args: &[&str], ready: &str) -> Running {
        let mut child = ganglion(args).spawn().expect("the ganglion binary starts");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = tokio::time::timeout(patience(), stderr.next_line())
            .await
            .expect("the command reports in time")
            .unwrap()
            .expect("a line on stderr");
        assert!(first.starts_with(ready), "{first}");
        Running {
            child,
            stdout,
            stderr,
        }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(patience(), self.stdout.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("a line, not the end of stdout")
    }

    async fn json(&mut self) -> Value {
        let line = self.line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Waits for the process to exit on its own; returns its code and what was left on
    /// stdout and stderr.
    async fn finished(mut self) -> (Option<i32>, Vec<String>, Vec<String>) {
        let status = tokio::time::timeout(patience(), self.child.wait())
            .await
            .expect("the command exits in time")
            .unwrap();
        let mut out = Vec::new();
        while let Ok(Some(line)) = self.stdout.next_line().await {
            out.push(line);
        }
        let mut err = Vec::new();
        while let Ok(Some(line)) = self.stderr.next_line().await {
            err.push(line);
        }
        (status.code(), out, err)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_in_one_process_receives_what_send_sends_from_another_selected_by_where() {
    let node = TestNode::start("where");
    let dsn = node.dsn();
    let mut eu = Running::listen(&[
        "listen",
        "--dsn",
        &dsn,
        "--app",
        "workers",
        "--client-id",
        "eu-1",
        "--meta",
        "region=string:eu",
        "--meta",
        "v=version:1.10.0",
        "--meta",
        "load=integer:3",
        "--json",
        "--count",
        "1",
    ])
    .await;
    let mut us = Running::listen(&[
        "listen",
        "--dsn",
        &dsn,
        "--app",
        "workers",
        "--client-id",
        "us-1",
        "--meta",
        "region=string:us",
        "--meta",
        "v=version:1.9.0",
        "--meta",
        "load=integer:3",
        "--count",
        "1",
    ])
    .await;

    // SemVer order picks eu-1 (1.10.0 >= 1.10.0; 1.9.0 is below, though "1.9.0" > "1.10.0" as text).
    let sent = run(&[
        "send",
        "--dsn",
        &dsn,
        "--to",
        "workers",
        "--where",
        "v >= 1.10.0 and (region == \"eu\" or region == \"ap\")",
        "--nonce",
        "n-1",
        "--json",
        r#"{"hello":"world"}"#,
    ])
    .await;
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert_eq!(
        sent.json_lines(),
        [json!({"event": "SEND", "status": "sent", "nonce": "n-1",
        "target": {"application": "workers", "ops": [
            {"path": "/v", "op": "$gte", "to": {"value": "1.10.0"}},
            {"op": "$or", "with": [
                {"path": "/region", "op": "$eq", "to": {"value": "eu"}},
                {"path": "/region", "op": "$eq", "to": {"value": "ap"}},
            ]},
        ]}})]
    );
    let mut got = eu.json().await;
    assert!(got["ts"].is_i64(), "{got}");
    got.as_object_mut().unwrap().remove("ts");
    assert_eq!(
        got,
        json!({"event": "SEND", "nonce": "n-1", "payload": {"hello": "world"}})
    );
    let (code, rest, _) = eu.finished().await;
    assert_eq!(
        (code, rest),
        (Some(0), Vec::<String>::new()),
        "--count 1 exits after one message"
    );

    // us-1 got nothing of it: its first message is the next one, in text form.
    let sent = run(&[
        "send",
        "--dsn",
        &dsn,
        "--to",
        "workers",
        "--where",
        "region != 'eu'",
        "second",
    ])
    .await;
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert_eq!(
        sent.stdout,
        "SEND sent to {\"application\":\"workers\",\"ops\":[{\"op\":\"$ne\",\"path\":\"/region\",\"to\":{\"value\":\"eu\"}}]}\n"
    );
    let nonce_and_payload = us.line().await;
    assert!(
        nonce_and_payload.starts_with("SEND [nonce \"")
            && nonce_and_payload.ends_with("] \"second\""),
        "{nonce_and_payload}"
    );
    assert_eq!(us.finished().await.0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_request_prints_the_reply_of_listen_echo_and_times_out_without_one() {
    let node = TestNode::start("request");
    let dsn = node.dsn();
    let echo = Running::listen(&[
        "listen", "--dsn", &dsn, "--app", "echo", "--echo", "--count", "1",
    ])
    .await;
    let asked = run(&[
        "send",
        "--dsn",
        &dsn,
        "--to",
        "echo",
        "--request",
        "--json",
        r#"{"ping":1}"#,
    ])
    .await;
    assert_eq!(asked.code, Some(0), "{asked:?}");
    let reply = &asked.json_lines()[0];
    assert_eq!(
        (&reply["event"], &reply["payload"]),
        (&json!("REPLY"), &json!({"ping": 1}))
    );
    assert!(reply["nonce"]["reply"].is_string(), "{reply}");
    let (code, out, _) = echo.finished().await;
    assert_eq!(code, Some(0));
    assert_eq!(out, ["SEND [request] {\"ping\":1}"]);

    let silent = Running::listen(&["listen", "--dsn", &dsn, "--app", "silent"]).await;
    let asked = run(&[
        "send",
        "--dsn",
        &dsn,
        "--to",
        "silent",
        "--request",
        "--timeout",
        "300ms",
        "x",
    ])
    .await;
    assert_eq!(asked.code, Some(1), "{asked:?}");
    assert_eq!(asked.stderr, "error: no answer within 300ms\n");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_push_then_queue_pull_delivers_and_acks_every_message() {
    let node = TestNode::start("queue");
    let dsn = node.dsn();
    let pushed = run(&[
        "queue",
        "push",
        "--dsn",
        &dsn,
        "--to",
        "workers",
        "--where",
        "gpu == true",
        "jobs",
        r#"{"job":{n}}"#,
        "--count",
        "5",
        "--json",
    ])
    .await;
    assert_eq!(pushed.code, Some(0), "{pushed:?}");
    let confirms = pushed.json_lines();
    assert_eq!(confirms.len(), 5);
    for confirm in &confirms {
        assert_eq!(confirm["event"], "QUEUE_CONFIRM");
        assert_eq!(confirm["queue"], "jobs");
        assert_eq!(
            confirm["id"].as_str().map(str::len),
            Some(36),
            "a UUID: {confirm}"
        );
    }
    assert!(
        pushed.stderr.starts_with("pushed 5 messages to jobs in "),
        "{}",
        pushed.stderr
    );
    // Stdin: one message per line.
    let from_stdin = run_with_stdin(
        &[
            "queue", "push", "--dsn", &dsn, "--to", "workers", "jobs", "-",
        ],
        Some("{\"job\":5}\nsix\n"),
    )
    .await;
    assert_eq!(from_stdin.code, Some(0), "{from_stdin:?}");
    assert_eq!(
        from_stdin.stdout, "",
        "text mode prints only the summary, on stderr"
    );
    assert!(
        from_stdin
            .stderr
            .starts_with("pushed 2 messages to jobs in "),
        "{}",
        from_stdin.stderr
    );

    let pulled = run(&[
        "queue",
        "pull",
        "--dsn",
        &dsn,
        "--app",
        "workers",
        "--meta",
        "gpu=boolean:true",
        "jobs",
        "--count",
        "7",
        "--json",
    ])
    .await;
    assert_eq!(pulled.code, Some(0), "{pulled:?}");
    let messages = pulled.json_lines();
    let payloads: Vec<&Value> = messages.iter().map(|m| &m["payload"]).collect();
    assert_eq!(
        payloads,
        [
            &json!({"job": 0}),
            &json!({"job": 1}),
            &json!({"job": 2}),
            &json!({"job": 3}),
            &json!({"job": 4}),
            &json!({"job": 5}),
            &json!("six"),
        ]
    );
    for (message, confirm) in messages.iter().zip(&confirms) {
        assert_eq!(
            (
                &message["event"],
                &message["queue"],
                &message["id"],
                &message["nonce"]
            ),
            (
                &json!("QUEUE"),
                &json!("jobs"),
                &confirm["id"],
                &confirm["nonce"]
            )
        );
    }
    // Every message was acked before pull exited.
    let stats = get_json(node.node.addr, "/api/v1/queues/jobs").await;
    assert_eq!(
        (&stats["ready"], &stats["in_flight"]),
        (&json!(0), &json!(0)),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_lists_matching_clients_as_text_or_as_client_objects() {
    let node = TestNode::start("query");
    let dsn = node.dsn();
    let _a = Running::listen(&[
        "listen",
        "--dsn",
        &dsn,
        "--app",
        "svc",
        "--client-id",
        "a",
        "--meta",
        "load=integer:3",
        "--meta",
        "tags=list:[\"gpu\"]",
    ])
    .await;
    let _b = Running::listen(&[
        "listen",
        "--dsn",
        &dsn,
        "--app",
        "svc",
        "--client-id",
        "b",
        "--meta",
        "load=integer:9",
    ])
    .await;
    let text = run(&[
        "query",
        "--dsn",
        &dsn,
        "--to",
        "svc",
        "--where",
        "tags contains 'gpu' or load > 5",
    ])
    .await;
    assert_eq!(text.code, Some(0), "{text:?}");
    assert_eq!(
        text.stdout,
        "svc/a node=cli-node ip=127.0.0.1  load=3 tags=[\"gpu\"]\nsvc/b node=cli-node ip=127.0.0.1  load=9\n"
    );
    let json = run(&[
        "query", "--dsn", &dsn, "--to", "svc", "--select", "min:load", "--json",
    ])
    .await;
    let objects = json.json_lines();
    assert_eq!(objects.len(), 1, "{json:?}");
    assert_eq!(
        (&objects[0]["app_id"], &objects[0]["client_id"]),
        (&json!("svc"), &json!("a"))
    );
    assert_eq!(objects[0]["metadata"]["load"], json!(3));
    assert_eq!(objects[0]["metadata_types"]["tags"], json!("list"));
    assert_eq!(objects[0]["queues"], json!([]));
    let none = run(&["query", "--dsn", &dsn, "--to", "nobody"]).await;
    assert_eq!(
        (none.code, none.stdout.as_str(), none.stderr.as_str()),
        (Some(0), "", "no client matched\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_users_make_are_explained_with_a_nonzero_exit() {
    let node = TestNode::start("errors");
    let dsn = node.dsn();
    let bad_where = run(&[
        "send",
        "--dsn",
        &dsn,
        "--where",
        "version >= 1.2.0 and region = \"eu\"",
        "x",
    ])
    .await;
    assert_eq!(bad_where.code, Some(2));
    assert_eq!(
        bad_where.stderr,
        format!(
            "error: invalid --where: `=` is not an operator: write `==` at column 29\n  version >= 1.2.0 and region = \"eu\"\n  {}^\n",
            " ".repeat(28)
        )
    );
    let unterminated = run(&["query", "--dsn", &dsn, "--where", "(load < 3"]).await;
    assert_eq!(unterminated.code, Some(2));
    assert_eq!(
        unterminated.stderr,
        format!(
            "error: invalid --where: expected `)`, found the end at column 10\n  (load < 3\n  {}^\n",
            " ".repeat(9)
        )
    );
    let no_route = run(&["send", "--dsn", &dsn, "--to", "nobody", "x"]).await;
    assert_eq!(
        (no_route.code, no_route.stderr.as_str()),
        (Some(1), "error: no client matched the target\n")
    );
    let droppable = run(&[
        "broadcast",
        "--dsn",
        &dsn,
        "--to",
        "nobody",
        "--droppable",
        "x",
    ])
    .await;
    assert_eq!(droppable.code, Some(0), "{droppable:?}");
    let bad_meta = run(&["listen", "--dsn", &dsn, "--meta", "load=integer:lots"]).await;
    assert_eq!(
        (bad_meta.code, bad_meta.stderr.as_str()),
        (
            Some(2),
            "error: invalid --meta \"load=integer:lots\": load: \"lots\" is not an integer\n"
        )
    );
    let bad_dsn = run(&["query", "--dsn", "http://localhost"]).await;
    assert_eq!(bad_dsn.code, Some(2));
    assert!(
        bad_dsn.stderr.contains("unknown scheme \"http\""),
        "{}",
        bad_dsn.stderr
    );
    let unreachable = run(&[
        "query",
        "--dsn",
        "singyeong://127.0.0.1:1",
        "--connect-timeout",
        "2s",
    ])
    .await;
    assert_eq!(unreachable.code, Some(1));
    assert!(
        unreachable
            .stderr
            .starts_with("error: cannot connect to 127.0.0.1:1: "),
        "{}",
        unreachable.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_queue_pull_stop_cleanly_on_ctrl_c() {
    let node = TestNode::start("sigint");
    let dsn = node.dsn();
    for (args, ready) in [
        (
            vec![
                "listen",
                "--dsn",
                dsn.as_str(),
                "--app",
                "quiet",
                "--client-id",
                "l",
            ],
            "listening as quiet/l",
        ),
        (
            vec![
                "queue",
                "pull",
                "--dsn",
                dsn.as_str(),
                "--app",
                "quiet",
                "--client-id",
                "p",
                "idle",
            ],
            "pulling idle as quiet/p",
        ),
    ] {
        let running = Running::start(&args, ready).await;
        let pid = running.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let (code, out, err) = running.finished().await;
        assert_eq!((code, out, err), (Some(0), vec![], vec![]), "{args:?}");
    }
}
