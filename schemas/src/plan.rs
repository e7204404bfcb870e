//! Job plans: the plan endpoint's request and response in Nomad's form
//! (`POST /v1/job/:id/plan`), and [`job_diff`], the field-by-field difference between two
//! versions of a job that `job plan` and `job history -p` print.
//!
//! The diff works on the API form of the job (its JSON), the way Nomad's works on its flattened
//! structs: primitive fields are compared by their string form (`""` meaning "not set"), maps
//! of strings are flattened into `Meta[key]` fields, nested structs become objects, lists of
//! strings become set objects (`Datacenters`), lists of structs are matched by `Name` or
//! `Label` when they have one and compared as sets otherwise, and task groups and tasks are
//! matched by name.

use crate::alloc::{AllocMetric, AllocationListStub};
use crate::eval::Evaluation;
use crate::job::Job;
use crate::resources::null_as_default;
use crate::time::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Field annotation: the change adds allocations.
pub const ANNOTATION_FORCES_CREATE: &str = "forces create";
/// Field annotation: the change removes allocations.
pub const ANNOTATION_FORCES_DESTROY: &str = "forces destroy";
/// Task annotation: allocations are updated where they run.
pub const ANNOTATION_FORCES_INPLACE_UPDATE: &str = "forces in-place update";
/// Task annotation: allocations are replaced.
pub const ANNOTATION_FORCES_DESTRUCTIVE_UPDATE: &str = "forces create/destroy update";

/// The keys of [`TaskGroupDiff::updates`], as Nomad's scheduler names them.
pub mod update_types {
    pub const IGNORE: &str = "ignore";
    pub const CREATE: &str = "create";
    pub const DESTROY: &str = "destroy";
    pub const MIGRATE: &str = "migrate";
    pub const CANARY: &str = "canary";
    pub const INPLACE_UPDATE: &str = "in-place update";
    pub const DESTRUCTIVE_UPDATE: &str = "create/destroy update";
}

/// How a part of the job changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DiffType {
    #[default]
    None,
    Added,
    Deleted,
    Edited,
}

impl DiffType {
    /// The wire string (`"Added"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DiffType::None => "None",
            DiffType::Added => "Added",
            DiffType::Deleted => "Deleted",
            DiffType::Edited => "Edited",
        }
    }
}

/// One primitive field that changed: `Count: "1" => "3"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct FieldDiff {
    #[serde(rename = "Type")]
    pub kind: DiffType,
    pub name: String,
    pub old: String,
    pub new: String,
    #[serde(deserialize_with = "null_as_default")]
    pub annotations: Vec<String>,
}

/// A nested object that changed (`Update`, `Constraint`, `Config`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct ObjectDiff {
    #[serde(rename = "Type")]
    pub kind: DiffType,
    pub name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub objects: Vec<ObjectDiff>,
}

/// How one task changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskDiff {
    #[serde(rename = "Type")]
    pub kind: DiffType,
    pub name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub annotations: Vec<String>,
}

/// How one task group changed, and what the scheduler would do about it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskGroupDiff {
    #[serde(rename = "Type")]
    pub kind: DiffType,
    pub name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub tasks: Vec<TaskDiff>,
    /// Update type (see [`update_types`]) → allocations.
    #[serde(deserialize_with = "null_as_default")]
    pub updates: BTreeMap<String, u64>,
}

/// How a job changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobDiff {
    #[serde(rename = "Type")]
    pub kind: DiffType,
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(deserialize_with = "null_as_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub task_groups: Vec<TaskGroupDiff>,
}

/// `POST /v1/job/:id/plan`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobPlanRequest {
    pub job: Option<Job>,
    /// Return the diff against the current version.
    pub diff: bool,
    pub policy_override: bool,
}

/// What the scheduler would do per task group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct DesiredUpdates {
    pub ignore: u64,
    pub place: u64,
    pub migrate: u64,
    pub stop: u64,
    pub in_place_update: u64,
    pub destructive_update: u64,
    pub canary: u64,
    pub preemptions: u64,
}

