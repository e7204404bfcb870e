//! The `caravan` command line: one module per command group.
//!
//! Nomad users type single-dash long flags (`-check-index 10`, `-short`, `-var k=v`); clap
//! wants two dashes, so [`normalize_args`] rewrites them before parsing. Both forms work.

mod agent;
mod alloc;
mod apply;
mod conn;
mod deploy_monitor;
mod deployment;
mod diff;
mod eval;
mod format;
mod job;
mod lb;
mod monitor;
mod node;
mod server;
mod service;
mod split;
mod status;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::fmt;

/// Caravan: run containers, binaries and jars across a fleet — Nomad's interface, Kubernetes' design.
#[derive(Debug, Parser)]
#[command(
    name = "caravan",
    version,
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a Caravan agent: a server, a client, or both (-dev).
    Agent(agent::AgentArgs),
    /// Work with jobs: init, validate, inspect, run, plan, stop, status, history, scale, promote,
    /// revert.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// List jobs, or show whatever an ID names (job, allocation, node or evaluation).
    Status(status::StatusArgs),
    /// Register every job in manifest files or directories.
    Apply(apply::ApplyArgs),
    /// Inspect allocations.
    #[command(subcommand)]
    Alloc(alloc::AllocCommand),
    /// Inspect and steer deployments: list, status, promote, fail, pause, resume.
    #[command(subcommand)]
    Deployment(deployment::DeploymentCommand),
    /// Inspect evaluations.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Inspect and manage client nodes.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Inspect the servers.
    #[command(subcommand)]
    Server(server::ServerCommand),
    /// Inspect service registrations: list, info, delete.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Weighted traffic between subsets of a service's instances: list, status, delete
    /// (register them with `caravan apply -f`).
    #[command(subcommand)]
    Split(split::SplitCommand),
    /// Run the HTTP load balancer: routes from the servers' route table to healthy service
    /// instances (:9999), status page and metrics on :9998.
    Lb(lb::LbArgs),
}

/// A command's failure: what to print and the exit status.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: i32,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Rewrites Nomad-style single-dash long flags (`-check-index`) into clap's `--check-index`.
/// A lone letter (`-f`), a negative number (`-1`) and everything after `--` are left alone.
pub fn normalize_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for arg in args {
        if passthrough {
            out.push(arg);
            continue;
        }
        let rewritten = arg.to_str().and_then(|s| {
            if s == "--" {
                passthrough = true;
                return None;
            }
            let rest = s.strip_prefix('-')?;
            let starts_alpha = rest.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
            (!rest.starts_with('-') && rest.chars().count() >= 2 && starts_alpha)
                .then(|| OsString::from(format!("-{s}")))
        });
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

/// Runs the command line and returns the process exit status.
pub fn main() -> i32 {
    // `caravan logmon …` (hidden, started by the agent, one per task) skips building the whole
    // command line, to touch as little of the binary as it can.
    if std::env::args_os().nth(1).is_some_and(|a| a == "logmon") {
        return crate::agent::logs::logmon::main(std::env::args_os().skip(1));
    }
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", error_text(&e));
            e.code
        }
    }
}

/// Messages Nomad prints as they are: its `Error …: …` ones, and the refusal of a stale
/// `-check-index` (`Enforcing job modify index 5: …` then `Job not updated`).
const VERBATIM_PREFIXES: &[&str] = &["Error", "Enforcing job modify index"];

/// How an error is printed: as is when it already reads like one of Nomad's
/// (`Error querying job: …`), else after `Error: `.
pub fn error_text(e: &CliError) -> String {
    if VERBATIM_PREFIXES.iter().any(|p| e.message.starts_with(p)) {
        e.message.clone()
    } else {
        format!("Error: {}", e.message)
    }
}

fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Job(cmd) => job::run(cmd),
        Command::Status(args) => status::run(args),
        Command::Apply(args) => apply::run(args),
        Command::Alloc(cmd) => alloc::run(cmd),
        Command::Deployment(cmd) => deployment::run(cmd),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Node(cmd) => node::run(cmd),
        Command::Server(cmd) => server::run(cmd),
        Command::Service(cmd) => service::run(cmd),
        Command::Split(cmd) => split::run(cmd),
        Command::Lb(args) => lb::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_args(args.iter().map(OsString::from))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn single_dash_long_flags_become_double_dash() {
        assert_eq!(
            norm(&[
                "caravan",
                "job",
                "run",
                "-check-index",
                "10",
                "-var=a=b",
                "-f",
                "x",
                "-1",
                "--",
                "-keep"
            ]),
            [
                "caravan",
                "job",
                "run",
                "--check-index",
                "10",
                "--var=a=b",
                "-f",
                "x",
                "-1",
                "--",
                "-keep"
            ]
        );
        assert_eq!(
            norm(&["caravan", "--short", "-h"]),
            ["caravan", "--short", "-h"]
        );
    }

    #[test]
    fn errors_are_prefixed_unless_they_say_error_already() {
        assert_eq!(
            error_text(&CliError::new(1, "Error querying job: x")),
            "Error querying job: x"
        );
        assert_eq!(
            error_text(&CliError::new(1, "No job(s)")),
            "Error: No job(s)"
        );
        let stale = "Enforcing job modify index 5: job exists with conflicting job modify index: 7\nJob not updated";
        assert_eq!(error_text(&CliError::new(1, stale)), stale);
    }

    #[test]
    fn nomad_style_command_lines_parse() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(normalize_args(args.iter().map(OsString::from)))
                .map_err(|e| e.to_string())
        };
        for args in [
            &[
                "caravan",
                "job",
                "run",
                "-detach",
                "-check-index",
                "5",
                "-var",
                "a=b",
                "-address",
                "http://x:1",
                "f.hcl",
            ][..],
            &["caravan", "job", "plan", "-verbose", "f.hcl"],
            &[
                "caravan", "job", "stop", "-purge", "-yes", "-detach", "example",
            ],
            &["caravan", "job", "status", "-verbose"],
            &["caravan", "job", "history", "-p", "example"],
            &["caravan", "job", "inspect", "example"],
            &["caravan", "job", "inspect", "-local", "f.hcl"],
            &["caravan", "job", "scale", "example", "cache", "3"],
            &["caravan", "job", "scale", "-detach", "example", "3"],
            &["caravan", "status", "example"],
            &["caravan", "apply", "-f", "manifests/web.yaml", "-f", "dir"],
            &["caravan", "alloc", "status", "-verbose", "abcd"],
            &["caravan", "eval", "status", "-json", "abcd"],
            &["caravan", "node", "status"],
            &[
                "caravan",
                "node",
                "drain",
                "-enable",
                "-deadline",
                "30m",
                "-ignore-system",
                "-yes",
                "abcd",
            ],
            &["caravan", "node", "eligibility", "-disable", "abcd"],
            &["caravan", "deployment", "list", "-verbose", "-json"],
            &["caravan", "deployment", "status"],
            &[
                "caravan",
                "deployment",
                "status",
                "-verbose",
                "-monitor",
                "abcd",
            ],
            &["caravan", "deployment", "status", "-json", "abcd"],
            &[
                "caravan",
                "deployment",
                "promote",
                "-group",
                "web",
                "-group=api",
                "-detach",
                "abcd",
            ],
            &[
                "caravan",
                "deployment",
                "fail",
                "-detach",
                "-verbose",
                "abcd",
            ],
            &["caravan", "deployment", "pause", "abcd"],
            &["caravan", "deployment", "resume", "-detach", "abcd"],
            &["caravan", "job", "promote", "-group", "web", "example"],
            &["caravan", "job", "promote", "-detach", "example"],
            &[
                "caravan", "job", "revert", "-detach", "-verbose", "example", "1",
            ],
            &[
                "caravan",
                "server",
                "members",
                "-address=http://127.0.0.1:4646",
            ],
        ] {
            if let Err(e) = parse(args) {
                panic!("{args:?}: {e}");
            }
        }
        assert!(
            parse(&["caravan", "node", "drain", "abcd"]).is_err(),
            "-enable or -disable is required"
        );
        assert!(parse(&["caravan", "node", "drain", "-enable", "-disable", "abcd"]).is_err());
        assert!(parse(&["caravan", "job", "scale", "example"]).is_err());
        assert!(
            parse(&[
                "caravan",
                "deployment",
                "status",
                "-json",
                "-monitor",
                "abcd"
            ])
            .is_err(),
            "-monitor cannot print JSON"
        );
        assert!(parse(&["caravan", "deployment", "pause", "-detach", "abcd"]).is_err());
        assert!(parse(&["caravan", "deployment", "promote"]).is_err());
        assert!(parse(&["caravan", "job", "revert", "example"]).is_err());
        assert!(parse(&["caravan", "job", "revert", "example", "v1"]).is_err());
    }

    #[test]
    fn deployment_commands_carry_their_arguments() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(normalize_args(args.iter().map(OsString::from)))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"))
                .command
        };
        match parse(&[
            "caravan",
            "deployment",
            "promote",
            "-group",
            "web",
            "-group",
            "api",
            "abcd",
        ]) {
            Command::Deployment(deployment::DeploymentCommand::Promote(a)) => {
                assert_eq!(a.groups, ["web", "api"]);
                assert_eq!(a.id, "abcd");
                assert!(!a.detach);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["caravan", "job", "revert", "-detach", "web", "3"]) {
            Command::Job(job::JobCommand::Revert(a)) => {
                assert_eq!((a.id.as_str(), a.version, a.detach), ("web", 3, true));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["caravan", "job", "promote", "web"]) {
            Command::Job(job::JobCommand::Promote(a)) => {
                assert!(a.groups.is_empty());
                assert_eq!(a.id, "web");
            }
            other => panic!("{other:?}"),
        }
        match parse(&["caravan", "deployment", "status", "-monitor", "abcd"]) {
            Command::Deployment(deployment::DeploymentCommand::Status(a)) => {
                assert!(a.monitor && !a.json);
                assert_eq!(a.id.as_deref(), Some("abcd"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
