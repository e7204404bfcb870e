//! Helpers for the CLI integration tests: a real dev agent on a free port, the `caravan`
//! binary driven as a user types it, and a bounded poll.
//!
//! Use from a test crate with `mod cli_support;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
pub mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Variables that would point the CLI somewhere else than the agent under test.
const CLEARED_ENV: &[&str] = &[
    "CARAVAN_ADDR",
    "NOMAD_ADDR",
    "CARAVAN_TOKEN",
    "NOMAD_TOKEN",
    "CARAVAN_NAMESPACE",
    "NOMAD_NAMESPACE",
    "CARAVAN_REGION",
    "NOMAD_REGION",
];

/// A `caravan agent -dev` process, killed when dropped.
pub struct Agent {
    child: Child,
    /// `http://127.0.0.1:port`.
    pub address: String,
    dir: tempfile::TempDir,
}

impl Agent {
    /// Starts a dev agent on a free port and waits for its `Advertise Addrs` line.
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_caravan"))
            .args(["agent", "-dev", "-http-port", "0", "-data-dir"])
            .arg(dir.path().join("data"))
            .env("CARAVAN_LOG", "caravan=info,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start caravan agent");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keeps reading so the agent never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.split("Advertise Addrs: HTTP: ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let mut agent = Agent {
            child,
            address: String::new(),
            dir,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => agent.address = format!("http://{addr}"),
            Err(_) => panic!(
                "the agent did not print its address within 60s; log:\n{}",
                agent.log()
            ),
        }
        agent
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Runs the CLI against this agent: `caravan <args> ` with `-address` inserted after the
    /// subcommand words.
    pub fn cli(&self, dir: &Path, args: &[&str]) -> Output {
        let (words, rest): (Vec<&str>, Vec<&str>) = split_command(args);
        let mut all: Vec<&str> = words;
        all.extend(["-address", &self.address]);
        all.extend(rest);
        caravan(dir, &all)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Tasks (and containers) outlive their agent by design; a test's must not.
        support::agent::reap_tasks(&self.dir.path().join("data"));
    }
}

/// The command words (`job run`, `server members`, `status`) and the rest.
fn split_command<'a>(args: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let groups = [
        "job",
        "alloc",
        "eval",
        "node",
        "server",
        "deployment",
        "service",
        "split",
    ];
    let n = match args.first() {
        Some(g) if groups.contains(g) => 2,
        Some(_) => 1,
        None => 0,
    };
    let n = n.min(args.len());
    (args[..n].to_vec(), args[n..].to_vec())
}

/// Runs `caravan <args>` in `dir` with a clean environment.
pub fn caravan(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_caravan"));
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    cmd.output().expect("run caravan")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Both streams, for assertion messages.
pub fn both(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// Asserts success and returns standard output.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", both(o));
    stdout(o)
}

/// Polls `condition` until it holds, failing after `timeout`.
pub fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The repository's `manifests/` directory.
pub fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A canned HTTP server: each request is answered by `route(method, path_and_query, body)`
/// with a status and a JSON body, one request per connection. Stops with the test process.
pub struct Stub {
    pub address: String,
}

/// Starts a stub server on a free port.
pub fn stub<F>(route: F) -> Stub
where
    F: Fn(&str, &str, &str) -> (u16, String) + Send + Sync + 'static,
{
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let route = std::sync::Arc::new(route);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let route = std::sync::Arc::clone(&route);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break pos + 4;
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
                let mut parts = head.split_whitespace();
                let method = parts.next().unwrap_or("");
                let path = parts.next().unwrap_or("");
                let (status, reply) = route(method, path, &body);
                let kind = if status < 300 {
                    "application/json"
                } else {
                    "text/plain"
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nX-Nomad-Index: 7\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            });
        }
    });
    Stub { address }
}
