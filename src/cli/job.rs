//! `caravan job …`: init, validate, inspect, run, plan, stop, status, history, scale, promote,
//! revert.

use super::CliError;
use super::conn::{self, Answer, ApiArgs, Resolved, block_on, err};
use super::deploy_monitor::{await_job_deployment, monitor_deployment};
use super::deployment::{self, Follow};
use super::diff::{job_diff_text, plan_text};
use super::format::{
    self, alloc_list, alloc_metrics, deployment_block, format_time, id_length, job_list,
    job_status, kv, now_nanos, section, table,
};
use super::monitor::{Outcome, monitor_eval};
use crate::client::{Client, ClientError, Config, JobRegisterResponse};
use caravan_schemas::alloc::AllocationListStub;
use caravan_schemas::deployment::Deployment;
use caravan_schemas::eval::{EvalStatus, Evaluation};
use caravan_schemas::job::{Job, JobSummary, JobType};
use caravan_schemas::jobspec::{self, Document, VarFile, VariableInputs};
use caravan_schemas::plan::{JobDiff, JobPlanResponse, annotate, job_diff};
use clap::{Args, Subcommand};
use std::io::Read;
use std::path::{Path, PathBuf};

const EXAMPLE: &str = include_str!("../../manifests/example.nomad.hcl");
const EXAMPLE_FILE: &str = "example.nomad.hcl";

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Write an example job file (the redis "example" job).
    Init {
        /// Leave out the explanatory comments.
        #[arg(long)]
        short: bool,
        /// Where to write it.
        #[arg(default_value = EXAMPLE_FILE)]
        file: PathBuf,
    },
    /// Check job files (HCL, JSON or YAML) without submitting them.
    Validate {
        #[command(flatten)]
        vars: VarArgs,
        /// Files to check; `-` reads standard input.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Print a job as JSON: from the servers, or from a file with -local.
    Inspect(InspectArgs),
    /// Submit a job and follow its evaluation.
    Run(RunArgs),
    /// Show what submitting a job would change, without changing anything.
    Plan(PlanArgs),
    /// Stop a running job (and with -purge, forget it).
    Stop(StopArgs),
    /// List jobs, or show one job's status and allocations.
    Status(StatusArgs),
    /// List a job's versions, with -p the changes between them.
    History(HistoryArgs),
    /// Change the count of a job's task group.
    Scale(ScaleArgs),
    /// Promote the canaries of a job's latest deployment.
    Promote(JobPromoteArgs),
    /// Register an earlier version of a job again, and follow its rollout.
    Revert(RevertArgs),
}

/// `-var k=v` and `-var-file F`, for jobspecs with `variable` blocks.
#[derive(Debug, Clone, Default, Args)]
pub struct VarArgs {
    /// Set an HCL variable: -var name=value (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub var: Vec<String>,
    /// Read HCL variables from a file (HCL `name = value` lines, or JSON) (repeatable).
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_file: Vec<PathBuf>,
}

impl VarArgs {
    /// Gathers variable inputs: files, then `NOMAD_VAR_*`/`CARAVAN_VAR_*` environment, then flags.
    pub fn inputs(&self) -> Result<VariableInputs, CliError> {
        let mut inputs = VariableInputs::default();
        for path in &self.var_file {
            let content = std::fs::read_to_string(path).map_err(|e| {
                CliError::new(1, format!("reading var file {}: {e}", path.display()))
            })?;
            inputs.files.push(VarFile {
                name: path.display().to_string(),
                content,
            });
        }
        for (k, v) in std::env::vars() {
            if let Some(name) = k
                .strip_prefix("NOMAD_VAR_")
                .or_else(|| k.strip_prefix("CARAVAN_VAR_"))
            {
                inputs.env.push((name.to_owned(), v));
            }
        }
        for kv in &self.var {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| CliError::new(1, format!("-var {kv:?}: expected NAME=VALUE")))?;
            inputs.flags.push((k.to_owned(), v.to_owned()));
        }
        Ok(inputs)
    }
}

