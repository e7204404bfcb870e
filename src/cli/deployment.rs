//! `caravan deployment …`: list, status, promote, fail, pause, resume.

use super::CliError;
use super::conn::{self, ApiArgs, Resolved, block_on, check_id_length, err};
use super::deploy_monitor::{await_job_deployment, monitor_deployment};
use super::format::{self, deployment_list, deployment_status, id_length, short_id};
use crate::client::{Client, DeploymentUpdateResponse};
use caravan_schemas::deployment::Deployment;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// List deployments, newest first.
    List(ListArgs),
    /// Show a deployment: its job version, status and each group's progress; with -monitor,
    /// follow it.
    Status(StatusArgs),
    /// Promote the canaries of a deployment (every group, or those named with -group).
    Promote(PromoteArgs),
    /// Mark a deployment failed (rolling back when its groups auto-revert).
    Fail(FollowArgs),
    /// Pause a deployment: nothing new is rolled out until it is resumed.
    Pause(PauseArgs),
    /// Resume a paused deployment.
    Resume(FollowArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Show full ids.
    #[arg(long)]
    pub verbose: bool,
    /// Print the deployments as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Show full ids.
    #[arg(long)]
    pub verbose: bool,
    /// Print the deployment as JSON.
    #[arg(long, conflicts_with = "monitor")]
    pub json: bool,
    /// Follow the deployment until it ends (or waits for a manual promotion).
    #[arg(long)]
    pub monitor: bool,
    /// The deployment's ID or a prefix of it; none lists every deployment.
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Promote only this group (repeatable); by default every group is promoted.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Return after promoting, without following the deployment.
    #[arg(long)]
    pub detach: bool,
    /// Show full ids.
    #[arg(long)]
    pub verbose: bool,
    /// The deployment's ID or a prefix of it.
    pub id: String,
}

/// `fail` and `resume`: a deployment, followed afterwards unless -detach.
#[derive(Debug, Args)]
pub struct FollowArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Return at once, without following the deployment.
    #[arg(long)]
    pub detach: bool,
    /// Show full ids.
    #[arg(long)]
    pub verbose: bool,
    /// The deployment's ID or a prefix of it.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Show full ids.
    #[arg(long)]
    pub verbose: bool,
    /// The deployment's ID or a prefix of it.
    pub id: String,
}

pub fn run(cmd: DeploymentCommand) -> Result<i32, CliError> {
    match cmd {
        DeploymentCommand::List(args) => block_on(async move {
            let client = args.api.client()?;
            list(&client, args.verbose, args.json).await
        }),
        DeploymentCommand::Status(args) => block_on(async move {
            let client = args.api.client()?;
            status(&client, &args).await
        }),
        DeploymentCommand::Promote(args) => block_on(async move {
            let client = args.api.client()?;
            let d = resolve_deployment(&client, &args.id).await?;
            let groups = (!args.groups.is_empty()).then_some(args.groups.as_slice());
            promote(
                &client,
                &d,
                groups,
                Follow::new(args.detach, args.verbose),
                "Error promoting deployment",
            )
            .await
        }),
        DeploymentCommand::Fail(args) => block_on(async move {
            let client = args.api.client()?;
            let d = resolve_deployment(&client, &args.id).await?;
            fail(&client, &d, Follow::new(args.detach, args.verbose)).await
        }),
        DeploymentCommand::Pause(args) => block_on(async move {
            let client = args.api.client()?;
            let d = resolve_deployment(&client, &args.id).await?;
            client
                .pause_deployment(d.id.as_str(), true)
                .await
                .map_err(err("Error pausing deployment"))?;
            println!(
                "Deployment {:?} paused",
                short_id(d.id.as_str(), args.verbose)
            );
            Ok(0)
        }),
        DeploymentCommand::Resume(args) => block_on(async move {
            let client = args.api.client()?;
            let d = resolve_deployment(&client, &args.id).await?;
            let resp = client
                .pause_deployment(d.id.as_str(), false)
                .await
                .map_err(err("Error resuming deployment"))?;
            let follow = Follow::new(args.detach, args.verbose);
            println!("Deployment {:?} resumed", follow.id(d.id.as_str()));
            follow.run(&client, &d, &resp).await
        }),
    }
}

