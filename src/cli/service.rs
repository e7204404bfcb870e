//! `caravan service list|info|delete`: the service registrations, as Nomad's `service`
//! commands show them.

use super::CliError;
use super::conn::{ApiArgs, block_on, err};
use super::format::{self, short_id, table};
use crate::client::{Client, QueryOptions};
use caravan_schemas::service::{ServiceRegistration, ServiceRegistrationListStub};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List the registered services and their tags.
    List(ListArgs),
    /// Show the registrations of one service: where each instance listens.
    Info(InfoArgs),
    /// Delete one registration (the controller writes it again while its allocation runs).
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the services as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the registrations as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show full ids.
    #[arg(long)]
    pub verbose: bool,
    /// The service's name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The service's name.
    pub name: String,
    /// The registration's ID.
    pub id: String,
}

pub fn run(cmd: ServiceCommand) -> Result<i32, CliError> {
    match cmd {
        ServiceCommand::List(args) => block_on(async move {
            let client = args.api.client()?;
            list(&client, args.json).await
        }),
        ServiceCommand::Info(args) => block_on(async move {
            let client = args.api.client()?;
            info(&client, &args.name, args.json, args.verbose).await
        }),
        ServiceCommand::Delete(args) => block_on(async move {
            let client = args.api.client()?;
            client
                .delete_service_registration(&args.name, &args.id)
                .await
                .map_err(err("Error deleting service registration"))?;
            println!("Successfully deleted service registration");
            Ok(0)
        }),
    }
}

async fn list(client: &Client, json: bool) -> Result<i32, CliError> {
    let (stubs, _) = client
        .services(&QueryOptions::default())
        .await
        .map_err(err("Error listing service registrations"))?;
    if json {
        println!("{}", format::json(&stubs)?);
        return Ok(0);
    }
    let all_namespaces = client.config().namespace.as_deref() == Some("*");
    println!("{}", service_list(&stubs, all_namespaces));
    Ok(0)
}

async fn info(client: &Client, name: &str, json: bool, verbose: bool) -> Result<i32, CliError> {
    let (regs, _) = client
        .service(name, &QueryOptions::default())
        .await
        .map_err(err("Error listing service registrations"))?;
    if json {
        println!("{}", format::json(&regs)?);
        return Ok(0);
    }
    println!("{}", service_info(&regs, verbose));
    Ok(0)
}

/// Tags as Nomad prints them: `[a,b]`.
fn tags(tags: &[String]) -> String {
    format!("[{}]", tags.join(","))
}

/// `service list` as text: `Service Name  Tags` (with a `Namespace` column for `-namespace *`).
pub fn service_list(stubs: &[ServiceRegistrationListStub], all_namespaces: bool) -> String {
    let rows: Vec<Vec<String>> = stubs
        .iter()
        .flat_map(|ns| {
            ns.services.iter().map(move |s| {
                let mut row = vec![s.service_name.clone()];
                if all_namespaces {
                    row.push(ns.namespace.to_string());
                }
                row.push(tags(&s.tags));
                row
            })
        })
        .collect();
    if rows.is_empty() {
        return "No service registrations found".to_owned();
    }
    if all_namespaces {
        table(&["Service Name", "Namespace", "Tags"], &rows)
    } else {
        table(&["Service Name", "Tags"], &rows)
    }
}

/// `service info NAME` as text: `Job ID  Address  Tags  Node ID  Alloc ID`.
pub fn service_info(regs: &[ServiceRegistration], verbose: bool) -> String {
    if regs.is_empty() {
        return "No service registrations found".to_owned();
    }
    let rows: Vec<Vec<String>> = regs
        .iter()
        .map(|r| {
            vec![
                r.job_id.to_string(),
                r.socket_addr(),
                tags(&r.tags),
                short_id(r.node_id.as_str(), verbose).to_owned(),
                short_id(r.alloc_id.as_str(), verbose).to_owned(),
            ]
        })
        .collect();
    table(&["Job ID", "Address", "Tags", "Node ID", "Alloc ID"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::ids::{AllocId, JobId, Namespace, NodeId};
    use caravan_schemas::service::list_stubs;

    fn reg(ns: &str, name: &str, tags: &[&str], port: i32) -> ServiceRegistration {
        ServiceRegistration {
            service_name: name.into(),
            namespace: Namespace::new(ns),
            job_id: JobId::new("demo"),
            node_id: NodeId::new("fb2170a8-257d-3c64-b14d-bc06cc94e34c"),
            alloc_id: AllocId::new("5456bd7a-9fc0-c0dd-6131-cbee77f57577"),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            address: "10.0.0.5".into(),
            port,
            ..ServiceRegistration::default()
        }
    }

    #[test]
    fn list_reads_like_nomads() {
        let regs = [
            reg("default", "web", &["urlprefix-/", "v1"], 1),
            reg("default", "web", &["canary"], 2),
            reg("default", "db", &[], 3),
            reg("ops", "metrics", &["prom"], 4),
        ];
        let stubs = list_stubs(&regs[..3]);
        assert_eq!(
            service_list(&stubs, false),
            "Service Name  Tags\n\
             db            []\n\
             web           [canary,urlprefix-/,v1]"
        );
        assert_eq!(
            service_list(&list_stubs(&regs), true),
            "Service Name  Namespace  Tags\n\
             db            default    []\n\
             web           default    [canary,urlprefix-/,v1]\n\
             metrics       ops        [prom]"
        );
        assert_eq!(service_list(&[], false), "No service registrations found");
    }

    #[test]
    fn info_shows_where_each_instance_listens() {
        let regs = [reg("default", "web", &["a", "b"], 23456)];
        assert_eq!(
            service_info(&regs, false),
            "Job ID  Address         Tags   Node ID   Alloc ID\n\
             demo    10.0.0.5:23456  [a,b]  fb2170a8  5456bd7a"
        );
        let verbose = service_info(&regs, true);
        assert!(
            verbose.ends_with(
                "fb2170a8-257d-3c64-b14d-bc06cc94e34c  5456bd7a-9fc0-c0dd-6131-cbee77f57577"
            ),
            "{verbose}"
        );
        assert_eq!(service_info(&[], false), "No service registrations found");
    }
}