impl DesiredUpdates {
    /// Allocations would be created, stopped, migrated or replaced (what makes `job plan` exit 1).
    pub fn changes_allocations(&self) -> bool {
        self.stop + self.place + self.migrate + self.destructive_update + self.canary > 0
    }
}

/// The scheduler's annotations of a plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct PlanAnnotations {
    /// Task group → what would happen to its allocations.
    #[serde(rename = "DesiredTGUpdates", deserialize_with = "null_as_default")]
    pub desired_tg_updates: BTreeMap<String, DesiredUpdates>,
    /// Allocations that would be evicted to make room.
    #[serde(deserialize_with = "null_as_default")]
    pub preempted_allocs: Vec<AllocationListStub>,
}

/// The answer to a plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobPlanResponse {
    /// The current job's modify index, for `job run -check-index`.
    pub job_modify_index: i64,
    /// Evaluations the plan would create (a rolling update's follow-up).
    #[serde(deserialize_with = "null_as_default")]
    pub created_evals: Vec<Evaluation>,
    pub diff: Option<JobDiff>,
    pub annotations: Option<PlanAnnotations>,
    /// Task group → why some of it could not be placed.
    #[serde(rename = "FailedTGAllocs", deserialize_with = "null_as_default")]
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
    /// For periodic jobs: the next launch if submitted now.
    pub next_periodic_launch: Timestamp,
    pub warnings: String,
}

impl JobPlanResponse {
    /// Some group would get allocations created, stopped, migrated or replaced.
    pub fn changes_allocations(&self) -> bool {
        self.annotations.as_ref().is_some_and(|a| {
            a.desired_tg_updates
                .values()
                .any(DesiredUpdates::changes_allocations)
        })
    }
}

/// Job fields that are the servers' bookkeeping, not the user's spec (Nomad's filter).
const JOB_SKIP: &[&str] = &[
    "ID",
    "Status",
    "StatusDescription",
    "Version",
    "Stable",
    "CreateIndex",
    "ModifyIndex",
    "JobModifyIndex",
    "Update",
    "SubmitTime",
    "Payload",
    "TaskGroups",
];
const GROUP_SKIP: &[&str] = &["Name", "Tasks"];
const TASK_SKIP: &[&str] = &["Name"];

/// Maps with user-chosen keys whose entries are shown as fields: `Meta[owner]`.
const KEYED_FIELDS: &[&str] = &[
    "Meta",
    "Env",
    "CanaryMeta",
    "TaggedAddresses",
    "GetterOptions",
    "GetterHeaders",
    "Links",
];
/// Free-form maps shown as one object with flattened fields: `Config { image: … }`.
const FLATTENED_OBJECTS: &[&str] = &["Config", "Policy", "Header", "Args"];

/// The difference between `old` (none for a new job) and `new`, annotated as Nomad's planner
/// does where no scheduling is needed: `Count` changes force create or destroy, and an edited
/// task forces an in-place or a destructive update. [`annotate`] adds the scheduler's counts.
pub fn job_diff(old: Option<&Job>, new: &Job) -> JobDiff {
    let old_v = old.and_then(|j| serde_json::to_value(j).ok());
    let new_v = serde_json::to_value(new).ok();
    let old_m = old_v.as_ref().and_then(Value::as_object);
    let new_m = new_v.as_ref().and_then(Value::as_object);
    let (fields, objects) = diff_struct(old_m, new_m, JOB_SKIP);

    let old_groups = named_items(old_m, "TaskGroups");
    let new_groups = named_items(new_m, "TaskGroups");
    let names: BTreeSet<&String> = old_groups.keys().chain(new_groups.keys()).collect();
    let task_groups: Vec<TaskGroupDiff> = names
        .into_iter()
        .map(|name| {
            group_diff(
                name,
                old_groups.get(name).copied(),
                new_groups.get(name).copied(),
            )
        })
        .collect();

    let kind = if old.is_none() {
        DiffType::Added
    } else if !fields.is_empty()
        || !objects.is_empty()
        || task_groups.iter().any(|g| g.kind != DiffType::None)
    {
        DiffType::Edited
    } else {
        DiffType::None
    };
    JobDiff {
        kind,
        id: new.id.to_string(),
        fields,
        objects,
        task_groups,
    }
}