/// What to do once a write to a deployment went through.
#[derive(Clone, Copy, Debug)]
pub struct Follow {
    /// Print the evaluation's ID and return instead of following.
    pub detach: bool,
    /// Full ids.
    pub verbose: bool,
}

impl Follow {
    pub fn new(detach: bool, verbose: bool) -> Self {
        Follow { detach, verbose }
    }

    fn id<'a>(&self, id: &'a str) -> &'a str {
        short_id(id, self.verbose)
    }

    /// Follows `d` unless detached; exit 0 or 2 as the monitor ends.
    async fn run(
        &self,
        client: &Client,
        d: &Deployment,
        resp: &DeploymentUpdateResponse,
    ) -> Result<i32, CliError> {
        if self.detach {
            if !resp.eval_id.is_empty() {
                println!("Evaluation ID: {}", resp.eval_id);
            }
            return Ok(0);
        }
        // Start from the deployment as the write left it (its modify index), not from a read
        // that may predate it.
        let since = resp.deployment_modify_index.saturating_sub(1);
        let ending =
            monitor_deployment(client, d.id.as_str(), id_length(self.verbose), since).await?;
        Ok(ending.exit_code())
    }
}

/// The deployment an id or prefix names, or a clear error listing the candidates.
pub async fn resolve_deployment(client: &Client, given: &str) -> Result<Deployment, CliError> {
    check_id_length(given)?;
    let deployments = client
        .deployments(given)
        .await
        .map_err(err("Error retrieving deployment"))?;
    match conn::resolve(deployments, given, |d| d.id.as_str()) {
        Resolved::One(d) => Ok(d),
        Resolved::None => Err(CliError::new(
            1,
            format!("No deployment(s) with prefix or id {given:?} found"),
        )),
        Resolved::Many(deployments) => Err(CliError::new(
            1,
            format!(
                "Prefix matched multiple deployments\n\n{}",
                deployment_list(&deployments, false)
            ),
        )),
    }
}

async fn list(client: &Client, verbose: bool, json: bool) -> Result<i32, CliError> {
    let mut deployments = client
        .deployments("")
        .await
        .map_err(err("Error retrieving deployments"))?;
    if json {
        deployments.sort_by_key(|d| std::cmp::Reverse(d.create_index));
        println!("{}", format::json(&deployments)?);
    } else {
        println!("{}", deployment_list(&deployments, verbose));
    }
    Ok(0)
}

async fn status(client: &Client, args: &StatusArgs) -> Result<i32, CliError> {
    let Some(given) = args.id.as_deref() else {
        return list(client, args.verbose, args.json).await;
    };
    let d = resolve_deployment(client, given).await?;
    if args.json {
        println!("{}", format::json(&d)?);
        return Ok(0);
    }
    if args.monitor {
        let ending = monitor_deployment(client, d.id.as_str(), id_length(args.verbose), 0).await?;
        return Ok(ending.exit_code());
    }
    println!("{}", deployment_status(&d, args.verbose));
    Ok(0)
}

/// Promotes `d` (every group, or `groups`), says so, and follows it unless detached.
/// `context` starts the error message.
pub async fn promote(
    client: &Client,
    d: &Deployment,
    groups: Option<&[String]>,
    follow: Follow,
    context: &str,
) -> Result<i32, CliError> {
    let resp = client
        .promote_deployment(d.id.as_str(), groups)
        .await
        .map_err(err(context))?;
    println!("Deployment {:?} promoted", follow.id(d.id.as_str()));
    follow.run(client, d, &resp).await
}

/// `Deployment "…" failed`, with Nomad's `. Auto-reverted to job version N.` when failing it
/// rolled the job back.
pub fn failed_message(id: &str, resp: &DeploymentUpdateResponse) -> String {
    match resp.reverted_job_version {
        None => format!("Deployment {id:?} failed"),
        Some(v) => format!("Deployment {id:?} failed. Auto-reverted to job version {v}."),
    }
}

