//! Case-insensitive request keys, as Nomad accepts them.
//!
//! Nomad decodes request bodies with Go's `encoding/json`, which matches an object key to a
//! struct field case-insensitively (`"taskgroups"` fills `TaskGroups`), so clients get away
//! with any casing. Before a body is decoded, [`KeyFolder::canonicalize`] rewrites each key to
//! the canonical (PascalCase) name it matches case-insensitively, walking the body alongside
//! the JSON Schema of the request type (`schemars::schema_for!`). Keys of free-form maps —
//! where the schema says `additionalProperties` (Meta, Env, Config, Labels, TaskStates, …) —
//! are data and are left alone; their values are still walked with the map's value schema.

use schemars::JsonSchema;
use serde_json::{Map, Value};
use std::any::TypeId;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// One schema, compiled: the properties an object may have, the schema of the other keys' values
/// (a map), the schema of array items, and other schemas that also apply (`$ref`, `allOf`,
/// `anyOf`, `oneOf`).
#[derive(Debug, Default)]
struct Shape {
    props: BTreeMap<String, usize>,
    /// Lowercased property name → the canonical names it folds to.
    folded: HashMap<String, Vec<String>>,
    additional: Option<usize>,
    items: Option<usize>,
    also: Vec<usize>,
}

/// Rewrites object keys to their canonical spelling, following a JSON Schema.
#[derive(Debug)]
pub struct KeyFolder {
    shapes: Vec<Shape>,
    root: usize,
}

/// The folder of a request type, built once per type.
pub fn folder_for<T: JsonSchema + 'static>() -> Arc<KeyFolder> {
    static FOLDERS: OnceLock<Mutex<HashMap<TypeId, Arc<KeyFolder>>>> = OnceLock::new();
    let folders = FOLDERS.get_or_init(Default::default);
    let id = TypeId::of::<T>();
    let cached = match folders.lock() {
        Ok(map) => map.get(&id).cloned(),
        Err(poisoned) => poisoned.into_inner().get(&id).cloned(),
    };
    if let Some(folder) = cached {
        return folder;
    }
    let folder = Arc::new(KeyFolder::for_type::<T>());
    match folders.lock() {
        Ok(mut map) => map.insert(id, Arc::clone(&folder)),
        Err(poisoned) => poisoned.into_inner().insert(id, Arc::clone(&folder)),
    };
    folder
}

impl KeyFolder {
    /// The folder for `T`'s JSON Schema.
    pub fn for_type<T: JsonSchema>() -> Self {
        Self::from_schema(&schemars::schema_for!(T).to_value())
    }

    /// The folder for a JSON Schema document (`$ref`s into `$defs`/`definitions` resolved).
    pub fn from_schema(schema: &Value) -> Self {
        let defs = schema
            .get("$defs")
            .or_else(|| schema.get("definitions"))
            .and_then(Value::as_object);
        let mut compiler = Compiler {
            root: schema,
            defs,
            shapes: Vec::new(),
            refs: HashMap::new(),
        };
        let root = compiler
            .reference("#")
            .unwrap_or_else(|| compiler.push(Shape::default()));
        KeyFolder {
            shapes: compiler.shapes,
            root,
        }
    }

    /// Rewrites the keys of `value` in place.
    pub fn canonicalize(&self, value: &mut Value) {
        self.walk(value, &[self.root]);
    }

    /// Every shape reachable from `at` through `also` links.
    fn expand(&self, at: &[usize]) -> Vec<usize> {
        let mut seen = vec![false; self.shapes.len()];
        let mut out = Vec::new();
        let mut stack: Vec<usize> = at.to_vec();
        while let Some(i) = stack.pop() {
            if seen.get(i).copied().unwrap_or(true) {
                continue;
            }
            seen[i] = true;
            out.push(i);
            stack.extend(self.shapes[i].also.iter().copied());
        }
        out
    }