/// Copies the scheduler's per-group counts into the diff's `Updates` (Nomad's
/// `annotateTaskGroup`): `{"create": 2, "in-place update": 1}`.
pub fn annotate(diff: &mut JobDiff, annotations: &PlanAnnotations) {
    for group in &mut diff.task_groups {
        let Some(u) = annotations.desired_tg_updates.get(&group.name) else {
            continue;
        };
        for (key, n) in [
            (update_types::IGNORE, u.ignore),
            (update_types::CREATE, u.place),
            (update_types::MIGRATE, u.migrate),
            (update_types::DESTROY, u.stop),
            (update_types::CANARY, u.canary),
            (update_types::INPLACE_UPDATE, u.in_place_update),
            (update_types::DESTRUCTIVE_UPDATE, u.destructive_update),
        ] {
            if n != 0 {
                group.updates.insert(key.to_owned(), n);
            }
        }
    }
}

type Obj<'a> = Option<&'a Map<String, Value>>;

/// The objects of the list at `key`, by their `Name`.
fn named_items<'a>(m: Obj<'a>, key: &str) -> BTreeMap<String, &'a Map<String, Value>> {
    m.and_then(|m| m.get(key))
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_object)
                .map(|o| (str_of(o.get("Name")), o))
                .collect()
        })
        .unwrap_or_default()
}

fn kind_of(old_present: bool, new_present: bool, changed: bool) -> DiffType {
    match (old_present, new_present) {
        (false, true) => DiffType::Added,
        (true, false) => DiffType::Deleted,
        (true, true) if changed => DiffType::Edited,
        _ => DiffType::None,
    }
}

fn group_diff(name: &str, old: Obj<'_>, new: Obj<'_>) -> TaskGroupDiff {
    let (mut fields, objects) = diff_struct(old, new, GROUP_SKIP);
    let old_tasks = named_items(old, "Tasks");
    let new_tasks = named_items(new, "Tasks");
    let names: BTreeSet<&String> = old_tasks.keys().chain(new_tasks.keys()).collect();
    let tasks: Vec<TaskDiff> = names
        .into_iter()
        .map(|t| task_diff(t, old_tasks.get(t).copied(), new_tasks.get(t).copied()))
        .collect();
    let changed =
        !fields.is_empty() || !objects.is_empty() || tasks.iter().any(|t| t.kind != DiffType::None);
    let kind = kind_of(old.is_some(), new.is_some(), changed);
    annotate_count(&mut fields);
    let mut diff = TaskGroupDiff {
        kind,
        name: name.to_owned(),
        fields,
        objects,
        tasks,
        updates: BTreeMap::new(),
    };
    for task in &mut diff.tasks {
        annotate_task(task, kind);
    }
    diff
}

fn task_diff(name: &str, old: Obj<'_>, new: Obj<'_>) -> TaskDiff {
    let (fields, objects) = diff_struct(old, new, TASK_SKIP);
    let changed = !fields.is_empty() || !objects.is_empty();
    TaskDiff {
        kind: kind_of(old.is_some(), new.is_some(), changed),
        name: name.to_owned(),
        fields,
        objects,
        annotations: Vec::new(),
    }
}

/// `Count: "1" => "3"` forces create; the other way forces destroy.
fn annotate_count(fields: &mut [FieldDiff]) {
    let Some(count) = fields.iter_mut().find(|f| f.name == "Count") else {
        return;
    };
    let n = |s: &str| s.parse::<i64>().unwrap_or(0);
    let (old, new) = (n(&count.old), n(&count.new));
    if old < new {
        count.annotations.push(ANNOTATION_FORCES_CREATE.into());
    } else if new < old {
        count.annotations.push(ANNOTATION_FORCES_DESTROY.into());
    }
}

