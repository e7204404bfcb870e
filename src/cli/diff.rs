//! Job diffs and plans as text, as `job plan` and `job history -p` print them (Nomad's
//! `formatJobDiff` and `formatDryRun`).

use super::format::{alloc_metrics, failed_group_header, format_time, time_ago};
use caravan_schemas::eval::TriggeredBy;
use caravan_schemas::job::{Job, JobType};
use caravan_schemas::plan::{
    DiffType, FieldDiff, JobDiff, JobPlanResponse, ObjectDiff, TaskDiff, TaskGroupDiff,
};

fn marker(kind: DiffType) -> (&'static str, usize) {
    match kind {
        DiffType::Added => ("+ ", 2),
        DiffType::Deleted => ("- ", 2),
        DiffType::Edited => ("+/- ", 4),
        DiffType::None => ("", 0),
    }
}

fn spaces(n: usize) -> String {
    " ".repeat(n)
}

fn longest_prefixes(fields: &[FieldDiff], objects: &[ObjectDiff]) -> (usize, usize) {
    let field = fields.iter().map(|f| f.name.len()).max().unwrap_or(0);
    let marker_len = fields
        .iter()
        .map(|f| marker(f.kind).1)
        .chain(objects.iter().map(|o| marker(o.kind).1))
        .max()
        .unwrap_or(0);
    (field, marker_len)
}

/// Go's `%q` for the strings a diff holds.
fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// The whole job diff; `verbose` also shows the fields of added and deleted parts.
pub fn job_diff_text(job: &JobDiff, verbose: bool) -> String {
    let (m, _) = marker(job.kind);
    let mut out = format!("{m}Job: {}\n", quote(&job.id));
    let (longest_field, mut longest_marker) = longest_prefixes(&job.fields, &job.objects);
    for tg in &job.task_groups {
        longest_marker = longest_marker.max(marker(tg.kind).1);
    }
    if job.kind == DiffType::Edited || verbose {
        let fo = aligned(&job.fields, &job.objects, 0, longest_field, longest_marker);
        out.push_str(&fo);
        if !fo.is_empty() {
            out.push('\n');
        }
    }
    for tg in &job.task_groups {
        let prefix = longest_marker - marker(tg.kind).1;
        out.push_str(&group_text(tg, prefix, verbose));
        out.push('\n');
    }
    out
}

fn group_text(tg: &TaskGroupDiff, tg_prefix: usize, verbose: bool) -> String {
    let (m, _) = marker(tg.kind);
    let mut out = format!("{m}{}Task Group: {}", spaces(tg_prefix), quote(&tg.name));
    if tg.updates.is_empty() {
        out.push('\n');
    } else {
        let updates: Vec<String> = tg
            .updates
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        out.push_str(&format!(" ({})\n", updates.join(", ")));
    }
    let (longest_field, mut longest_marker) = longest_prefixes(&tg.fields, &tg.objects);
    for task in &tg.tasks {
        longest_marker = longest_marker.max(marker(task.kind).1);
    }
    let sub = tg_prefix + 2;
    if tg.kind == DiffType::Edited || verbose {
        let fo = aligned(&tg.fields, &tg.objects, sub, longest_field, longest_marker);
        out.push_str(&fo);
        if !fo.is_empty() {
            out.push('\n');
        }
    }
    for task in &tg.tasks {
        let prefix = longest_marker - marker(task.kind).1;
        out.push_str(&task_text(task, sub, prefix, verbose));
        out.push('\n');
    }
    out
}

fn task_text(task: &TaskDiff, start: usize, task_prefix: usize, verbose: bool) -> String {
    let (m, _) = marker(task.kind);
    let mut out = format!(
        "{}{m}{}Task: {}",
        spaces(start),
        spaces(task_prefix),
        quote(&task.name)
    );
    if !task.annotations.is_empty() {
        out.push_str(&format!(" ({})", task.annotations.join(", ")));
    }
    match task.kind {
        DiffType::None => return out,
        DiffType::Added | DiffType::Deleted if !verbose => return out,
        _ => out.push('\n'),
    }
    let (longest_field, longest_marker) = longest_prefixes(&task.fields, &task.objects);
    out.push_str(&aligned(
        &task.fields,
        &task.objects,
        start + 2,
        longest_field,
        longest_marker,
    ));
    out
}

