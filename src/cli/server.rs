//! `caravan server members`.
//!
//! The `Raft Version` column shows a member's `raft_vsn` tag. Caravan servers keep their state
//! in etcd (or the embedded store), not in Raft, so they do not set that tag and the column
//! reads `<none>`; a Nomad server's members show its version (`3`).

use super::CliError;
use super::conn::{ApiArgs, block_on, err};
use super::format::{self, table};
use crate::client::AgentMember;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// List the live servers and which one leads.
    Members(MembersArgs),
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Also show every member's tags.
    #[arg(long)]
    pub verbose: bool,
    /// Print the members as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: ServerCommand) -> Result<i32, CliError> {
    match cmd {
        ServerCommand::Members(args) => block_on(members(args)),
    }
}

async fn members(args: MembersArgs) -> Result<i32, CliError> {
    let client = args.api.client()?;
    let resp = client
        .members()
        .await
        .map_err(err("Error querying servers"))?;
    if args.json {
        println!("{}", format::json(&resp)?);
        return Ok(0);
    }
    let leader = client
        .leader()
        .await
        .map_err(err("Error determining leaders"))?;
    println!("{}", members_text(&resp.members, &leader, args.verbose));
    Ok(0)
}

/// `Name  Address  Port  Status  Leader  Raft Version  Build  Datacenter  Region`, by name;
/// the leader is the member whose `Addr:Port` is what `GET /v1/status/leader` returned.
pub fn members_text(members: &[AgentMember], leader: &str, verbose: bool) -> String {
    let mut sorted: Vec<&AgentMember> = members.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let tag = |m: &AgentMember, k: &str| m.tags.get(k).cloned().unwrap_or_default();
    let mut header = vec![
        "Name",
        "Address",
        "Port",
        "Status",
        "Leader",
        "Raft Version",
        "Build",
        "Datacenter",
        "Region",
    ];
    if verbose {
        header.push("Tags");
    }
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|m| {
            let addr = if m.addr.contains(':') {
                format!("[{}]:{}", m.addr, m.port)
            } else {
                format!("{}:{}", m.addr, m.port)
            };
            let mut row = vec![
                m.name.clone(),
                m.addr.clone(),
                m.port.to_string(),
                m.status.clone(),
                (!leader.is_empty() && addr == leader).to_string(),
                tag(m, "raft_vsn"),
                tag(m, "build"),
                tag(m, "dc"),
                tag(m, "region"),
            ];
            if verbose {
                let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                row.push(tags.join(","));
            }
            row
        })
        .collect();
    table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn member(name: &str, addr: &str, port: u16) -> AgentMember {
        AgentMember {
            name: name.into(),
            addr: addr.into(),
            port,
            status: "alive".into(),
            tags: BTreeMap::from([
                ("build".to_owned(), "0.1.0".to_owned()),
                ("dc".to_owned(), "dc1".to_owned()),
                ("region".to_owned(), "global".to_owned()),
            ]),
        }
    }

    #[test]
    fn the_leader_is_marked_and_raft_version_is_none() {
        let text = members_text(
            &[
                member("b.global", "10.0.0.2", 4646),
                member("a.global", "10.0.0.1", 4646),
            ],
            "10.0.0.2:4646",
            false,
        );
        assert_eq!(
            text,
            "Name      Address   Port  Status  Leader  Raft Version  Build  Datacenter  Region
a.global  10.0.0.1  4646  alive   false   <none>        0.1.0  dc1         global
b.global  10.0.0.2  4646  alive   true    <none>        0.1.0  dc1         global"
        );
        let no_leader = members_text(&[member("a", "10.0.0.1", 4646)], "", true);
        assert!(no_leader.contains("alive   false"), "{no_leader}");
        assert!(
            no_leader.contains("build=0.1.0,dc=dc1,region=global"),
            "{no_leader}"
        );
    }
}