/// Nomad's `annotateTask`: a task of an added or deleted group forces create or destroy;
/// otherwise any change but `KillTimeout`, services, constraints and log rotation sizes forces
/// a destructive update.
fn annotate_task(task: &mut TaskDiff, group: DiffType) {
    if task.kind == DiffType::None {
        return;
    }
    if matches!(group, DiffType::Added | DiffType::Deleted) {
        match task.kind {
            DiffType::Added => {
                task.annotations.push(ANNOTATION_FORCES_CREATE.into());
                return;
            }
            DiffType::Deleted => {
                task.annotations.push(ANNOTATION_FORCES_DESTROY.into());
                return;
            }
            _ => {}
        }
    }
    let destructive = task.fields.iter().any(|f| f.name != "KillTimeout")
        || task.objects.iter().any(|o| match o.name.as_str() {
            "Service" | "Constraint" => false,
            "LogConfig" => o.fields.iter().any(|f| f.name == "Disabled"),
            _ => true,
        });
    task.annotations.push(
        if destructive {
            ANNOTATION_FORCES_DESTRUCTIVE_UPDATE
        } else {
            ANNOTATION_FORCES_INPLACE_UPDATE
        }
        .into(),
    );
}

/// A primitive's string form; `""` for null and for anything that is not a primitive.
fn str_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn is_primitive(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Bool(_) | Value::Number(_))
}

/// Nomad's `fieldDiff`: nothing when equal, and `""` stands for "not set".
fn field_diff(name: &str, old: String, new: String) -> Option<FieldDiff> {
    if old == new {
        return None;
    }
    let kind = if old.is_empty() {
        DiffType::Added
    } else if new.is_empty() {
        DiffType::Deleted
    } else {
        DiffType::Edited
    };
    Some(FieldDiff {
        kind,
        name: name.to_owned(),
        old,
        new,
        annotations: Vec::new(),
    })
}

fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

/// The singular name Nomad gives one element of a list.
fn singular(key: &str) -> String {
    match key {
        "Constraints" => "Constraint".into(),
        "Affinities" => "Affinity".into(),
        "Spreads" => "Spread".into(),
        "SpreadTarget" => "SpreadTarget".into(),
        "Services" => "Service".into(),
        "Checks" => "Check".into(),
        "Networks" => "Network".into(),
        "ReservedPorts" => "Static Port".into(),
        "DynamicPorts" => "Dynamic Port".into(),
        "Templates" => "Template".into(),
        "Artifacts" => "Artifact".into(),
        "VolumeMounts" => "VolumeMount".into(),
        "Volumes" => "Volume".into(),
        "Devices" => "Device".into(),
        other => other.strip_suffix('s').unwrap_or(other).to_owned(),
    }
}