/// Fails `d`. Following a failed deployment would only print it again, so what is followed
/// (unless detached) is the rollback: the deployment of the version the job was reverted to.
async fn fail(client: &Client, d: &Deployment, follow: Follow) -> Result<i32, CliError> {
    let resp = client
        .fail_deployment(d.id.as_str())
        .await
        .map_err(err("Error failing deployment"))?;
    println!("{}", failed_message(follow.id(d.id.as_str()), &resp));
    if resp.reverted_job_version.is_none() {
        return Ok(0);
    }
    if follow.detach {
        if !resp.eval_id.is_empty() {
            println!("Evaluation ID: {}", resp.eval_id);
        }
        return Ok(0);
    }
    let rollback = await_job_deployment(client, d.job_id.as_str(), |next| {
        next.id != d.id && next.job_version > d.job_version
    })
    .await?;
    match rollback {
        Some(next) => {
            let ending =
                monitor_deployment(client, next.id.as_str(), id_length(follow.verbose), 0).await?;
            Ok(ending.exit_code())
        }
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::deployment::{DeploymentState, DeploymentStatus, descriptions};
    use std::collections::BTreeMap;

    fn d(id: &str, version: u64, index: i64, status: DeploymentStatus, desc: &str) -> Deployment {
        Deployment {
            id: id.into(),
            job_id: "web".into(),
            job_version: version,
            status,
            status_description: desc.into(),
            create_index: index,
            ..Deployment::default()
        }
    }

    #[test]
    fn the_list_is_newest_first_and_says_when_empty() {
        let deployments = [
            d(
                "0f2a5b1e-1111-2222-3333-444444444444",
                0,
                10,
                DeploymentStatus::Successful,
                descriptions::SUCCESSFUL,
            ),
            d(
                "7c1d9e2f-1111-2222-3333-444444444444",
                1,
                20,
                DeploymentStatus::Running,
                descriptions::RUNNING_NEEDS_PROMOTION,
            ),
        ];
        assert_eq!(
            deployment_list(&deployments, false),
            "ID        Job ID  Job Version  Status      Description
7c1d9e2f  web     1            running     Deployment is running but requires manual promotion
0f2a5b1e  web     0            successful  Deployment completed successfully"
        );
        assert!(
            deployment_list(&deployments, true)
                .contains("\n7c1d9e2f-1111-2222-3333-444444444444  web"),
        );
        assert_eq!(deployment_list(&[], false), "No deployments found");
    }

    #[test]
    fn status_shows_the_job_and_the_deployed_table() {
        let mut dep = d(
            "7c1d9e2f-1111-2222-3333-444444444444",
            1,
            20,
            DeploymentStatus::Running,
            descriptions::RUNNING_NEEDS_PROMOTION,
        );
        dep.task_groups = BTreeMap::from([
            (
                "api".to_owned(),
                DeploymentState {
                    desired_total: 2,
                    placed_allocs: 2,
                    healthy_allocs: 2,
                    ..DeploymentState::default()
                },
            ),
            (
                "web".to_owned(),
                DeploymentState {
                    auto_revert: true,
                    desired_total: 3,
                    desired_canaries: 1,
                    placed_canaries: vec!["cccc3333-x".into()],
                    placed_allocs: 1,
                    ..DeploymentState::default()
                },
            ),
        ]);
        assert_eq!(
            deployment_status(&dep, false),
            "ID          = 7c1d9e2f
Job ID      = web
Job Version = 1
Status      = running
Description = Deployment is running but requires manual promotion

Deployed
Task Group  Auto Revert  Promoted  Desired  Canaries  Placed  Healthy  Unhealthy
api         false        N/A       2        0         2       2        0
web         true         false     3        1         1       0        0"
        );
    }

    #[test]
    fn fail_messages_are_nomads() {
        let mut resp = DeploymentUpdateResponse::default();
        assert_eq!(
            failed_message("7c1d9e2f", &resp),
            "Deployment \"7c1d9e2f\" failed"
        );
        resp.reverted_job_version = Some(0);
        assert_eq!(
            failed_message("7c1d9e2f", &resp),
            "Deployment \"7c1d9e2f\" failed. Auto-reverted to job version 0."
        );
    }
}
