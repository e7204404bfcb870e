//! `caravan lb`: run the built-in HTTP load balancer (see `crate::lb`).

use super::CliError;
use crate::client::Config;
use crate::lb::{LbConfig, Source};
use clap::Args;
use std::path::PathBuf;

/// `caravan lb [-addr ADDR] [-ui-addr ADDR] [-servers URL[,URL…] | -routes FILE]`.
#[derive(Debug, Clone, Args)]
pub struct LbArgs {
    /// Where to proxy requests.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9999")]
    pub addr: String,
    /// Where to serve the status page, /routes, /health and /metrics.
    #[arg(long = "ui-addr", value_name = "ADDR", default_value = "0.0.0.0:9998")]
    pub ui_addr: String,
    /// Servers to follow the route table from, comma-separated (default: $CARAVAN_ADDR,
    /// $NOMAD_ADDR or http://127.0.0.1:4646).
    #[arg(long, value_name = "URL[,URL...]", conflicts_with = "routes")]
    pub servers: Option<String>,
    /// Route by a RouteTable JSON file instead, re-read when it changes (for tests and
    /// benchmarks without a cluster).
    #[arg(long, value_name = "FILE")]
    pub routes: Option<PathBuf>,
    /// A PEM bundle of CAs trusted, besides Mozilla's roots, by upstreams of `proto=https`
    /// routes (their certificates must name the instance's IP address).
    #[arg(long = "upstream-ca", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// Log level: trace, debug, info, warn, error (overridden by $CARAVAN_LOG).
    #[arg(long = "log-level", value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

impl LbArgs {
    /// The settings these flags and the environment give.
    pub fn config(&self) -> LbConfig {
        self.config_with(Config::from_env())
    }

    fn config_with(&self, env: Config) -> LbConfig {
        let source = match (&self.routes, &self.servers) {
            (Some(file), _) => Source::File(file.clone()),
            (None, Some(list)) => Source::Servers(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                env,
            ),
            (None, None) => Source::Servers(vec![env.address.clone()], env),
        };
        LbConfig {
            addr: self.addr.clone(),
            ui_addr: self.ui_addr.clone(),
            source,
            upstream_ca: self.upstream_ca.clone(),
        }
    }
}

pub fn run(args: LbArgs) -> Result<i32, CliError> {
    let config = args.config();
    if let Source::Servers(s, _) = &config.source
        && s.is_empty()
    {
        return Err(CliError::new(1, "-servers names no server"));
    }
    super::agent::init_logging(&args.log_level);
    // The proxy runs on its own per-core workers (`crate::lb`); this runtime only follows the
    // route table and serves the status side.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(1, format!("starting the runtime: {e}")))?;
    runtime
        .block_on(crate::lb::run(config, super::agent::shutdown_signal()))
        .map_err(|e| CliError::new(1, e.to_string()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(servers: Option<&str>, routes: Option<&str>) -> LbArgs {
        LbArgs {
            addr: "0.0.0.0:9999".into(),
            ui_addr: "0.0.0.0:9998".into(),
            servers: servers.map(Into::into),
            routes: routes.map(Into::into),
            upstream_ca: None,
            log_level: "info".into(),
        }
    }

    #[test]
    fn servers_come_from_the_flag_else_the_environment() {
        let env = Config::from_lookup(|k| (k == "NOMAD_ADDR").then(|| "http://nomad:4646".into()));
        let c = args(Some("http://a:4646, http://b:4646"), None).config_with(env.clone());
        assert!(
            matches!(&c.source, Source::Servers(s, _) if s == &["http://a:4646", "http://b:4646"])
        );
        let c = args(None, None).config_with(env.clone());
        assert!(matches!(&c.source, Source::Servers(s, _) if s == &["http://nomad:4646"]));
        let c = args(None, Some("/tmp/r.json")).config_with(env);
        assert!(matches!(&c.source, Source::File(p) if p.to_str() == Some("/tmp/r.json")));
    }
}
