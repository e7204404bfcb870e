//! `caravan split list|status|delete`: TrafficSplits, the weights the load balancer gives to
//! subsets of a service's instances (registered with `caravan apply -f`).

use super::CliError;
use super::conn::{ApiArgs, block_on, err};
use super::format::{self, kv, section, short_id, table};
use crate::client::{Client, QueryOptions};
use caravan_schemas::lb::{Instance, RouteTable, TrafficSplit};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum SplitCommand {
    /// List the TrafficSplits and their shares.
    List(ListArgs),
    /// Show a TrafficSplit and, per share, the instances it sends traffic to now.
    Status(StatusArgs),
    /// Delete a TrafficSplit: its service's instances share its traffic evenly again.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the splits as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the split as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show full allocation ids.
    #[arg(long)]
    pub verbose: bool,
    /// The split's name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The split's name.
    pub name: String,
}

pub fn run(cmd: SplitCommand) -> Result<i32, CliError> {
    match cmd {
        SplitCommand::List(args) => block_on(async move {
            let client = args.api.client()?;
            list(&client, args.json).await
        }),
        SplitCommand::Status(args) => block_on(async move {
            let client = args.api.client()?;
            status(&client, &args.name, args.json, args.verbose).await
        }),
        SplitCommand::Delete(args) => block_on(async move {
            let client = args.api.client()?;
            client
                .delete_traffic_split(&args.name)
                .await
                .map_err(err("Error deleting traffic split"))?;
            println!("Successfully deleted traffic split {:?}", args.name);
            Ok(0)
        }),
    }
}

async fn list(client: &Client, json: bool) -> Result<i32, CliError> {
    let (splits, _) = client
        .traffic_splits(&QueryOptions::default())
        .await
        .map_err(err("Error listing traffic splits"))?;
    if json {
        println!("{}", format::json(&splits)?);
        return Ok(0);
    }
    println!("{}", split_list(&splits));
    Ok(0)
}

async fn status(client: &Client, name: &str, json: bool, verbose: bool) -> Result<i32, CliError> {
    let split = client
        .traffic_split(name, &QueryOptions::default())
        .await
        .map_err(err("Error reading traffic split"))?;
    if json {
        println!("{}", format::json(&split)?);
        return Ok(0);
    }
    let (table, _) = client
        .lb_routes(&QueryOptions::default())
        .await
        .map_err(err("Error reading the route table"))?;
    println!("{}", split_status(&split, &table, verbose));
    Ok(0)
}

/// Each share's weight as a percentage of the total, rounded.
fn percent(weight: u32, total: u64) -> u64 {
    (u64::from(weight) * 100 + total / 2)
        .checked_div(total)
        .unwrap_or(0)
}

/// `90% canary=false, 10% canary=true`.
pub fn shares(split: &TrafficSplit) -> String {
    let total: u64 = split.splits.iter().map(|s| u64::from(s.weight)).sum();
    split
        .splits
        .iter()
        .map(|s| format!("{}% {}", percent(s.weight, total), s.subset.describe()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `split list` as text: `Name  Namespace  Service  Splits`.
pub fn split_list(splits: &[TrafficSplit]) -> String {
    if splits.is_empty() {
        return "No traffic splits found".to_owned();
    }
    let rows: Vec<Vec<String>> = splits
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.namespace.to_string(),
                s.service.clone(),
                shares(s),
            ]
        })
        .collect();
    table(&["Name", "Namespace", "Service", "Splits"], &rows)
}

/// The instances the route table gives each share of `split` now, with the routes they serve.
fn instances_by_share(split: &TrafficSplit, routes: &RouteTable) -> Vec<Vec<(Instance, String)>> {
    let mut out: Vec<Vec<(Instance, String)>> = vec![Vec::new(); split.splits.len()];
    for route in routes
        .routes
        .iter()
        .filter(|r| r.service == split.service && r.namespace == split.namespace)
    {
        let label = format!("{}{}", route.host, route.prefix);
        for (i, share) in split.splits.iter().enumerate() {
            let subset = share.subset.describe();
            // The table may predate the split's last change: match shares by position and label.
            let Some(backend) = route
                .backends
                .get(i)
                .filter(|b| b.subset == subset && b.weight == share.weight)
            else {
                continue;
            };
            for inst in &backend.instances {
                let seen = out[i].iter_mut().find(|(have, _)| {
                    (&have.alloc_id, &have.address, have.port)
                        == (&inst.alloc_id, &inst.address, inst.port)
                });
                match seen {
                    Some((_, labels)) => {
                        labels.push(',');
                        labels.push_str(&label);
                    }
                    None => out[i].push((inst.clone(), label.clone())),
                }
            }
        }
    }
    out
}