    fn walk(&self, value: &mut Value, at: &[usize]) {
        let shapes = self.expand(at);
        match value {
            Value::Object(map) => {
                let is_struct = shapes.iter().any(|&i| !self.shapes[i].props.is_empty());
                let is_map = shapes.iter().any(|&i| self.shapes[i].additional.is_some());
                if !is_struct && !is_map {
                    return;
                }
                let old = std::mem::take(map);
                let mut out = Map::with_capacity(old.len());
                let plan: Vec<(String, Vec<usize>)> =
                    old.keys().map(|k| self.resolve(&shapes, k, &old)).collect();
                for ((_, mut item), (name, children)) in old.into_iter().zip(plan) {
                    if !children.is_empty() {
                        self.walk(&mut item, &children);
                    }
                    out.insert(name, item);
                }
                *map = out;
            }
            Value::Array(items) => {
                let children: Vec<usize> = shapes
                    .iter()
                    .filter_map(|&i| self.shapes[i].items)
                    .collect();
                if !children.is_empty() {
                    for item in items {
                        self.walk(item, &children);
                    }
                }
            }
            _ => {}
        }
    }

    /// The name a key should have and the shapes of its value.
    fn resolve(
        &self,
        shapes: &[usize],
        key: &str,
        object: &Map<String, Value>,
    ) -> (String, Vec<usize>) {
        let exact: Vec<usize> = shapes
            .iter()
            .filter_map(|&i| self.shapes[i].props.get(key).copied())
            .collect();
        if !exact.is_empty() {
            return (key.to_owned(), exact);
        }
        let lower = key.to_ascii_lowercase();
        let mut names: Vec<&String> = shapes
            .iter()
            .filter_map(|&i| self.shapes[i].folded.get(&lower))
            .flatten()
            .collect();
        names.sort();
        names.dedup();
        // Only an unambiguous match that does not collide with a key already present is taken.
        if let [name] = names.as_slice()
            && !object.contains_key(name.as_str())
        {
            let children = shapes
                .iter()
                .filter_map(|&i| self.shapes[i].props.get(name.as_str()).copied())
                .collect();
            return ((*name).clone(), children);
        }
        let additional = shapes
            .iter()
            .filter_map(|&i| self.shapes[i].additional)
            .collect();
        (key.to_owned(), additional)
    }
}

struct Compiler<'a> {
    root: &'a Value,
    defs: Option<&'a Map<String, Value>>,
    shapes: Vec<Shape>,
    refs: HashMap<String, usize>,
}

impl<'a> Compiler<'a> {
    fn push(&mut self, shape: Shape) -> usize {
        self.shapes.push(shape);
        self.shapes.len() - 1
    }

    /// The shape a `$ref` points at; compiled once, so recursive schemas terminate.
    fn reference(&mut self, r: &str) -> Option<usize> {
        if let Some(&i) = self.refs.get(r) {
            return Some(i);
        }
        let target = if r == "#" {
            Some(self.root)
        } else {
            r.strip_prefix("#/$defs/")
                .or_else(|| r.strip_prefix("#/definitions/"))
                .map(|name| name.replace("~1", "/").replace("~0", "~"))
                .and_then(|name| self.defs.and_then(|d| d.get(&name)))
        }?;
        let slot = self.push(Shape::default());
        self.refs.insert(r.to_owned(), slot);
        if let Some(i) = self.compile(target) {
            self.shapes[slot].also.push(i);
        }
        Some(slot)
    }