/// Compares two objects: primitive fields, then nested objects and lists.
fn diff_struct(old: Obj<'_>, new: Obj<'_>, skip: &[&str]) -> (Vec<FieldDiff>, Vec<ObjectDiff>) {
    let keys: BTreeSet<&String> = old
        .into_iter()
        .flat_map(Map::keys)
        .chain(new.into_iter().flat_map(Map::keys))
        .filter(|k| !skip.contains(&k.as_str()))
        .collect();
    let mut fields = Vec::new();
    let mut objects = Vec::new();
    for key in keys {
        let o = present(old.and_then(|m| m.get(key)));
        let n = present(new.and_then(|m| m.get(key)));
        let Some(sample) = n.or(o) else { continue };
        match sample {
            v if is_primitive(v) => fields.extend(field_diff(key, str_of(o), str_of(n))),
            Value::Object(_) if KEYED_FIELDS.contains(&key.as_str()) => {
                let flat = |v: Option<&Value>| {
                    let mut out = BTreeMap::new();
                    if let Some(Value::Object(m)) = v {
                        for (k, v) in m {
                            flatten(&format!("{key}[{k}]"), v, &mut out);
                        }
                    }
                    out
                };
                fields.extend(flat_field_diffs(&flat(o), &flat(n)));
            }
            Value::Object(_) | Value::Array(_) if FLATTENED_OBJECTS.contains(&key.as_str()) => {
                let flat = |v: Option<&Value>| {
                    let mut out = BTreeMap::new();
                    match v {
                        Some(Value::Object(m)) => {
                            for (k, v) in m {
                                flatten(k, v, &mut out);
                            }
                        }
                        Some(v @ Value::Array(_)) => flatten(key, v, &mut out),
                        _ => {}
                    }
                    out
                };
                let fs = flat_field_diffs(&flat(o), &flat(n));
                if !fs.is_empty() {
                    objects.push(ObjectDiff {
                        kind: kind_of(o.is_some(), n.is_some(), true),
                        name: key.clone(),
                        fields: fs,
                        objects: Vec::new(),
                    });
                }
            }
            Value::Object(m) if m.values().all(Value::is_object) && key == "Volumes" => {
                let names: BTreeSet<&String> = o
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(Map::keys)
                    .chain(n.and_then(Value::as_object).into_iter().flat_map(Map::keys))
                    .collect();
                for name in names {
                    objects.extend(object_diff(
                        &singular(key),
                        member_object(o, name),
                        member_object(n, name),
                    ));
                }
            }
            Value::Object(_) => {
                objects.extend(object_diff(
                    key,
                    o.and_then(Value::as_object),
                    n.and_then(Value::as_object),
                ));
            }
            Value::Array(_) => {
                let items =
                    |v: Option<&Value>| v.and_then(Value::as_array).cloned().unwrap_or_default();
                let (oi, ni) = (items(o), items(n));
                let all_primitive = oi.iter().chain(ni.iter()).all(is_primitive);
                if all_primitive {
                    objects.extend(string_set_diff(key, &oi, &ni));
                } else {
                    objects.extend(object_list_diff(&singular(key), &oi, &ni));
                }
            }
            _ => {}
        }
    }
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    (fields, objects)
}

/// Flattens a free-form value into `key`, `key[0]`, `key[sub]` fields.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{prefix}[{k}]"), v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Null => {}
        v => {
            out.insert(prefix.to_owned(), str_of(Some(v)));
        }
    }
}

fn flat_field_diffs(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<FieldDiff> {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            field_diff(
                k,
                old.get(k).cloned().unwrap_or_default(),
                new.get(k).cloned().unwrap_or_default(),
            )
        })
        .collect()
}

/// One nested object; `None` when unchanged.
fn object_diff(name: &str, old: Obj<'_>, new: Obj<'_>) -> Option<ObjectDiff> {
    if old.is_none() && new.is_none() {
        return None;
    }
    let (fields, objects) = diff_struct(old, new, &[]);
    let changed = !fields.is_empty() || !objects.is_empty();
    let kind = kind_of(old.is_some(), new.is_some(), changed);
    (kind != DiffType::None).then(|| ObjectDiff {
        kind,
        name: name.to_owned(),
        fields,
        objects,
    })
}

/// Nomad's `stringSetDiff`: the elements added and removed, as fields named after the list.
fn string_set_diff(name: &str, old: &[Value], new: &[Value]) -> Option<ObjectDiff> {
    let o: BTreeSet<String> = old.iter().map(|v| str_of(Some(v))).collect();
    let n: BTreeSet<String> = new.iter().map(|v| str_of(Some(v))).collect();
    let mut fields: Vec<FieldDiff> = o
        .difference(&n)
        .filter_map(|v| field_diff(name, v.clone(), String::new()))
        .chain(
            n.difference(&o)
                .filter_map(|v| field_diff(name, String::new(), v.clone())),
        )
        .collect();
    fields.sort_by(|a, b| (&a.old, &a.new).cmp(&(&b.old, &b.new)));
    let added = fields.iter().any(|f| f.kind == DiffType::Added);
    let removed = fields.iter().any(|f| f.kind == DiffType::Deleted);
    let kind = match (added, removed) {
        (true, true) => DiffType::Edited,
        (true, false) => DiffType::Added,
        (false, true) => DiffType::Deleted,
        (false, false) => return None,
    };
    Some(ObjectDiff {
        kind,
        name: name.to_owned(),
        fields,
        objects: Vec::new(),
    })
}

/// The key an element of a list is matched by: its `Name`, else its `Label`.
fn item_key(v: &Value) -> Option<String> {
    let o = v.as_object()?;
    ["Name", "Label"]
        .iter()
        .map(|k| str_of(o.get(*k)))
        .find(|s| !s.is_empty())
}

