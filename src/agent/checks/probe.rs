//! Running a check once: connect (tcp), request (http), or exec in the task (script), bounded
//! by the check's timeout. Results read as Nomad's: `nomad: tcp ok`, `nomad: http ok`, the
//! body of a non-200 response, the error.

use super::plan::{HttpProbe, Probe};
use super::tracker::{OUTPUT_LIMIT, Outcome, truncate_output};
use crate::drivers::{Driver, ExecRequest, TaskHandle};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// What one run found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub outcome: Outcome,
    pub output: String,
    /// The HTTP status of an http check; 0 otherwise.
    pub status_code: i32,
}

impl ProbeResult {
    fn failure(output: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Failure,
            output: truncate_output(output.into(), OUTPUT_LIMIT),
            status_code: 0,
        }
    }
}

/// Where a script check runs: the task's driver and handle, its environment and directory.
#[derive(Clone, Debug)]
pub struct ExecTarget {
    pub driver: Arc<dyn Driver>,
    pub handle: TaskHandle,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
}

/// Runs `probe` once. `exec` is the task a script check runs in (`None`: not running).
pub async fn run(probe: &Probe, timeout: Duration, exec: Option<&ExecTarget>) -> ProbeResult {
    match probe {
        Probe::Tcp { addr } => tcp(addr, timeout).await,
        Probe::Http(http) => http_check(http, timeout).await,
        Probe::Script {
            task,
            command,
            args,
        } => match exec {
            Some(target) => script(target, command, args, timeout).await,
            None => ProbeResult::failure(format!("task {task:?} is not running")),
        },
    }
}

async fn tcp(addr: &str, timeout: Duration) -> ProbeResult {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => ProbeResult {
            outcome: Outcome::Success,
            output: "nomad: tcp ok".to_owned(),
            status_code: 0,
        },
        Ok(Err(e)) => ProbeResult::failure(format!("dial tcp {addr}: {e}")),
        Err(_) => ProbeResult::failure(format!("dial tcp {addr}: i/o timeout after {timeout:?}")),
    }
}

/// One client for every http check: no connection reuse (each check opens a fresh connection,
/// as a new client would), redirects followed as Go's client does.
fn http_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .user_agent(concat!(
                    "Caravan/",
                    env!("CARGO_PKG_VERSION"),
                    " (health check)"
                ))
                .build()
                .map_err(|e| format!("nomad: building the HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

async fn http_check(check: &HttpProbe, timeout: Duration) -> ProbeResult {
    if check.url.starts_with("https://") {
        return ProbeResult::failure(
            "nomad: https checks are not supported by this build of Caravan (it has no TLS \
             client); check the service over http or tcp",
        );
    }
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => return ProbeResult::failure(e),
    };
    let method = match reqwest::Method::from_bytes(check.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            return ProbeResult::failure(format!("nomad: invalid method {:?}", check.method));
        }
    };
    let mut req = client.request(method, &check.url).timeout(timeout);
    for (name, values) in &check.headers {
        for value in values {
            req = req.header(name.as_str(), value.as_str());
        }
    }
    if !check.body.is_empty() {
        req = req.body(check.body.clone());
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return ProbeResult::failure(format!("nomad: {}", error_chain(&e)));
        }
    };
    let code = resp.status().as_u16();
    let status_code = i32::from(code);
    if code == 200 {
        return ProbeResult {
            outcome: Outcome::Success,
            output: "nomad: http ok".to_owned(),
            status_code,
        };
    }
    let outcome = if code < 400 {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    let output = match tokio::time::timeout(timeout, read_limited(resp)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => format!("nomad: {e}"),
        Err(_) => format!("nomad: reading the body timed out after {timeout:?}"),
    };
    ProbeResult {
        outcome,
        output,
        status_code,
    }
}

/// The first [`OUTPUT_LIMIT`] bytes of a response body (the rest is not read).
async fn read_limited(mut resp: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut body = Vec::new();
    while body.len() < OUTPUT_LIMIT {
        match resp.chunk().await? {
            Some(chunk) => body.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(truncate_output(
        String::from_utf8_lossy(&body).into_owned(),
        OUTPUT_LIMIT,
    ))
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

async fn script(
    target: &ExecTarget,
    command: &str,
    args: &[String],
    timeout: Duration,
) -> ProbeResult {
    let request = ExecRequest {
        command: std::iter::once(command.to_owned())
            .chain(args.iter().cloned())
            .collect(),
        env: target.env.clone(),
        cwd: target.cwd.clone(),
        timeout,
        output_limit: OUTPUT_LIMIT,
    };
    match target.driver.exec(&target.handle, &request).await {
        Ok(out) => ProbeResult {
            outcome: Outcome::from_exit_code(out.exit_code),
            output: truncate_output(
                String::from_utf8_lossy(&out.output).into_owned(),
                OUTPUT_LIMIT,
            ),
            status_code: 0,
        },
        Err(e) => ProbeResult::failure(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server answering every connection with `response`.
    async fn server(response: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    fn http(url: String) -> Probe {
        Probe::Http(HttpProbe {
            url,
            method: "GET".into(),
            headers: BTreeMap::new(),
            body: String::new(),
            tls_skip_verify: false,
        })
    }

    #[tokio::test]
    async fn tcp_and_http_results_read_like_nomads() {
        let ok =
            server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi").await;
        let second = Duration::from_secs(2);
        let r = run(&Probe::Tcp { addr: ok.clone() }, second, None).await;
        assert_eq!(
            (r.outcome, r.output.as_str()),
            (Outcome::Success, "nomad: tcp ok")
        );
        let r = run(&http(format!("http://{ok}/health")), second, None).await;
        assert_eq!(
            (r.outcome, r.output.as_str(), r.status_code),
            (Outcome::Success, "nomad: http ok", 200)
        );
        let broken = server(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown",
        )
        .await;
        let r = run(&http(format!("http://{broken}/")), second, None).await;
        assert_eq!(
            (r.outcome, r.output.as_str(), r.status_code),
            (Outcome::Failure, "down", 503)
        );
        // Nothing listens on a port just released.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let r = run(
            &Probe::Tcp {
                addr: closed.clone(),
            },
            second,
            None,
        )
        .await;
        assert_eq!(r.outcome, Outcome::Failure);
        assert!(
            r.output.starts_with(&format!("dial tcp {closed}: ")),
            "{}",
            r.output
        );
        let r = run(&http(format!("http://{closed}/")), second, None).await;
        assert_eq!(r.outcome, Outcome::Failure);
        assert!(r.output.starts_with("nomad: "), "{}", r.output);
        let r = run(&http(format!("https://{ok}/")), second, None).await;
        assert!(
            r.output.contains("https checks are not supported"),
            "{}",
            r.output
        );
    }

    #[tokio::test]
    async fn a_script_check_with_no_running_task_fails_clearly() {
        let probe = Probe::Script {
            task: "web".into(),
            command: "true".into(),
            args: vec![],
        };
        let r = run(&probe, Duration::from_secs(1), None).await;
        assert_eq!(r.outcome, Outcome::Failure);
        assert_eq!(r.output, "task \"web\" is not running");
    }
}
