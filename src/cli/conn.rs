//! What every command that talks to the servers shares: the `-address`/`-token`/`-namespace`/
//! `-region` flags, a runtime to drive the async client, error wording, id-prefix resolution
//! and the `[y/N]` confirmation.

use super::CliError;
use crate::client::{Client, ClientError, Config};
use clap::Args;
use std::future::Future;
use std::io::BufRead;

/// Nomad's general API options.
#[derive(Debug, Clone, Default, Args)]
pub struct ApiArgs {
    /// The HTTP API address (default: $CARAVAN_ADDR, $NOMAD_ADDR or http://127.0.0.1:4646).
    #[arg(long, value_name = "ADDR")]
    pub address: Option<String>,
    /// The ACL token (default: $CARAVAN_TOKEN or $NOMAD_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// The namespace (default: $CARAVAN_NAMESPACE, else "default").
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The region (default: $CARAVAN_REGION, else the agent's).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

impl ApiArgs {
    /// The environment, overridden by the flags.
    pub fn config(&self) -> Config {
        let mut config = Config::from_env();
        if let Some(a) = &self.address {
            config.address = a.clone();
        }
        if let Some(t) = &self.token {
            config.token = Some(t.clone());
        }
        if let Some(n) = &self.namespace {
            config.namespace = Some(n.clone());
        }
        if let Some(r) = &self.region {
            config.region = Some(r.clone());
        }
        config
    }

    /// A client for the configured address.
    pub fn client(&self) -> Result<Client, CliError> {
        Client::new(self.config())
            .map_err(|e| CliError::new(1, format!("Error initializing client: {e}")))
    }
}

/// A job file that names no namespace decodes into `default`; `-namespace` (or
/// `CARAVAN_NAMESPACE`) then decides where it goes, as with Nomad's CLI.
pub fn place_in_namespace(job: &mut caravan_schemas::job::Job, client: &Client) {
    if let Some(ns) = &client.config().namespace
        && job.namespace.as_str() == "default"
        && ns != "*"
    {
        job.namespace = caravan_schemas::ids::Namespace::new(ns.clone());
    }
}

/// Runs a command's async body on a small runtime of its own.
pub fn block_on<F>(fut: F) -> Result<i32, CliError>
where
    F: Future<Output = Result<i32, CliError>>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(1, format!("starting the runtime: {e}")))?
        .block_on(fut)
}

/// Wraps a client error in Nomad's wording: `Error querying job: Unexpected response code: …`.
pub fn err(context: &str) -> impl Fn(ClientError) -> CliError + '_ {
    move |e| CliError::new(1, format!("{context}: {e}"))
}

/// What an id prefix matched.
#[derive(Debug, PartialEq)]
pub enum Resolved<T> {
    /// An exact match, or the only object whose id starts with the prefix.
    One(T),
    /// Several objects, none exactly.
    Many(Vec<T>),
    None,
}

/// Matches `given` against the ids of `items` (already filtered by the server, filtered again
/// here in case it ignored `prefix`).
pub fn resolve<T>(items: Vec<T>, given: &str, id: impl Fn(&T) -> &str) -> Resolved<T> {
    let mut matching: Vec<T> = items
        .into_iter()
        .filter(|i| id(i).starts_with(given))
        .collect();
    if let Some(pos) = matching.iter().position(|i| id(i) == given) {
        return Resolved::One(matching.swap_remove(pos));
    }
    match matching.len() {
        0 => Resolved::None,
        1 => matching.pop().map_or(Resolved::None, Resolved::One),
        _ => Resolved::Many(matching),
    }
}

/// UUID lookups need at least two characters, as in Nomad.
pub fn check_id_length(id: &str) -> Result<(), CliError> {
    if id.chars().count() < 2 {
        return Err(CliError::new(
            1,
            "Identifier must contain at least two characters.",
        ));
    }
    Ok(())
}

/// The answer to a `[y/N]` question.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Yes,
    /// Declined: print the message and exit 0.
    No(&'static str),
    /// Not understood: print the message and exit 1.
    Unclear(&'static str),
}

/// Interprets an answer as Nomad does: only an exact `y` confirms.
pub fn interpret(answer: &str, cancel: &'static str) -> Answer {
    let a = answer.trim();
    let lower = a.to_ascii_lowercase();
    if a.is_empty() || lower.starts_with('n') {
        Answer::No(cancel)
    } else if lower.starts_with('y') && a.len() > 1 {
        Answer::No("For confirmation, an exact ‘y’ is required.")
    } else if a != "y" {
        Answer::Unclear("No confirmation detected. For confirmation, an exact 'y' is required.")
    } else {
        Answer::Yes
    }
}

/// Asks `question` on standard output and reads the answer from standard input (end of input
/// is "no").
pub fn ask(question: &str, cancel: &'static str) -> Answer {
    use std::io::Write;
    print!("{question} ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    interpret(&line, cancel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_resolve_exact_first_then_unique() {
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            resolve(ids(&["web", "web-2"]), "web", String::as_str),
            Resolved::One("web".into())
        );
        assert_eq!(
            resolve(ids(&["web-1", "web-2"]), "web", String::as_str),
            Resolved::Many(ids(&["web-1", "web-2"]))
        );
        assert_eq!(
            resolve(ids(&["abcd1234", "ffff"]), "ab", String::as_str),
            Resolved::One("abcd1234".into())
        );
        assert_eq!(resolve(ids(&["x"]), "y", String::as_str), Resolved::None);
    }

    #[test]
    fn only_an_exact_y_confirms() {
        assert_eq!(interpret("y\n", "Cancelling"), Answer::Yes);
        assert_eq!(interpret("\n", "Cancelling"), Answer::No("Cancelling"));
        assert_eq!(interpret("No", "Cancelling"), Answer::No("Cancelling"));
        assert!(matches!(interpret("yes", "c"), Answer::No(_)));
        assert!(matches!(interpret("sure", "c"), Answer::Unclear(_)));
    }

    #[test]
    fn flags_override_the_environment() {
        let args = ApiArgs {
            address: Some("http://10.0.0.1:4646".into()),
            namespace: Some("prod".into()),
            ..ApiArgs::default()
        };
        let c = args.config();
        assert_eq!(c.address, "http://10.0.0.1:4646");
        assert_eq!(c.namespace.as_deref(), Some("prod"));
    }
}