/// `split status NAME` as text: the split, its shares, and the instances each share selects.
pub fn split_status(split: &TrafficSplit, routes: &RouteTable, verbose: bool) -> String {
    let mut out = kv(&[
        ("Name", split.name.clone()),
        ("Namespace", split.namespace.to_string()),
        ("Service", split.service.clone()),
    ]);
    let total: u64 = split.splits.iter().map(|s| u64::from(s.weight)).sum();
    let by_share = instances_by_share(split, routes);
    let share_rows: Vec<Vec<String>> = split
        .splits
        .iter()
        .zip(&by_share)
        .map(|(s, insts)| {
            vec![
                s.weight.to_string(),
                format!("{}%", percent(s.weight, total)),
                s.subset.describe(),
                insts.len().to_string(),
            ]
        })
        .collect();
    section(
        &mut out,
        "Shares",
        &table(&["Weight", "Share", "Subset", "Instances"], &share_rows),
    );
    let routed = routes
        .routes
        .iter()
        .any(|r| r.service == split.service && r.namespace == split.namespace);
    if !routed {
        section(
            &mut out,
            "Instances",
            &format!(
                "No route for service {:?}: none of its instances is healthy with a urlprefix- tag",
                split.service
            ),
        );
        return out;
    }
    let rows: Vec<Vec<String>> = split
        .splits
        .iter()
        .zip(&by_share)
        .flat_map(|(s, insts)| {
            insts.iter().map(move |(i, label)| {
                vec![
                    s.subset.describe(),
                    i.socket_addr(),
                    short_id(i.alloc_id.as_str(), verbose).to_owned(),
                    i.job_version.to_string(),
                    i.canary.to_string(),
                    label.clone(),
                ]
            })
        })
        .collect();
    let body = if rows.is_empty() {
        "No healthy instance is selected by any share".to_owned()
    } else {
        table(
            &[
                "Subset", "Address", "Alloc ID", "Version", "Canary", "Routes",
            ],
            &rows,
        )
    };
    section(&mut out, "Instances", &body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::ids::{AllocId, Namespace};
    use caravan_schemas::lb::{Backend, Route, Split, Subset};

    fn split() -> TrafficSplit {
        let share = |w, c| Split {
            weight: w,
            subset: Subset {
                canary: Some(c),
                ..Subset::default()
            },
        };
        TrafficSplit {
            name: "demo".into(),
            namespace: Namespace::default_ns(),
            service: "web".into(),
            splits: vec![share(90, false), share(10, true)],
            ..TrafficSplit::default()
        }
    }

    fn inst(alloc: &str, port: i32, canary: bool) -> Instance {
        Instance {
            address: "127.0.0.1".into(),
            port,
            alloc_id: AllocId::new(alloc),
            job_version: u64::from(canary),
            canary,
        }
    }

    #[test]
    fn list_shows_percentages() {
        let mut odd = split();
        odd.name = "thirds".into();
        odd.splits[0].weight = 2;
        odd.splits[1].weight = 1;
        assert_eq!(
            split_list(&[split(), odd]),
            "Name    Namespace  Service  Splits\n\
             demo    default    web      90% canary=false, 10% canary=true\n\
             thirds  default    web      67% canary=false, 33% canary=true"
        );
        assert_eq!(split_list(&[]), "No traffic splits found");
    }

    #[test]
    fn status_lists_each_shares_instances() {
        let table = RouteTable {
            routes: vec![Route {
                prefix: "/".into(),
                service: "web".into(),
                namespace: Namespace::default_ns(),
                proto: "http".into(),
                backends: vec![
                    Backend {
                        weight: 90,
                        subset: "canary=false".into(),
                        instances: vec![
                            inst("aaaaaaaa-1", 1001, false),
                            inst("bbbbbbbb-2", 1002, false),
                        ],
                    },
                    Backend {
                        weight: 10,
                        subset: "canary=true".into(),
                        instances: vec![inst("cccccccc-3", 1003, true)],
                    },
                ],
                ..Route::default()
            }],
            modify_index: 5,
        };
        let text = split_status(&split(), &table, false);
        assert_eq!(
            text,
            "Name      = demo\n\
             Namespace = default\n\
             Service   = web\n\
             \n\
             Shares\n\
             Weight  Share  Subset        Instances\n\
             90      90%    canary=false  2\n\
             10      10%    canary=true   1\n\
             \n\
             Instances\n\
             Subset        Address         Alloc ID  Version  Canary  Routes\n\
             canary=false  127.0.0.1:1001  aaaaaaaa  0        false   /\n\
             canary=false  127.0.0.1:1002  bbbbbbbb  0        false   /\n\
             canary=true   127.0.0.1:1003  cccccccc  1        true    /"
        );
        let none = split_status(&split(), &RouteTable::default(), false);
        assert!(
            none.ends_with("none of its instances is healthy with a urlprefix- tag"),
            "{none}"
        );
    }
}