fn object_text(o: &ObjectDiff, start: usize, key_prefix: usize) -> String {
    let (m, mlen) = marker(o.kind);
    let mut out = format!("{}{m}{}{} {{\n", spaces(start), spaces(key_prefix), o.name);
    let (longest_field, longest_marker) = longest_prefixes(&o.fields, &o.objects);
    out.push_str(&aligned(
        &o.fields,
        &o.objects,
        start + key_prefix + 2,
        longest_field,
        longest_marker,
    ));
    format!("{out}\n{}}}", spaces(start + mlen + key_prefix))
}

fn field_text(f: &FieldDiff, start: usize, key_prefix: usize, value_prefix: usize) -> String {
    let (m, _) = marker(f.kind);
    let mut out = format!(
        "{}{m}{}{}: {}",
        spaces(start),
        spaces(key_prefix),
        f.name,
        spaces(value_prefix)
    );
    match f.kind {
        DiffType::Added => out.push_str(&quote(&f.new)),
        DiffType::Deleted => out.push_str(&quote(&f.old)),
        DiffType::Edited => out.push_str(&format!("{} => {}", quote(&f.old), quote(&f.new))),
        DiffType::None => out.push_str(&quote(&f.new)),
    }
    if !f.annotations.is_empty() {
        out.push_str(&format!(" ({})", f.annotations.join(", ")));
    }
    out
}

fn aligned(
    fields: &[FieldDiff],
    objects: &[ObjectDiff],
    start: usize,
    longest_field: usize,
    longest_marker: usize,
) -> String {
    let mut out = String::new();
    for (i, f) in fields.iter().enumerate() {
        let key_prefix = longest_marker - marker(f.kind).1;
        let value_prefix = longest_field - f.name.len();
        out.push_str(&field_text(f, start, key_prefix, value_prefix));
        if i + 1 != fields.len() || !objects.is_empty() {
            out.push('\n');
        }
    }
    for (i, o) in objects.iter().enumerate() {
        let key_prefix = longest_marker - marker(o.kind).1;
        out.push_str(&object_text(o, start, key_prefix));
        if i + 1 != objects.len() {
            out.push('\n');
        }
    }
    out
}

/// The `Scheduler dry-run:` body.
pub fn dry_run_text(resp: &JobPlanResponse, job: &Job, now: i64) -> String {
    let rolling = resp
        .created_evals
        .iter()
        .rfind(|e| e.triggered_by == TriggeredBy::RollingUpdate);
    let mut out = String::new();
    if resp.failed_tg_allocs.is_empty() {
        out.push_str("- All tasks successfully allocated.\n");
    } else {
        if job.r#type == JobType::System {
            out.push_str("- WARNING: Failed to place allocations on all nodes.\n");
        } else {
            out.push_str("- WARNING: Failed to place all allocations.\n");
        }
        for (group, m) in &resp.failed_tg_allocs {
            out.push_str(&format!("  {}\n", failed_group_header(group, m)));
            out.push_str(&format!("{}\n\n", alloc_metrics(m, "    ")));
        }
        if rolling.is_none() {
            out.pop();
        }
    }
    if let Some(eval) = rolling {
        out.push_str(&format!(
            "- Rolling update, next evaluation will be in {}.\n",
            eval.wait
        ));
    }
    if let Some(next) = resp.next_periodic_launch.unix_nanos()
        && job.parameterized_job.is_none()
    {
        let until = time_ago(next, now).replace(" from now", "");
        out.push_str(&format!(
            "- If submitted now, next periodic launch would be at {} ({until} from now).\n",
            format_time(next)
        ));
    }
    out.trim_end_matches('\n').to_owned()
}

