//! A real etcd for tests: `/usr/bin/etcd` on free 127.0.0.1 ports with a temporary data dir,
//! killed on drop. If etcd is not installed the test FAILS, telling how to install it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to `host:port` to run the etcd tests against an etcd you started (e.g. with
/// `hack/start-etcd.sh`) instead of one per test.
pub const ETCD_ENV: &str = "CARAVAN_TEST_ETCD";

/// How long etcd gets to answer after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The etcd binary: `$CARAVAN_ETCD_BIN`, `/usr/bin/etcd`, or `etcd` on the PATH.
pub fn etcd_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CARAVAN_ETCD_BIN") {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return bin;
        }
        panic!(
            "CARAVAN_ETCD_BIN={} is not a file. Run hack/setup-test.sh (it installs Debian's \
             etcd-server), or point {ETCD_ENV}=host:port at a running etcd.",
            bin.display()
        );
    }
    let debian = Path::new("/usr/bin/etcd");
    if debian.exists() {
        return debian.to_path_buf();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("etcd");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "etcd is not installed (looked for $CARAVAN_ETCD_BIN, /usr/bin/etcd and etcd on the PATH). \
         Run hack/setup-test.sh (it installs Debian's etcd-server), or point {ETCD_ENV}=host:port \
         at a running etcd (hack/start-etcd.sh starts one)."
    )
}

/// The external etcd named by `CARAVAN_TEST_ETCD`, if any.
pub fn external_endpoint() -> Option<String> {
    std::env::var(ETCD_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// An etcd process owned by a test.
pub struct TestEtcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

impl TestEtcd {
    /// Starts etcd on free ports and waits until it answers.
    pub fn start() -> TestEtcd {
        let bin = etcd_binary();
        let mut last_error = String::new();
        // A port taken between choosing and binding it makes etcd exit: choose again.
        for _ in 0..3 {
            let client_port = free_port();
            let mut peer_port = free_port();
            while peer_port == client_port {
                peer_port = free_port();
            }
            let mut etcd = TestEtcd {
                child: None,
                dir: tempfile::tempdir().expect("temp dir for etcd"),
                client_port,
                peer_port,
            };
            match etcd.spawn(&bin) {
                Ok(()) => return etcd,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start: {last_error}")
    }

    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last lines etcd logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn spawn(&mut self, bin: &Path) -> Result<(), String> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("etcd log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("etcd log file: {e}"))?;
        let child = Command::new(bin)
            .arg("--name=caravan-test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=caravan-test={peer}"))
            // A single member elects itself in one election timeout: keep it short. This also
            // lowers etcd's minimum lease TTL to 1 s.
            .arg("--heartbeat-interval=10")
            .arg("--election-timeout=100")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Polls etcd's `/health` until it reports healthy (bounded).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("etcd exited ({status}):\n{}", self.log_tail()));
            }
            if health(self.client_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "etcd did not answer within {READY_TIMEOUT:?}:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills etcd (SIGKILL: a crash, nothing flushed beyond what etcd made durable).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd and starts it again on the same ports with the same data dir.
    pub fn restart(&mut self) {
        self.kill();
        let bin = etcd_binary();
        if let Err(e) = self.spawn(&bin) {
            panic!("etcd did not restart: {e}");
        }
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether etcd answers `GET /health` with `"health":"true"` (plain HTTP/1.0, no client crate).
fn health(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}
