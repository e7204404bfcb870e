//! A task's environment, as Nomad builds it: `NOMAD_*` variables for the allocation, the task,
//! its resources, directories, ports and meta, then the task's `env` block — and interpolation
//! of `${NOMAD_*}`, `${attr.*}`, `${node.*}`, `${meta.*}` and `${env["X"]}` in env values and in
//! driver config.

use caravan_schemas::alloc::Allocation;
use caravan_schemas::job::{Job, Task, TaskGroup};
use caravan_schemas::node::Node;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Where a task's directories are.
#[derive(Clone, Debug)]
pub struct TaskDirs<'a> {
    pub alloc_dir: &'a Path,
    pub task_dir: &'a Path,
}

/// The environment of one task.
pub fn build(
    alloc: &Allocation,
    job: &Job,
    group: &TaskGroup,
    task: &Task,
    node: &Node,
    dirs: &TaskDirs<'_>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    set("NOMAD_ALLOC_ID", alloc.id.to_string());
    set("NOMAD_SHORT_ALLOC_ID", alloc.id.short().to_owned());
    set("NOMAD_ALLOC_NAME", alloc.name.clone());
    set(
        "NOMAD_ALLOC_INDEX",
        alloc.index().map(|i| i.to_string()).unwrap_or_default(),
    );
    set("NOMAD_JOB_ID", job.id.to_string());
    set("NOMAD_JOB_NAME", job.name.clone());
    set("NOMAD_JOB_PARENT_ID", job.parent_id.clone());
    set("NOMAD_GROUP_NAME", group.name.clone());
    set("NOMAD_TASK_NAME", task.name.clone());
    set("NOMAD_NAMESPACE", job.namespace.to_string());
    set("NOMAD_REGION", job.region.to_string());
    set("NOMAD_DC", node.datacenter.clone());
    set("NOMAD_CPU_LIMIT", task.resources.cpu.to_string());
    set("NOMAD_MEMORY_LIMIT", task.resources.memory_mb.to_string());
    if task.resources.memory_max_mb > 0 {
        set(
            "NOMAD_MEMORY_MAX_LIMIT",
            task.resources.memory_max_mb.to_string(),
        );
    }
    let alloc_dir = dirs.alloc_dir.join("alloc");
    set("NOMAD_ALLOC_DIR", alloc_dir.display().to_string());
    set(
        "NOMAD_TASK_DIR",
        dirs.task_dir.join("local").display().to_string(),
    );
    set(
        "NOMAD_SECRETS_DIR",
        dirs.task_dir.join("secrets").display().to_string(),
    );
    if let Some(res) = &alloc.allocated_resources {
        for port in &res.shared.ports {
            let label = env_name(&port.label);
            let to = if port.to > 0 { port.to } else { port.value };
            set(&format!("NOMAD_IP_{label}"), port.host_ip.clone());
            set(&format!("NOMAD_HOST_PORT_{label}"), port.value.to_string());
            set(&format!("NOMAD_PORT_{label}"), to.to_string());
            set(
                &format!("NOMAD_ADDR_{label}"),
                format!("{}:{}", port.host_ip, port.value),
            );
            set(
                &format!("NOMAD_HOST_ADDR_{label}"),
                format!("{}:{}", port.host_ip, port.value),
            );
        }
    }
    for (k, v) in job.meta.iter().chain(&group.meta).chain(&task.meta) {
        set(&format!("NOMAD_META_{}", env_name(k)), v.clone());
        set(&format!("NOMAD_META_{k}"), v.clone());
    }
    let base = env.clone();
    for (k, v) in &task.env {
        env.insert(k.clone(), interpolate(v, &base, node));
    }
    env
}

/// Nomad's env-safe spelling of a label: anything not alphanumeric or `_` becomes `_`.
fn env_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Replaces `${...}` runtime references in `s`; unknown ones are left as written.
pub fn interpolate(s: &str, env: &BTreeMap<String, String>, node: &Node) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = after[..end].trim();
        match resolve(expr, env, node) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn resolve(expr: &str, env: &BTreeMap<String, String>, node: &Node) -> Option<String> {
    if let Some(attr) = expr.strip_prefix("attr.") {
        return node.attributes.get(attr).cloned();
    }
    if let Some(meta) = expr.strip_prefix("meta.") {
        return node.meta.get(meta).cloned();
    }
    if let Some(field) = expr.strip_prefix("node.") {
        return match field {
            "unique.id" => Some(node.id.to_string()),
            "unique.name" => Some(node.name.clone()),
            "datacenter" => Some(node.datacenter.clone()),
            "class" => Some(node.node_class.clone()),
            "pool" => Some(node.node_pool.clone()),
            "region" => env.get("NOMAD_REGION").cloned(),
            _ => None,
        };
    }
    if let Some(key) = expr.strip_prefix("env[").and_then(|r| r.strip_suffix(']')) {
        let key = key.trim().trim_matches('"');
        return env.get(key).cloned().or_else(|| std::env::var(key).ok());
    }
    env.get(expr).cloned()
}

/// Interpolates every string inside a driver config.
pub fn interpolate_config(
    config: &BTreeMap<String, Value>,
    env: &BTreeMap<String, String>,
    node: &Node,
) -> BTreeMap<String, Value> {
    fn walk(v: &Value, env: &BTreeMap<String, String>, node: &Node) -> Value {
        match v {
            Value::String(s) => Value::String(interpolate(s, env, node)),
            Value::Array(items) => Value::Array(items.iter().map(|i| walk(i, env, node)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), walk(v, env, node)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    config
        .iter()
        .map(|(k, v)| (k.clone(), walk(v, env, node)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        let mut n = Node {
            name: "n1".into(),
            datacenter: "dc1".into(),
            ..Node::default()
        };
        n.attributes.insert("kernel.name".into(), "linux".into());
        n.meta.insert("rack".into(), "r1".into());
        n
    }

    #[test]
    fn runtime_references_are_filled_in_and_unknown_ones_kept() {
        let mut env = BTreeMap::new();
        env.insert("NOMAD_PORT_http".to_owned(), "8080".to_owned());
        let n = node();
        assert_eq!(
            interpolate("port=${NOMAD_PORT_http}", &env, &n),
            "port=8080"
        );
        assert_eq!(
            interpolate(
                "${attr.kernel.name}/${meta.rack}/${node.datacenter}",
                &env,
                &n
            ),
            "linux/r1/dc1"
        );
        assert_eq!(
            interpolate("${NOMAD_NOPE} ${", &env, &n),
            "${NOMAD_NOPE} ${"
        );
        let cfg: BTreeMap<String, Value> = [(
            "args".to_owned(),
            serde_json::json!(["-p", "${NOMAD_PORT_http}", {"x": "${node.unique.name}"}]),
        )]
        .into();
        let out = interpolate_config(&cfg, &env, &n);
        assert_eq!(out["args"], serde_json::json!(["-p", "8080", {"x": "n1"}]));
    }
}