    fn compile(&mut self, schema: &'a Value) -> Option<usize> {
        let obj = match schema {
            Value::Bool(true) => return Some(self.push(Shape::default())),
            Value::Object(obj) => obj,
            _ => return None,
        };
        let mut shape = Shape::default();
        if let Some(r) = obj.get("$ref").and_then(Value::as_str)
            && let Some(i) = self.reference(r)
        {
            shape.also.push(i);
        }
        for keyword in ["allOf", "anyOf", "oneOf"] {
            for sub in obj
                .get(keyword)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(i) = self.compile(sub) {
                    shape.also.push(i);
                }
            }
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                let i = match self.compile(sub) {
                    Some(i) => i,
                    None => self.push(Shape::default()),
                };
                shape.props.insert(name.clone(), i);
                shape
                    .folded
                    .entry(name.to_ascii_lowercase())
                    .or_default()
                    .push(name.clone());
            }
        }
        if let Some(sub) = obj.get("additionalProperties") {
            shape.additional = self.compile(sub);
        }
        match obj.get("items") {
            Some(Value::Array(tuple)) => {
                let also = tuple.iter().filter_map(|s| self.compile(s)).collect();
                shape.items = Some(self.push(Shape {
                    also,
                    ..Shape::default()
                }));
            }
            Some(sub) => shape.items = self.compile(sub),
            None => {}
        }
        if let Some(tuple) = obj.get("prefixItems").and_then(Value::as_array) {
            let mut also: Vec<usize> = tuple.iter().filter_map(|s| self.compile(s)).collect();
            also.extend(shape.items);
            shape.items = Some(self.push(Shape {
                also,
                ..Shape::default()
            }));
        }
        Some(self.push(shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(rename_all = "PascalCase")]
    #[allow(dead_code)]
    struct Register {
        job: Option<caravan_schemas::job::Job>,
        #[serde(default)]
        enforce_index: bool,
    }

    #[test]
    fn keys_fold_to_their_canonical_names_but_map_keys_stay() {
        let folder = KeyFolder::for_type::<Register>();
        let mut body = json!({
            "job": {
                "id": "x",
                "datacenters": ["dc1"],
                "meta": {"owner": "me", "Team": "x"},
                "taskgroups": [{
                    "name": "g",
                    "count": 2,
                    "tasks": [{
                        "name": "t",
                        "driver": "raw_exec",
                        "config": {"command": "/bin/sleep", "args": ["1"]},
                        "env": {"path": "/bin"},
                        "resources": {"cpu": 100, "memorymb": 64}
                    }]
                }]
            },
            "enforceindex": true,
            "unknown": 1
        });
        folder.canonicalize(&mut body);
        assert_eq!(
            body,
            json!({
                "Job": {
                    "ID": "x",
                    "Datacenters": ["dc1"],
                    "Meta": {"owner": "me", "Team": "x"},
                    "TaskGroups": [{
                        "Name": "g",
                        "Count": 2,
                        "Tasks": [{
                            "Name": "t",
                            "Driver": "raw_exec",
                            "Config": {"command": "/bin/sleep", "args": ["1"]},
                            "Env": {"path": "/bin"},
                            "Resources": {"CPU": 100, "MemoryMB": 64}
                        }]
                    }]
                },
                "EnforceIndex": true,
                "unknown": 1
            })
        );
    }

    #[test]
    fn exact_keys_win_and_collisions_are_left_alone() {
        let folder = KeyFolder::for_type::<Register>();
        let mut body = json!({"Job": {"ID": "a", "id": "b"}});
        folder.canonicalize(&mut body);
        assert_eq!(body, json!({"Job": {"ID": "a", "id": "b"}}));
    }

    #[test]
    fn recursive_and_map_valued_schemas_are_walked() {
        let folder = KeyFolder::for_type::<caravan_schemas::alloc::Allocation>();
        let mut body = json!({
            "id": "a",
            "taskstates": {"web": {"state": "running", "events": [{"type": "Started", "details": {"k": "v"}}]}},
            "job": {"id": "j", "taskgroups": []}
        });
        folder.canonicalize(&mut body);
        assert_eq!(
            body,
            json!({
                "ID": "a",
                "TaskStates": {"web": {"State": "running", "Events": [{"Type": "Started", "Details": {"k": "v"}}]}},
                "Job": {"ID": "j", "TaskGroups": []}
            })
        );
    }

    #[test]
    fn cached_per_type() {
        let a = folder_for::<Register>();
        let b = folder_for::<Register>();
        assert!(Arc::ptr_eq(&a, &b));
    }
}
