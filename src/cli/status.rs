//! `caravan status [ID]`: with no id the job list; with one, whatever it names — a job first,
//! then an allocation, a node or an evaluation whose id starts with it.

use super::conn::{ApiArgs, block_on, err};
use super::job::StatusOptions;
use super::{CliError, alloc, eval, job, node};
use clap::Args;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Show full ids and more columns.
    #[arg(long)]
    pub verbose: bool,
    /// Print the API objects as JSON.
    #[arg(long)]
    pub json: bool,
    /// A job ID, or a prefix of a job, allocation, node or evaluation ID.
    pub id: Option<String>,
}

pub fn run(args: StatusArgs) -> Result<i32, CliError> {
    block_on(async move {
        let client = args.api.client()?;
        let opts = StatusOptions {
            verbose: args.verbose,
            json: args.json,
            all_allocs: false,
        };
        let Some(id) = args.id.as_deref() else {
            return job::status(client, None, opts).await;
        };
        let jobs = client.jobs(id).await.map_err(err("Error querying jobs"))?;
        if jobs.iter().any(|j| j.id.as_str().starts_with(id)) {
            return job::status(client, Some(id), opts).await;
        }
        if id.chars().count() >= 2 {
            // Other kinds are looked up only to be helpful: a server without one of these
            // endpoints simply has no match there.
            let starts = |s: &str| s.starts_with(id);
            if let Ok(allocs) = client.allocations(id).await
                && allocs.iter().any(|a| starts(a.id.as_str()))
            {
                return alloc::status(&client, id, args.verbose, args.json).await;
            }
            if let Ok(nodes) = client.nodes(id).await
                && nodes.iter().any(|n| starts(n.id.as_str()))
            {
                return node::status(&client, Some(id), args.verbose, args.json).await;
            }
            if let Ok(evals) = client.evaluations(id).await
                && evals.iter().any(|e| starts(e.id.as_str()))
            {
                return eval::status(&client, id, args.verbose, args.json).await;
            }
        }
        Err(CliError::new(
            1,
            format!(
                "No job(s), allocation(s), node(s) or evaluation(s) with prefix or id {id:?} found"
            ),
        ))
    })
}