/// The full `job plan` output for `file`.
pub fn plan_text(
    resp: &JobPlanResponse,
    diff: Option<&JobDiff>,
    job: &Job,
    file: &str,
    verbose: bool,
    now: i64,
) -> String {
    let mut out = String::new();
    if let Some(diff) = diff {
        out.push_str(job_diff_text(diff, verbose).trim());
        out.push_str("\n\n");
    }
    out.push_str("Scheduler dry-run:\n");
    out.push_str(&dry_run_text(resp, job, now));
    out.push_str("\n\n");
    if !resp.warnings.is_empty() {
        out.push_str(&format!("Job Warnings:\n{}\n\n", resp.warnings));
    }
    out.push_str(&format!(
        "Job Modify Index: {n}\n\
         To submit the job with version verification run:\n\
         \n\
         caravan job run -check-index {n} {file}\n\
         \n\
         When running the job with the check-index flag, the job will only be run if the\n\
         job modify index given matches the server-side version. If the index has\n\
         changed, another user has modified the job and the plan's results are\n\
         potentially invalid.",
        n = resp.job_modify_index
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::alloc::AllocMetric;
    use caravan_schemas::jobspec::{VariableInputs, decode_job};
    use caravan_schemas::plan::{DesiredUpdates, PlanAnnotations, annotate, job_diff};
    use std::collections::BTreeMap;

    const JOB: &str = r#"job "example" {
  group "cache" {
    count = 1
    task "redis" {
      driver = "docker"
      config {
        image = "redis:7"
      }
    }
  }
}"#;

    fn job(text: &str) -> Job {
        decode_job("j.hcl", text, &VariableInputs::default()).unwrap()
    }

    #[test]
    fn count_and_image_changes_render_like_nomad() {
        let old = job(JOB);
        let new = job(&JOB
            .replace("count = 1", "count = 3")
            .replace("redis:7", "redis:8"));
        let mut diff = job_diff(Some(&old), &new);
        annotate(
            &mut diff,
            &PlanAnnotations {
                desired_tg_updates: BTreeMap::from([(
                    "cache".to_owned(),
                    DesiredUpdates {
                        place: 2,
                        destructive_update: 1,
                        ..DesiredUpdates::default()
                    },
                )]),
                preempted_allocs: Vec::new(),
            },
        );
        let text = job_diff_text(&diff, false);
        let expected = r#"+/- Job: "example"
+/- Task Group: "cache" (2 create, 1 create/destroy update)
  +/- Count: "1" => "3" (forces create)
  +/- Task: "redis" (forces create/destroy update)
    +/- Config {
      +/- image: "redis:7" => "redis:8"
        }
"#;
        assert_eq!(text.trim_end(), expected.trim_end());
    }

    #[test]
    fn a_new_job_shows_only_its_outline() {
        let diff = job_diff(None, &job(JOB));
        assert_eq!(
            job_diff_text(&diff, false).trim(),
            "+ Job: \"example\"\n+ Task Group: \"cache\"\n  + Task: \"redis\" (forces create)"
        );
        let verbose = job_diff_text(&diff, true);
        assert!(verbose.contains("+ Type:"), "{verbose}");
        assert!(verbose.contains("  + Count: "), "{verbose}");
    }

    #[test]
    fn an_unchanged_job_has_no_markers() {
        let j = job(JOB);
        let mut diff = job_diff(Some(&j), &j);
        diff.task_groups[0].updates.insert("ignore".into(), 1);
        assert_eq!(
            job_diff_text(&diff, false).trim(),
            "Job: \"example\"\nTask Group: \"cache\" (1 ignore)\n  Task: \"redis\""
        );
    }

    #[test]
    fn plan_output_with_failures_and_the_check_index_hint() {
        let j = job(JOB);
        let resp = JobPlanResponse {
            job_modify_index: 17,
            failed_tg_allocs: BTreeMap::from([(
                "cache".to_owned(),
                AllocMetric {
                    nodes_evaluated: 1,
                    nodes_exhausted: 1,
                    dimension_exhausted: BTreeMap::from([("memory".to_owned(), 1)]),
                    ..AllocMetric::default()
                },
            )]),
            ..JobPlanResponse::default()
        };
        let diff = job_diff(Some(&j), &j);
        let text = plan_text(&resp, Some(&diff), &j, "example.nomad.hcl", false, 0);
        let expected = "Job: \"example\"
Task Group: \"cache\"
  Task: \"redis\"

Scheduler dry-run:
- WARNING: Failed to place all allocations.
  Task Group \"cache\" (failed to place 1 allocation):
    * Resources exhausted on 1 nodes
    * Dimension \"memory\" exhausted on 1 nodes

Job Modify Index: 17
To submit the job with version verification run:

caravan job run -check-index 17 example.nomad.hcl

When running the job with the check-index flag, the job will only be run if the
job modify index given matches the server-side version. If the index has
changed, another user has modified the job and the plan's results are
potentially invalid.";
        assert_eq!(text, expected);

        let ok = JobPlanResponse::default();
        assert_eq!(
            dry_run_text(&ok, &j, 0),
            "- All tasks successfully allocated."
        );
    }

    #[test]
    fn object_lists_and_deleted_fields_align() {
        let old = job(JOB);
        let mut new = old.clone();
        new.meta.insert("owner".into(), "ops".into());
        new.datacenters = vec!["dc1".into()];
        let diff = job_diff(Some(&old), &new);
        let text = job_diff_text(&diff, false);
        assert!(
            text.starts_with("+/- Job: \"example\"\n+   Meta[owner]: \"ops\"\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "+/- Datacenters {\n  + Datacenters: \"dc1\"\n  - Datacenters: \"*\"\n    }"
            ),
            "{text}"
        );
    }
}