#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct InspectArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Read the job from a local file instead of the servers.
    #[arg(long)]
    pub local: bool,
    /// Show this version of the job instead of the latest.
    #[arg(long)]
    pub version: Option<u64>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// The job's ID (or ID prefix); with -local, the job file.
    pub target: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Return after submitting, without monitoring the evaluation.
    #[arg(long)]
    pub detach: bool,
    /// Submit only if the job's modify index is still this (0: only if the job is new).
    #[arg(long = "check-index", value_name = "INDEX")]
    pub check_index: Option<i64>,
    /// Show full ids.
    #[arg(long)]
    pub verbose: bool,
    /// The job file (HCL, JSON or YAML); `-` reads standard input.
    pub file: String,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Do not show the diff.
    #[arg(long = "diff", default_value_t = true, action = clap::ArgAction::Set, hide = true)]
    pub diff: bool,
    /// Also show the fields of added and removed parts.
    #[arg(long)]
    pub verbose: bool,
    /// Print the plan response as JSON.
    #[arg(long)]
    pub json: bool,
    /// The job file (HCL, JSON or YAML); `-` reads standard input.
    pub file: String,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Remove the job and its history instead of marking it stopped.
    #[arg(long)]
    pub purge: bool,
    /// Return after submitting, without monitoring the evaluation.
    #[arg(long)]
    pub detach: bool,
    /// Do not ask for confirmation when the ID is a prefix.
    #[arg(long)]
    pub yes: bool,
    /// Show full ids.
    #[arg(long)]
    pub verbose: bool,
    /// The job's ID or a prefix of it.
    pub id: String,
}

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
    /// Include allocations of earlier jobs with the same ID.
    #[arg(long = "all-allocs")]
    pub all_allocs: bool,
    /// The job's ID or a prefix of it; none lists every job.
    pub id: Option<String>,
}

#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Show the changes between consecutive versions.
    #[arg(short = 'p')]
    pub diffs: bool,
    /// Show the full job of each version.
    #[arg(long)]
    pub full: bool,
    /// Show only this version.
    #[arg(long)]
    pub version: Option<u64>,
    /// Print the versions as JSON.
    #[arg(long)]
    pub json: bool,
    /// The job's ID or a prefix of it.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Return after submitting, without monitoring the evaluation.
    #[arg(long)]
    pub detach: bool,
    /// Show full ids.
    #[arg(long)]
    pub verbose: bool,
    /// JOB [GROUP] COUNT; the group may be left out when the job has only one.
    #[arg(num_args = 2..=3, required = true, value_name = "JOB [GROUP] COUNT")]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct JobPromoteArgs {
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
    /// The job's ID or a prefix of it.
    pub id: String,
}

#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct RevertArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Return after submitting, without monitoring the evaluation and the deployment.
    #[arg(long)]
    pub detach: bool,
    /// Show full ids.
    #[arg(long)]
    pub verbose: bool,
    /// The job's ID or a prefix of it.
    pub id: String,
    /// The version to revert to (see `job history`).
    pub version: u64,
}

/// Reads a job file, or standard input for `-`.
pub fn read_source(file: &str) -> Result<(String, String), CliError> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::new(1, format!("reading standard input: {e}")))?;
        return Ok(("<stdin>".into(), text));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::new(1, format!("reading {file}: {e}")))?;
    Ok((file.to_owned(), text))
}

/// Reads and decodes a file that must hold exactly one job.
pub fn read_job(file: &str, vars: &VarArgs) -> Result<Job, CliError> {
    let (name, text) = read_source(file)?;
    jobspec::decode_job(&name, &text, &vars.inputs()?)
        .map_err(|e| CliError::new(1, format!("Error parsing job file {name}:\n{e}")))
}

pub fn run(cmd: JobCommand) -> Result<i32, CliError> {
    match cmd {
        JobCommand::Init { short, file } => init(short, &file),
        JobCommand::Validate { vars, files } => validate(&vars, &files),
        JobCommand::Inspect(args) => inspect(args),
        JobCommand::Run(args) => block_on(run_job(args)),
        // Any error of plan exits 255, as Nomad's does.
        JobCommand::Plan(args) => block_on(plan(args)).map_err(|e| CliError::new(255, e.message)),
        JobCommand::Stop(args) => block_on(stop(args)),
        JobCommand::Status(args) => block_on(status(
            args.api.client()?,
            args.id.as_deref(),
            StatusOptions {
                verbose: args.verbose,
                json: args.json,
                all_allocs: args.all_allocs,
            },
        )),
        JobCommand::History(args) => block_on(history(args)),
        JobCommand::Scale(args) => block_on(scale(args)),
        JobCommand::Promote(args) => block_on(promote(args)),
        JobCommand::Revert(args) => block_on(revert(args)),
    }
}