/// The elements of a list by key, when every one has a distinct key.
fn keyed(items: &[Value]) -> Option<BTreeMap<String, &Map<String, Value>>> {
    let mut out = BTreeMap::new();
    for item in items {
        let key = item_key(item)?;
        if out.insert(key, item.as_object()?).is_some() {
            return None;
        }
    }
    Some(out)
}

/// The object at `name` in a map value.
fn member_object<'a>(v: Option<&'a Value>, name: &str) -> Obj<'a> {
    v.and_then(|v| v.get(name)).and_then(Value::as_object)
}

/// A list of objects: matched by key when every element has a distinct one, else compared as a
/// set (equal elements are unchanged, the others added or deleted).
fn object_list_diff(name: &str, old: &[Value], new: &[Value]) -> Vec<ObjectDiff> {
    if let (Some(o), Some(n)) = (keyed(old), keyed(new)) {
        let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
        return keys
            .into_iter()
            .filter_map(|k| object_diff(name, o.get(k).copied(), n.get(k).copied()))
            .collect();
    }
    let mut out: Vec<ObjectDiff> = old
        .iter()
        .filter(|v| !new.contains(v))
        .filter_map(|v| object_diff(name, v.as_object(), None))
        .collect();
    out.extend(
        new.iter()
            .filter(|v| !old.contains(v))
            .filter_map(|v| object_diff(name, None, v.as_object())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobspec::{VariableInputs, decode_job};

    const JOB: &str = r#"
job "example" {
  datacenters = ["dc1"]
  group "cache" {
    count = 1
    task "redis" {
      driver = "docker"
      config {
        image = "redis:7"
      }
      resources {
        cpu    = 500
        memory = 256
      }
    }
    task "sidecar" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
      }
    }
  }
}
"#;

    fn job(text: &str) -> Job {
        decode_job("job.hcl", text, &VariableInputs::default()).unwrap()
    }

    fn field<'a>(fields: &'a [FieldDiff], name: &str) -> &'a FieldDiff {
        fields
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no field {name} in {fields:?}"))
    }

    #[test]
    fn identical_jobs_have_no_diff() {
        let a = job(JOB);
        let d = job_diff(Some(&a), &a);
        assert_eq!(d.kind, DiffType::None);
        assert!(d.fields.is_empty() && d.objects.is_empty());
        assert_eq!(d.task_groups.len(), 1);
        assert_eq!(d.task_groups[0].kind, DiffType::None);
        assert!(
            d.task_groups[0]
                .tasks
                .iter()
                .all(|t| t.kind == DiffType::None)
        );
        assert!(
            d.task_groups[0]
                .tasks
                .iter()
                .all(|t| t.annotations.is_empty())
        );
    }

    #[test]
    fn server_bookkeeping_is_not_a_change() {
        let a = job(JOB);
        let mut b = a.clone();
        b.version = 4;
        b.job_modify_index = 99;
        b.submit_time = 12345;
        b.status = "running".into();
        assert_eq!(job_diff(Some(&a), &b).kind, DiffType::None);
    }

    #[test]
    fn count_change_forces_create_or_destroy() {
        let a = job(JOB);
        let b = job(&JOB.replace("count = 1", "count = 3"));
        let d = job_diff(Some(&a), &b);
        assert_eq!(d.kind, DiffType::Edited);
        let g = &d.task_groups[0];
        assert_eq!(g.kind, DiffType::Edited);
        let count = field(&g.fields, "Count");
        assert_eq!(
            (count.kind, count.old.as_str(), count.new.as_str()),
            (DiffType::Edited, "1", "3")
        );
        assert_eq!(count.annotations, [ANNOTATION_FORCES_CREATE]);
        assert!(g.tasks.iter().all(|t| t.kind == DiffType::None));

        let back = job_diff(Some(&b), &a);
        assert_eq!(
            field(&back.task_groups[0].fields, "Count").annotations,
            [ANNOTATION_FORCES_DESTROY]
        );
    }

    #[test]
    fn image_change_forces_a_destructive_update() {
        let a = job(JOB);
        let b = job(&JOB.replace("redis:7", "redis:8"));
        let d = job_diff(Some(&a), &b);
        let g = &d.task_groups[0];
        assert_eq!(g.kind, DiffType::Edited);
        let redis = g.tasks.iter().find(|t| t.name == "redis").unwrap();
        assert_eq!(redis.kind, DiffType::Edited);
        assert_eq!(redis.annotations, [ANNOTATION_FORCES_DESTRUCTIVE_UPDATE]);
        let config = &redis.objects[0];
        assert_eq!(
            (config.name.as_str(), config.kind),
            ("Config", DiffType::Edited)
        );
        let image = field(&config.fields, "image");
        assert_eq!(
            (image.old.as_str(), image.new.as_str()),
            ("redis:7", "redis:8")
        );
        let sidecar = g.tasks.iter().find(|t| t.name == "sidecar").unwrap();
        assert_eq!(sidecar.kind, DiffType::None);
        assert!(sidecar.annotations.is_empty());
    }

    #[test]
    fn a_kill_timeout_change_is_in_place() {
        let a = job(JOB);
        let b = job(&JOB.replace(
            "driver = \"docker\"",
            "driver = \"docker\"\n      kill_timeout = \"20s\"",
        ));
        let d = job_diff(Some(&a), &b);
        let redis = d.task_groups[0]
            .tasks
            .iter()
            .find(|t| t.name == "redis")
            .unwrap();
        assert_eq!(
            redis.annotations,
            [ANNOTATION_FORCES_INPLACE_UPDATE],
            "{redis:?}"
        );
    }

    #[test]
    fn added_group_is_added_with_its_tasks_forcing_create() {
        let a = job(JOB);
        let extra = "  group \"db\" {\n    task \"pg\" {\n      driver = \"docker\"\n      config { image = \"postgres:16\" }\n    }\n  }\n}\n";
        let text = format!("{}{extra}", JOB.trim_end().strip_suffix('}').unwrap());
        let b = job(&text);
        let d = job_diff(Some(&a), &b);
        assert_eq!(d.kind, DiffType::Edited);
        let db = d.task_groups.iter().find(|g| g.name == "db").unwrap();
        assert_eq!(db.kind, DiffType::Added);
        assert_eq!(field(&db.fields, "Count").new, "1");
        assert_eq!(db.tasks[0].kind, DiffType::Added);
        assert_eq!(db.tasks[0].annotations, [ANNOTATION_FORCES_CREATE]);
        let cache = d.task_groups.iter().find(|g| g.name == "cache").unwrap();
        assert_eq!(cache.kind, DiffType::None);

        let removed = job_diff(Some(&b), &a);
        let db = removed.task_groups.iter().find(|g| g.name == "db").unwrap();
        assert_eq!(db.kind, DiffType::Deleted);
        assert_eq!(db.tasks[0].annotations, [ANNOTATION_FORCES_DESTROY]);
    }

    #[test]
    fn removed_task_is_deleted_and_forces_a_destructive_update() {
        let a = job(JOB);
        let mut b = a.clone();
        b.task_groups[0].tasks.retain(|t| t.name != "sidecar");
        let d = job_diff(Some(&a), &b);
        let g = &d.task_groups[0];
        assert_eq!(g.kind, DiffType::Edited);
        let sidecar = g.tasks.iter().find(|t| t.name == "sidecar").unwrap();
        assert_eq!(sidecar.kind, DiffType::Deleted);
        assert_eq!(field(&sidecar.fields, "Driver").old, "raw_exec");
        assert_eq!(sidecar.annotations, [ANNOTATION_FORCES_DESTRUCTIVE_UPDATE]);
    }

    #[test]
    fn a_new_job_is_added() {
        let a = job(JOB);
        let d = job_diff(None, &a);
        assert_eq!(d.kind, DiffType::Added);
        assert_eq!(d.id, "example");
        assert_eq!(field(&d.fields, "Type").new, "service");
        assert!(d.fields.iter().all(|f| f.kind == DiffType::Added));
        assert_eq!(d.task_groups[0].kind, DiffType::Added);
        assert!(
            d.task_groups[0]
                .tasks
                .iter()
                .all(|t| t.annotations == [ANNOTATION_FORCES_CREATE])
        );
    }

    #[test]
    fn lists_meta_and_constraints() {
        let a = job(JOB);
        let mut b = a.clone();
        b.datacenters = vec!["dc1".into(), "dc2".into()];
        b.meta.insert("owner".into(), "ops".into());
        b.constraints.push(crate::job::Constraint {
            l_target: "${attr.kernel.name}".into(),
            r_target: "linux".into(),
            operand: "=".into(),
        });
        let d = job_diff(Some(&a), &b);
        assert_eq!(d.kind, DiffType::Edited);
        let meta = field(&d.fields, "Meta[owner]");
        assert_eq!((meta.kind, meta.new.as_str()), (DiffType::Added, "ops"));
        let dcs = d.objects.iter().find(|o| o.name == "Datacenters").unwrap();
        assert_eq!(dcs.kind, DiffType::Added);
        assert_eq!(dcs.fields.len(), 1);
        assert_eq!(dcs.fields[0].new, "dc2");
        let c = d.objects.iter().find(|o| o.name == "Constraint").unwrap();
        assert_eq!(c.kind, DiffType::Added);
        assert_eq!(field(&c.fields, "RTarget").new, "linux");
    }

    #[test]
    fn annotate_copies_scheduler_counts() {
        let a = job(JOB);
        let b = job(&JOB.replace("count = 1", "count = 3"));
        let mut d = job_diff(Some(&a), &b);
        let ann = PlanAnnotations {
            desired_tg_updates: BTreeMap::from([(
                "cache".to_owned(),
                DesiredUpdates {
                    place: 2,
                    in_place_update: 1,
                    ..DesiredUpdates::default()
                },
            )]),
            preempted_allocs: Vec::new(),
        };
        annotate(&mut d, &ann);
        assert_eq!(
            d.task_groups[0].updates,
            BTreeMap::from([("create".to_owned(), 2), ("in-place update".to_owned(), 1)])
        );
        let resp = JobPlanResponse {
            annotations: Some(ann),
            ..JobPlanResponse::default()
        };
        assert!(resp.changes_allocations());
        assert!(!JobPlanResponse::default().changes_allocations());
    }

    #[test]
    fn plan_response_reads_nomad_json() {
        let text = r#"{
            "JobModifyIndex": 7, "CreatedEvals": null,
            "Diff": {"Type": "Edited", "ID": "example", "Fields": null, "Objects": null,
                "TaskGroups": [{"Type": "Edited", "Name": "cache",
                    "Fields": [{"Type": "Edited", "Name": "Count", "Old": "1", "New": "3",
                                "Annotations": ["forces create"]}],
                    "Objects": null, "Tasks": [], "Updates": {"create": 2, "ignore": 1}}]},
            "Annotations": {"DesiredTGUpdates": {"cache": {"Ignore": 1, "Place": 2, "Migrate": 0,
                "Stop": 0, "InPlaceUpdate": 0, "DestructiveUpdate": 0, "Canary": 0,
                "Preemptions": 0}}, "PreemptedAllocs": null},
            "FailedTGAllocs": null, "NextPeriodicLaunch": "0001-01-01T00:00:00Z", "Warnings": ""
        }"#;
        let resp: JobPlanResponse = serde_json::from_str(text).unwrap();
        assert_eq!(resp.job_modify_index, 7);
        let diff = resp.diff.as_ref().unwrap();
        assert_eq!(diff.task_groups[0].updates["create"], 2);
        assert_eq!(diff.task_groups[0].fields[0].annotations, ["forces create"]);
        assert!(resp.changes_allocations());
        let back = serde_json::to_value(&resp).unwrap();
        assert_eq!(back["Diff"]["TaskGroups"][0]["Type"], "Edited");
        assert_eq!(back["Annotations"]["DesiredTGUpdates"]["cache"]["Place"], 2);
    }
}
