//! `caravan eval status`.

use super::CliError;
use super::conn::{self, ApiArgs, Resolved, block_on, check_id_length, err};
use super::format::{
    self, alloc_list, alloc_metrics, failed_group_header, format_time, kv, now_nanos, section,
    short_id, table,
};
use crate::client::{Client, QueryOptions};
use caravan_schemas::alloc::AllocationListStub;
use caravan_schemas::eval::Evaluation;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Show an evaluation: what triggered it, its status, and why placements failed.
    Status(EvalStatusArgs),
}

#[derive(Debug, Args)]
pub struct EvalStatusArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Show full ids.
    #[arg(long)]
    pub verbose: bool,
    /// Print the evaluation as JSON.
    #[arg(long)]
    pub json: bool,
    /// The evaluation's ID or a prefix of it.
    pub id: String,
}

pub fn run(cmd: EvalCommand) -> Result<i32, CliError> {
    match cmd {
        EvalCommand::Status(args) => block_on(async move {
            let client = args.api.client()?;
            status(&client, &args.id, args.verbose, args.json).await
        }),
    }
}

fn eval_list(evals: &[Evaluation], verbose: bool) -> String {
    let rows: Vec<Vec<String>> = evals
        .iter()
        .map(|e| {
            vec![
                short_id(e.id.as_str(), verbose).to_owned(),
                e.priority.to_string(),
                e.triggered_by.to_string(),
                e.job_id.to_string(),
                e.status.to_string(),
                (!e.failed_tg_allocs.is_empty()).to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "Priority",
            "Triggered By",
            "Job ID",
            "Status",
            "Placement Failures",
        ],
        &rows,
    )
}

/// The evaluation an id or prefix names.
pub async fn resolve_eval_id(client: &Client, given: &str) -> Result<String, CliError> {
    check_id_length(given)?;
    let evals = client
        .evaluations(given)
        .await
        .map_err(err("Error querying evaluation"))?;
    match conn::resolve(evals, given, |e| e.id.as_str()) {
        Resolved::One(e) => Ok(e.id.to_string()),
        Resolved::None => Err(CliError::new(
            1,
            format!("No evaluation(s) with prefix or id {given:?} found"),
        )),
        Resolved::Many(evals) => Err(CliError::new(
            1,
            format!(
                "Prefix matched multiple evaluations\n\n{}",
                eval_list(&evals, false)
            ),
        )),
    }
}

pub async fn status(
    client: &Client,
    given: &str,
    verbose: bool,
    json: bool,
) -> Result<i32, CliError> {
    let id = resolve_eval_id(client, given).await?;
    let (eval, _) = client
        .evaluation(&id, &QueryOptions::default())
        .await
        .map_err(err("Error querying evaluation"))?;
    if json {
        println!("{}", format::json(&eval)?);
        return Ok(0);
    }
    // The placed allocations are a bonus; an older server may not list them.
    let allocs = client.evaluation_allocations(&id).await.unwrap_or_default();
    println!("{}", eval_status_text(&eval, &allocs, verbose, now_nanos()));
    Ok(0)
}

/// What the evaluation's trigger refers to (Nomad's `getTriggerDetails`).
fn trigger_details(e: &Evaluation) -> Option<(&'static str, String)> {
    match e.triggered_by.as_str() {
        "job-register" | "job-deregister" | "periodic-job" | "rolling-update" | "alloc-failure"
        | "job-scaling" => Some(("Job ID", e.job_id.to_string())),
        "node-update" | "node-drain" => Some(("Node ID", e.node_id.to_string())),
        "deployment-watcher" => Some(("Deployment ID", e.deployment_id.to_string())),
        "max-plan-attempts" => Some(("Previous Eval", e.previous_eval.to_string())),
        _ => None,
    }
}

/// `eval status <id>` as text.
pub fn eval_status_text(
    e: &Evaluation,
    allocs: &[AllocationListStub],
    verbose: bool,
    now: i64,
) -> String {
    let failures = !e.failed_tg_allocs.is_empty();
    let status_desc = if e.status_description.is_empty() {
        e.status.to_string()
    } else {
        e.status_description.clone()
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("ID", short_id(e.id.as_str(), verbose).to_owned()),
        ("Create Time", format_time(e.create_time)),
        ("Modify Time", format_time(e.modify_time)),
        ("Status", e.status.to_string()),
        ("Status Description", status_desc),
        ("Type", e.kind.clone()),
        ("TriggeredBy", e.triggered_by.to_string()),
    ];
    if let Some((noun, subject)) = trigger_details(e) {
        rows.push((noun, subject));
    }
    rows.push(("Priority", e.priority.to_string()));
    rows.push(("Placement Failures", failures.to_string()));
    if let Some(t) = e.wait_until.unix_nanos() {
        rows.push(("Wait Until", format_time(t)));
    }
    let mut out = kv(&rows);
    if !allocs.is_empty() {
        section(
            &mut out,
            "Placed Allocations",
            &alloc_list(allocs, verbose, now),
        );
    }
    if failures {
        let mut parts = Vec::new();
        for (group, m) in &e.failed_tg_allocs {
            parts.push(format!(
                "{}\n{}",
                failed_group_header(group, m),
                alloc_metrics(m, "  ")
            ));
        }
        let mut body = parts.join("\n\n");
        if !e.blocked_eval.is_empty() {
            body.push_str(&format!(
                "\n\nEvaluation {:?} waiting for additional capacity to place remainder",
                short_id(e.blocked_eval.as_str(), verbose)
            ));
        }
        section(&mut out, "Failed Placements", &body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::alloc::AllocMetric;
    use caravan_schemas::eval::{EvalStatus, TriggeredBy};
    use std::collections::BTreeMap;

    const NOW: i64 = 1_714_564_800_000_000_000;

    #[test]
    fn a_blocked_evaluation_lists_its_failures() {
        let mut e = Evaluation {
            id: "abcd1234-0000-0000-0000-000000000000".into(),
            priority: 50,
            kind: "service".into(),
            triggered_by: TriggeredBy::JobRegister,
            job_id: "example".into(),
            status: EvalStatus::Complete,
            blocked_eval: "efgh5678-0000".into(),
            create_time: NOW,
            modify_time: NOW,
            ..Evaluation::default()
        };
        e.failed_tg_allocs.insert(
            "cache".into(),
            AllocMetric {
                nodes_evaluated: 1,
                nodes_exhausted: 1,
                dimension_exhausted: BTreeMap::from([("memory".to_owned(), 1)]),
                ..AllocMetric::default()
            },
        );
        let text = eval_status_text(&e, &[], false, NOW);
        let expected = "ID                 = abcd1234
Create Time        = 2024-05-01T12:00:00Z
Modify Time        = 2024-05-01T12:00:00Z
Status             = complete
Status Description = complete
Type               = service
TriggeredBy        = job-register
Job ID             = example
Priority           = 50
Placement Failures = true

Failed Placements
Task Group \"cache\" (failed to place 1 allocation):
  * Resources exhausted on 1 nodes
  * Dimension \"memory\" exhausted on 1 nodes

Evaluation \"efgh5678\" waiting for additional capacity to place remainder";
        assert_eq!(text, expected);
    }

    #[test]
    fn ambiguous_prefixes_list_the_candidates() {
        let evals = vec![
            Evaluation {
                id: "ab000000-1".into(),
                job_id: "a".into(),
                ..Evaluation::default()
            },
            Evaluation {
                id: "ab111111-2".into(),
                job_id: "b".into(),
                ..Evaluation::default()
            },
        ];
        let text = eval_list(&evals, false);
        assert!(
            text.starts_with("ID        Priority  Triggered By"),
            "{text}"
        );
        assert!(
            text.contains("ab111111  0         job-register  b"),
            "{text}"
        );
    }
}