/// The example job, with or without its comments.
pub fn example(short: bool) -> String {
    if !short {
        return EXAMPLE.to_owned();
    }
    EXAMPLE
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

fn init(short: bool, file: &Path) -> Result<i32, CliError> {
    if file.exists() {
        return Err(CliError::new(
            1,
            format!("Job '{}' already exists", file.display()),
        ));
    }
    std::fs::write(file, example(short))
        .map_err(|e| CliError::new(1, format!("writing {}: {e}", file.display())))?;
    println!("Example job file written to {}", file.display());
    Ok(0)
}

fn validate(vars: &VarArgs, files: &[String]) -> Result<i32, CliError> {
    let inputs = vars.inputs()?;
    let mut failed = 0;
    for file in files {
        let (name, text) = read_source(file)?;
        match jobspec::decode(&name, &text, &inputs) {
            Ok(docs) => {
                for doc in docs {
                    match doc {
                        Document::Job(job) => {
                            println!("{name}: job {:?} validation successful", job.id.as_str());
                        }
                        Document::TrafficSplit(split) => println!(
                            "{name}: traffic split {:?} validation successful",
                            split.name
                        ),
                    }
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("{name}: job validation errors:\n{e}");
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// `{"Job": …}` as pretty JSON, as `job inspect` prints it.
fn wrapped_job_json(job: &Job) -> Result<String, CliError> {
    format::json(&serde_json::json!({ "Job": job }))
}

fn inspect(args: InspectArgs) -> Result<i32, CliError> {
    if args.local {
        let job = read_job(&args.target, &args.vars)?;
        println!("{}", wrapped_job_json(&job)?);
        return Ok(0);
    }
    block_on(async move {
        let client = args.api.client()?;
        let id = resolve_job_id(&client, &args.target).await?;
        let job = match args.version {
            None => client.job(&id).await.map_err(err("Error inspecting job"))?,
            Some(v) => client
                .job_versions(&id, false)
                .await
                .map_err(err("Error retrieving job versions"))?
                .versions
                .into_iter()
                .find(|j| j.version == v)
                .ok_or_else(|| {
                    CliError::new(1, format!("Version {v} of job {id:?} does not exist"))
                })?,
        };
        println!("{}", wrapped_job_json(&job)?);
        Ok(0)
    })
}

/// The job an id or prefix names, or a clear error listing the candidates.
pub async fn resolve_job_id(client: &Client, given: &str) -> Result<String, CliError> {
    let jobs = client
        .jobs(given)
        .await
        .map_err(err("Error querying job prefix"))?;
    match conn::resolve(jobs, given, |j| j.id.as_str()) {
        Resolved::One(j) => Ok(j.id.to_string()),
        Resolved::None => Err(CliError::new(
            1,
            format!("No job(s) with prefix or id {given:?} found"),
        )),
        Resolved::Many(jobs) => Err(CliError::new(
            1,
            format!("Prefix matched multiple jobs\n\n{}", job_list(&jobs)),
        )),
    }
}

/// `Enforcing job modify index …` errors become Nomad's two lines.
fn submit_error(e: ClientError) -> CliError {
    if let Some(body) = e.body()
        && body.contains("Enforcing job modify index")
    {
        let reason = body
            .split_once('(')
            .and_then(|(_, r)| r.strip_suffix(')'))
            .filter(|r| r.starts_with("Enforcing"))
            .unwrap_or(body);
        return CliError::new(1, format!("{reason}\nJob not updated"));
    }
    CliError::new(1, format!("Error submitting job: {e}"))
}

fn print_warnings(warnings: &str) {
    if !warnings.is_empty() {
        println!("Job Warnings:\n{warnings}\n");
    }
}

async fn run_job(args: RunArgs) -> Result<i32, CliError> {
    let mut job = read_job(&args.file, &args.vars)?;
    let client = args.api.client()?;
    conn::place_in_namespace(&mut job, &client);
    let resp = client
        .register_job(&job, args.check_index)
        .await
        .map_err(submit_error)?;
    print_warnings(&resp.warnings);
    let monitor = !args.detach && !resp.eval_id.is_empty() && !job.is_parent();
    if !monitor {
        println!("Job registration successful");
        if !resp.eval_id.is_empty() {
            println!("Evaluation ID: {}", resp.eval_id);
        }
        return Ok(0);
    }
    let length = id_length(args.verbose);
    let outcome = monitor_eval(&client, &resp.eval_id, length).await?;
    // The job's own namespace, which the file may name while the flags do not.
    let client =
        if client.config().namespace.as_deref().unwrap_or("default") == job.namespace.as_str() {
            client
        } else {
            Client::new(Config {
                namespace: Some(job.namespace.to_string()),
                ..client.config().clone()
            })
            .map_err(|e| CliError::new(1, format!("Error initializing client: {e}")))?
        };
    follow_deployment(&client, job.id.as_str(), &resp, &outcome, length).await
}

/// Whether a job rolls out through deployments: a service job with an `update` block whose
/// `max_parallel` is above 0 in some group.
pub fn rolls_out(job: &Job) -> bool {
    job.r#type == JobType::Service
        && job.task_groups.iter().any(|g| {
            g.update
                .as_ref()
                .or(job.update.as_ref())
                .is_some_and(|u| u.max_parallel > 0)
        })
}

/// Whether `d` is the rollout of what `registered` submitted: the version the job is now at
/// (of this very job, not an earlier one of the same name), created after the evaluation.
pub fn is_rollout_of(d: &Deployment, job: &Job, registered: &JobRegisterResponse) -> bool {
    d.job_version == job.version
        && d.create_index >= registered.eval_create_index
        && (d.job_create_index == 0
            || job.create_index == 0
            || d.job_create_index == job.create_index)
}

/// After `job run` or `job revert` followed the evaluation: follows the deployment of the
/// version just registered — the evaluation's, or the job's latest one for that version, which
/// the controller creates right after — until it ends. Exit status: the evaluation's when it
/// failed to place, else 2 when the deployment does not succeed.
async fn follow_deployment(
    client: &Client,
    job_id: &str,
    registered: &JobRegisterResponse,
    outcome: &Outcome,
    length: usize,
) -> Result<i32, CliError> {
    if outcome.exit_code() != 0 {
        // Waiting for capacity: the deployment could not finish before it comes.
        return Ok(outcome.exit_code());
    }
    let deployment_id = if outcome.eval.deployment_id.as_str().is_empty() {
        let job = match client.job(job_id).await {
            Ok(job) => job,
            Err(e) if e.is_not_found() => return Ok(0),
            Err(e) => return Err(err("Error querying job")(e)),
        };
        if !rolls_out(&job) {
            return Ok(0);
        }
        match await_job_deployment(client, job_id, |d| is_rollout_of(d, &job, registered)).await? {
            Some(d) => d.id.to_string(),
            None => return Ok(0),
        }
    } else {
        outcome.eval.deployment_id.to_string()
    };
    Ok(monitor_deployment(client, &deployment_id, length, 0)
        .await?
        .exit_code())
}

async fn promote(args: JobPromoteArgs) -> Result<i32, CliError> {
    let client = args.api.client()?;
    let id = resolve_job_id(&client, &args.id).await?;
    let latest = client
        .job_latest_deployment(&id)
        .await
        .map_err(err("Error retrieving deployment"))?;
    let Some(d) = latest.filter(Deployment::active) else {
        return Err(CliError::new(
            1,
            format!("Job {id:?} has no deployment to promote"),
        ));
    };
    let groups = (!args.groups.is_empty()).then_some(args.groups.as_slice());
    let context = format!(
        "Error promoting deployment {:?} for job {id:?}",
        d.id.as_str()
    );
    deployment::promote(
        &client,
        &d,
        groups,
        Follow::new(args.detach, args.verbose),
        &context,
    )
    .await
}

async fn revert(args: RevertArgs) -> Result<i32, CliError> {
    let client = args.api.client()?;
    let id = resolve_job_id(&client, &args.id).await?;
    let resp = client
        .revert_job(&id, args.version, None)
        .await
        .map_err(err("Error reverting job"))?;
    print_warnings(&resp.warnings);
    if resp.eval_id.is_empty() {
        return Ok(0);
    }
    if args.detach {
        println!("Evaluation ID: {}", resp.eval_id);
        return Ok(0);
    }
    let length = id_length(args.verbose);
    let outcome = monitor_eval(&client, &resp.eval_id, length).await?;
    follow_deployment(&client, &id, &resp, &outcome, length).await
}

/// The diff to show: the server's, or one computed here when the server sent none.
async fn plan_diff(
    client: &Client,
    job: &Job,
    resp: &JobPlanResponse,
) -> Result<JobDiff, CliError> {
    let mut diff = match &resp.diff {
        Some(d) => d.clone(),
        None => {
            let current = match client.job(job.id.as_str()).await {
                Ok(j) => Some(j),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(err("Error reading the current job")(e)),
            };
            job_diff(current.as_ref(), job)
        }
    };
    if let Some(ann) = &resp.annotations
        && diff.task_groups.iter().all(|g| g.updates.is_empty())
    {
        annotate(&mut diff, ann);
    }
    Ok(diff)
}

/// 1 when allocations would be created, destroyed, migrated or replaced, else 0.
pub fn plan_exit_code(resp: &JobPlanResponse) -> i32 {
    i32::from(resp.changes_allocations())
}

async fn plan(args: PlanArgs) -> Result<i32, CliError> {
    let mut job = read_job(&args.file, &args.vars)?;
    let client = args.api.client()?;
    conn::place_in_namespace(&mut job, &client);
    let resp = client
        .plan_job(&job, args.diff)
        .await
        .map_err(err("Error during plan"))?;
    if args.json {
        println!("{}", format::json(&resp)?);
        return Ok(plan_exit_code(&resp));
    }
    let diff = if args.diff {
        Some(plan_diff(&client, &job, &resp).await?)
    } else {
        None
    };
    println!(
        "{}",
        plan_text(
            &resp,
            diff.as_ref(),
            &job,
            &args.file,
            args.verbose,
            now_nanos()
        )
    );
    Ok(plan_exit_code(&resp))
}

async fn stop(args: StopArgs) -> Result<i32, CliError> {
    let client = args.api.client()?;
    let id = resolve_job_id(&client, &args.id).await?;
    if id != args.id && !args.yes {
        match conn::ask(
            &format!("Are you sure you want to stop job {id:?}? [y/N]"),
            "Cancelling job stop",
        ) {
            Answer::Yes => {}
            Answer::No(msg) => {
                println!("{msg}");
                return Ok(0);
            }
            Answer::Unclear(msg) => {
                println!("{msg}");
                return Ok(1);
            }
        }
    }
    let resp: JobRegisterResponse = client
        .deregister_job(&id, args.purge)
        .await
        .map_err(err("Error deregistering job"))?;
    if args.detach || resp.eval_id.is_empty() {
        println!("{}", resp.eval_id);
        return Ok(0);
    }
    let outcome = monitor_eval(&client, &resp.eval_id, id_length(args.verbose)).await?;
    Ok(outcome.exit_code())
}

/// Options of `job status` and `status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StatusOptions {
    pub verbose: bool,
    pub json: bool,
    pub all_allocs: bool,
}

/// Everything `job status <id>` shows.
#[derive(Debug, Default)]
pub struct JobStatus {
    pub job: Job,
    pub summary: Option<JobSummary>,
    pub deployment: Option<Deployment>,
    pub evals: Vec<Evaluation>,
    pub allocs: Vec<AllocationListStub>,
}

/// An optional section's endpoint may not exist on every server: 404 and 405 mean "none".
fn optional<T>(r: Result<T, ClientError>, context: &str) -> Result<Option<T>, CliError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.status(), Some(404 | 405)) => Ok(None),
        Err(e) => Err(err(context)(e)),
    }
}

pub async fn status(
    client: Client,
    id: Option<&str>,
    opts: StatusOptions,
) -> Result<i32, CliError> {
    let Some(given) = id else {
        let jobs = client.jobs("").await.map_err(err("Error querying jobs"))?;
        if opts.json {
            println!("{}", format::json(&jobs)?);
        } else if jobs.is_empty() {
            println!("No running jobs");
        } else {
            println!("{}", job_list(&jobs));
        }
        return Ok(0);
    };
    let id = resolve_job_id(&client, given).await?;
    let job = client.job(&id).await.map_err(err("Error querying job"))?;
    if opts.json {
        println!("{}", format::json(&job)?);
        return Ok(0);
    }
    let summary = optional(client.job_summary(&id).await, "Error querying job summary")?;
    let deployment = optional(
        client.job_latest_deployment(&id).await,
        "Error querying latest deployment",
    )?
    .flatten();
    let evals = optional(
        client.job_evaluations(&id).await,
        "Error querying job evaluations",
    )?
    .unwrap_or_default();
    let allocs = client
        .job_allocations(&id, opts.all_allocs)
        .await
        .map_err(err("Error querying job allocations"))?;
    let st = JobStatus {
        job,
        summary,
        deployment,
        evals,
        allocs,
    };
    println!("{}", job_status_text(&st, opts.verbose, now_nanos()));
    Ok(0)
}

/// `job status <id>` as text.
pub fn job_status_text(st: &JobStatus, verbose: bool, now: i64) -> String {
    let job = &st.job;
    let periodic = job.periodic.as_ref().is_some_and(|p| p.enabled);
    let parameterized = job.parameterized_job.is_some();
    let mut out = kv(&[
        ("ID", job.id.to_string()),
        ("Name", job.name.clone()),
        ("Submit Date", format_time(job.submit_time)),
        ("Type", job.r#type.to_string()),
        ("Priority", job.priority.to_string()),
        ("Datacenters", job.datacenters.join(",")),
        ("Namespace", job.namespace.to_string()),
        ("Node Pool", job.node_pool.clone()),
        ("Status", job_status(&job.status, job.stop)),
        ("Periodic", periodic.to_string()),
        ("Parameterized", parameterized.to_string()),
    ]);
    if periodic || parameterized {
        let children = st.summary.as_ref().map(|s| &s.children);
        let row = children.map_or_else(
            || vec!["0".into(), "0".into(), "0".into()],
            |c| {
                vec![
                    c.pending.to_string(),
                    c.running.to_string(),
                    c.dead.to_string(),
                ]
            },
        );
        section(
            &mut out,
            "Children Job Summary",
            &table(&["Pending", "Running", "Dead"], &[row]),
        );
        return out;
    }
    if let Some(summary) = &st.summary {
        let rows: Vec<Vec<String>> = summary
            .summary
            .iter()
            .map(|(group, s)| {
                vec![
                    group.clone(),
                    s.queued.to_string(),
                    s.starting.to_string(),
                    s.running.to_string(),
                    s.failed.to_string(),
                    s.complete.to_string(),
                    s.lost.to_string(),
                    s.unknown.to_string(),
                ]
            })
            .collect();
        section(
            &mut out,
            "Summary",
            &table(
                &[
                    "Task Group",
                    "Queued",
                    "Starting",
                    "Running",
                    "Failed",
                    "Complete",
                    "Lost",
                    "Unknown",
                ],
                &rows,
            ),
        );
    }
    // The newest evaluation with failures, shown while some evaluation is blocked.
    let blocked = st.evals.iter().any(|e| e.status == EvalStatus::Blocked);
    let failed = st
        .evals
        .iter()
        .filter(|e| !e.failed_tg_allocs.is_empty())
        .max_by_key(|e| e.create_index);
    if blocked && let Some(eval) = failed {
        let text: Vec<String> = eval
            .failed_tg_allocs
            .iter()
            .map(|(group, m)| format!("Task Group {group:?}:\n{}", alloc_metrics(m, "  ")))
            .collect();
        section(&mut out, "Placement Failure", &text.join("\n\n"));
    }
    if let Some(d) = &st.deployment {
        section(&mut out, "Latest Deployment", &deployment_block(d, verbose));
    }
    section(
        &mut out,
        "Allocations",
        &alloc_list(&st.allocs, verbose, now),
    );
    out
}

/// `job history` as text: each version (newest first) with, under `-p`, its change from the
/// version before it.
pub fn history_text(entries: &[(&Job, Option<&JobDiff>)], full: bool) -> Result<String, CliError> {
    let mut blocks = Vec::new();
    for (job, diff) in entries {
        let mut rows = vec![
            ("Version", job.version.to_string()),
            ("Stable", job.stable.to_string()),
            ("Submit Date", format_time(job.submit_time)),
        ];
        if let Some(d) = diff {
            rows.push(("Diff", format!("\n{}", job_diff_text(d, false).trim())));
        }
        let mut block = kv(&rows);
        if full {
            block.push('\n');
            block.push_str(&format::json(job)?);
        }
        blocks.push(block);
    }
    Ok(blocks.join("\n\n"))
}

async fn history(args: HistoryArgs) -> Result<i32, CliError> {
    let client = args.api.client()?;
    let id = resolve_job_id(&client, &args.id).await?;
    let resp = client
        .job_versions(&id, args.diffs)
        .await
        .map_err(err("Error retrieving job versions"))?;
    let mut versions = resp.versions;
    versions.sort_by_key(|j| std::cmp::Reverse(j.version));
    // Diffs[i] is the change from version i+1 to version i; computed here when the server
    // sent none.
    let diffs: Vec<JobDiff> = if resp.diffs.len() + 1 == versions.len() {
        resp.diffs
    } else {
        versions
            .windows(2)
            .map(|w| job_diff(Some(&w[1]), &w[0]))
            .collect()
    };
    let mut entries: Vec<(&Job, Option<&JobDiff>)> = versions
        .iter()
        .enumerate()
        .map(|(i, j)| (j, diffs.get(i).filter(|_| args.diffs)))
        .collect();
    if let Some(v) = args.version {
        entries.retain(|(j, _)| j.version == v);
        if entries.is_empty() {
            return Err(CliError::new(1, format!("Job {id:?} has no version {v}")));
        }
    }
    if args.json {
        let jobs: Vec<&Job> = entries.iter().map(|(j, _)| *j).collect();
        println!("{}", format::json(&jobs)?);
        return Ok(0);
    }
    println!("{}", history_text(&entries, args.full)?);
    Ok(0)
}

/// Splits `JOB [GROUP] COUNT`.
fn scale_target(args: &[String]) -> Result<(&str, Option<&str>, i64), CliError> {
    let (job, group, count) = match args {
        [job, count] => (job.as_str(), None, count),
        [job, group, count] => (job.as_str(), Some(group.as_str()), count),
        _ => {
            return Err(CliError::new(
                1,
                "This command takes two or three arguments: <job> [<group>] <count>",
            ));
        }
    };
    let count: i64 = count
        .parse()
        .map_err(|_| CliError::new(1, format!("Failed to convert count {count:?} to int")))?;
    if count < 0 {
        return Err(CliError::new(1, "Count must be zero or more"));
    }
    Ok((job, group, count))
}

async fn scale(args: ScaleArgs) -> Result<i32, CliError> {
    let (given, group, count) = scale_target(&args.args)?;
    let client = args.api.client()?;
    let id = resolve_job_id(&client, given).await?;
    let job = client.job(&id).await.map_err(err("Error querying job"))?;
    let group = match group {
        Some(g) => {
            if job.group(g).is_none() {
                return Err(CliError::new(
                    1,
                    format!("Job {id:?} has no task group {g:?}"),
                ));
            }
            g.to_owned()
        }
        None => match job.task_groups.as_slice() {
            [only] => only.name.clone(),
            _ => {
                return Err(CliError::new(
                    1,
                    format!(
                        "Job {id:?} has {} task groups; name the one to scale: job scale {id} <group> {count}",
                        job.task_groups.len()
                    ),
                ));
            }
        },
    };
    let resp = client
        .scale_job(&id, &group, count, "submitted using the Caravan CLI")
        .await
        .map_err(err("Error submitting scaling request"))?;
    print_warnings(&resp.warnings);
    if args.detach || resp.eval_id.is_empty() {
        if !resp.eval_id.is_empty() {
            println!("Evaluation ID: {}", resp.eval_id);
        }
        return Ok(0);
    }
    let outcome = monitor_eval(&client, &resp.eval_id, id_length(args.verbose)).await?;
    Ok(outcome.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::alloc::{ClientStatus, DesiredStatus};
    use caravan_schemas::deployment::{DeploymentState, DeploymentStatus};
    use caravan_schemas::job::TaskGroupSummary;
    use std::collections::BTreeMap;

    const NOW: i64 = 1_714_564_800_000_000_000;
    const SEC: i64 = 1_000_000_000;

    #[test]
    fn the_example_job_validates_with_and_without_comments() {
        for short in [false, true] {
            let text = example(short);
            let job = jobspec::decode_job(EXAMPLE_FILE, &text, &VariableInputs::default())
                .unwrap_or_else(|e| panic!("short={short}: {e}"));
            assert_eq!(job.id.as_str(), "example");
            let group = job.group("cache").unwrap();
            assert_eq!(group.tasks[0].name, "redis");
            assert_eq!(group.networks[0].dynamic_ports[0].to, 6379);
        }
        assert!(!example(true).contains('#'));
    }

    fn example_job() -> Job {
        let mut job =
            jobspec::decode_job(EXAMPLE_FILE, EXAMPLE, &VariableInputs::default()).unwrap();
        job.status = "running".into();
        job.submit_time = NOW - 600 * SEC;
        job
    }

    fn stub(id: &str, index: i64, client: ClientStatus) -> AllocationListStub {
        AllocationListStub {
            id: id.into(),
            node_id: "171a583b-0000-0000-0000-000000000000".into(),
            task_group: "cache".into(),
            job_version: 0,
            desired_status: DesiredStatus::Run,
            client_status: client,
            create_index: index,
            create_time: NOW - 328 * SEC,
            modify_time: NOW - 312 * SEC,
            ..AllocationListStub::default()
        }
    }

    #[test]
    fn job_status_shows_the_block_summary_deployment_and_allocations() {
        let job = example_job();
        let summary = JobSummary {
            summary: BTreeMap::from([(
                "cache".to_owned(),
                TaskGroupSummary {
                    running: 1,
                    ..TaskGroupSummary::default()
                },
            )]),
            ..JobSummary::default()
        };
        let deployment = Deployment {
            id: "0f2a5b1e-1111-2222-3333-444444444444".into(),
            status: DeploymentStatus::Successful,
            status_description: "Deployment completed successfully".into(),
            task_groups: BTreeMap::from([(
                "cache".to_owned(),
                DeploymentState {
                    desired_total: 1,
                    placed_allocs: 1,
                    healthy_allocs: 1,
                    ..DeploymentState::default()
                },
            )]),
            ..Deployment::default()
        };
        let st = JobStatus {
            job,
            summary: Some(summary),
            deployment: Some(deployment),
            evals: Vec::new(),
            allocs: vec![stub("8ba85cef-aaaa", 5, ClientStatus::Running)],
        };
        let text = job_status_text(&st, false, NOW);
        let expected = "ID            = example
Name          = example
Submit Date   = 2024-05-01T11:50:00Z
Type          = service
Priority      = 50
Datacenters   = *
Namespace     = default
Node Pool     = default
Status        = running
Periodic      = false
Parameterized = false

Summary
Task Group  Queued  Starting  Running  Failed  Complete  Lost  Unknown
cache       0       0         1        0       0         0     0

Latest Deployment
ID          = 0f2a5b1e
Status      = successful
Description = Deployment completed successfully

Deployed
Task Group  Desired  Placed  Healthy  Unhealthy
cache       1        1       1        0

Allocations
ID        Node ID   Task Group  Version  Desired  Status   Created    Modified
8ba85cef  171a583b  cache       0        run      running  5m28s ago  5m12s ago";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_stopped_job_with_a_blocked_placement() {
        let mut job = example_job();
        job.status = "dead".into();
        job.stop = true;
        let mut failed = Evaluation {
            status: EvalStatus::Blocked,
            create_index: 9,
            ..Evaluation::default()
        };
        failed.failed_tg_allocs.insert(
            "cache".into(),
            caravan_schemas::alloc::AllocMetric {
                nodes_evaluated: 1,
                nodes_exhausted: 1,
                ..Default::default()
            },
        );
        let st = JobStatus {
            job,
            evals: vec![failed],
            ..JobStatus::default()
        };
        let text = job_status_text(&st, false, NOW);
        assert!(text.contains("Status        = dead (stopped)"), "{text}");
        assert!(
            text.contains(
                "\n\nPlacement Failure\nTask Group \"cache\":\n  * Resources exhausted on 1 nodes"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("Allocations\nNo allocations placed"),
            "{text}"
        );
    }

    #[test]
    fn job_list_and_prefix_errors() {
        let job = example_job();
        let text = job_list(&[job.stub(None)]);
        assert_eq!(
            text,
            "ID       Type     Priority  Status   Submit Date\nexample  service  50        running  2024-05-01T11:50:00Z"
        );
    }

    #[test]
    fn history_shows_versions_with_diffs() {
        let v0 = example_job();
        let mut v1 = v0.clone();
        v1.version = 1;
        v1.task_groups[0].count = 3;
        let versions = [v1.clone(), v0.clone()];
        let diffs = [job_diff(Some(&v0), &v1)];
        let entries = [(&versions[0], diffs.first()), (&versions[1], None)];
        let text = history_text(&entries, false).unwrap();
        let expected = "Version     = 1
Stable      = false
Submit Date = 2024-05-01T11:50:00Z
Diff        =
+/- Job: \"example\"
+/- Task Group: \"cache\"
  +/- Count: \"1\" => \"3\" (forces create)
      Task: \"redis\"

Version     = 0
Stable      = false
Submit Date = 2024-05-01T11:50:00Z";
        assert_eq!(text, expected);
        let plain = history_text(&[(&versions[0], None), (&versions[1], None)], false).unwrap();
        assert!(!plain.contains("Diff"));
    }

    #[test]
    fn enforce_index_errors_become_two_lines() {
        let e = submit_error(ClientError::Status {
            status: 409,
            body: "Enforcing job modify index 5: job exists with conflicting job modify index: 7"
                .into(),
        });
        assert_eq!(
            e.message,
            "Enforcing job modify index 5: job exists with conflicting job modify index: 7\nJob not updated"
        );
        let nomad = submit_error(ClientError::Status {
            status: 500,
            body: "rpc error: (Enforcing job modify index 5: job not found)".into(),
        });
        assert_eq!(
            nomad.message,
            "Enforcing job modify index 5: job not found\nJob not updated"
        );
        let other = submit_error(ClientError::Status {
            status: 400,
            body: "Job validation failed".into(),
        });
        assert_eq!(
            other.message,
            "Error submitting job: Unexpected response code: 400 (Job validation failed)"
        );
    }

    #[test]
    fn scale_arguments() {
        let a = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(scale_target(&a(&["web", "3"])).unwrap(), ("web", None, 3));
        assert_eq!(
            scale_target(&a(&["web", "api", "0"])).unwrap(),
            ("web", Some("api"), 0)
        );
        assert!(scale_target(&a(&["web", "x"])).is_err());
        assert!(scale_target(&a(&["web", "-1"])).is_err());
    }

    #[test]
    fn the_rollout_followed_is_the_registered_versions() {
        let mut job = example_job();
        job.version = 2;
        job.create_index = 7;
        assert!(rolls_out(&job), "the example has an update block");
        let registered = JobRegisterResponse {
            eval_create_index: 40,
            ..JobRegisterResponse::default()
        };
        let d = Deployment {
            job_version: 2,
            job_create_index: 7,
            create_index: 41,
            ..Deployment::default()
        };
        assert!(is_rollout_of(&d, &job, &registered));
        let older = Deployment {
            job_version: 1,
            ..d.clone()
        };
        assert!(!is_rollout_of(&older, &job, &registered));
        let before = Deployment {
            create_index: 30,
            ..d.clone()
        };
        assert!(
            !is_rollout_of(&before, &job, &registered),
            "an unchanged job's finished deployment is not followed again"
        );
        let of_a_purged_job = Deployment {
            job_create_index: 3,
            ..d.clone()
        };
        assert!(!is_rollout_of(&of_a_purged_job, &job, &registered));

        let mut no_update = job.clone();
        no_update.update = None;
        for g in &mut no_update.task_groups {
            g.update = None;
        }
        assert!(!rolls_out(&no_update));
        let mut batch = job.clone();
        batch.r#type = JobType::Batch;
        assert!(!rolls_out(&batch));
        let mut serial = job;
        for g in &mut serial.task_groups {
            if let Some(u) = g.update.as_mut() {
                u.max_parallel = 0;
            }
        }
        serial.update = None;
        assert!(!rolls_out(&serial), "max_parallel = 0: no deployment");
    }

    #[test]
    fn plan_exit_codes() {
        use caravan_schemas::plan::{DesiredUpdates, PlanAnnotations};
        let mut resp = JobPlanResponse::default();
        assert_eq!(plan_exit_code(&resp), 0);
        resp.annotations = Some(PlanAnnotations {
            desired_tg_updates: BTreeMap::from([(
                "cache".to_owned(),
                DesiredUpdates {
                    ignore: 2,
                    in_place_update: 1,
                    ..DesiredUpdates::default()
                },
            )]),
            ..PlanAnnotations::default()
        });
        assert_eq!(plan_exit_code(&resp), 0);
        if let Some(a) = resp.annotations.as_mut() {
            a.desired_tg_updates.insert(
                "db".into(),
                DesiredUpdates {
                    stop: 1,
                    ..DesiredUpdates::default()
                },
            );
        }
        assert_eq!(plan_exit_code(&resp), 1);
    }
}
