use super::*;
use proptest::prelude::*;
use serde_json::json;

fn no_vars() -> VariableInputs {
    VariableInputs::default()
}

fn parse_ok(src: &str) -> Tree {
    parse_jobspec(src, &no_vars()).unwrap_or_else(|e| panic!("{e}\n--- source ---\n{src}"))
}

fn job(src: &str) -> Value {
    parse_ok(src).value
}

fn fails(src: &str) -> SpecError {
    fails_with(src, &no_vars())
}

fn fails_with(src: &str, vars: &VariableInputs) -> SpecError {
    match parse_jobspec(src, vars) {
        Ok(t) => panic!("expected an error, got {}\n--- source ---\n{src}", t.value),
        Err(e) => e,
    }
}

/// The one problem of an error, as "line:col: message".
fn one_problem(e: &SpecError) -> String {
    let ps = e.problems();
    assert_eq!(ps.len(), 1, "expected one problem, got {e}");
    ps[0].to_string()
}

/// `"job.web.group.g.task[0].x"` → a path.
fn path(s: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in s.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            out.push(Seg::Key(rest[..i].to_string()));
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                out.push(Seg::Index(rest[1..end].parse().unwrap()));
                rest = &rest[end + 1..];
            }
        } else {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

fn pos_at(t: &Tree, p: &str) -> String {
    let p = path(p);
    // `subtree` keeps only entries at or below the path, so this finds an exact entry only.
    t.source_map
        .subtree(&p)
        .lookup(&[])
        .map(|p| p.to_string())
        .unwrap_or_else(|| "<none>".into())
}

/// The value of `x` in `job "j" { x = <expr> }`, evaluated with `prelude` at the top level.
fn eval_with(prelude: &str, expr: &str, vars: &VariableInputs) -> Result<Value, SpecError> {
    let src = format!("{prelude}job \"j\" {{\n  x = {expr}\n}}\n");
    parse_jobspec(&src, vars).map(|t| t.value["job"]["j"]["x"].clone())
}

fn eval(expr: &str) -> Value {
    eval_with("", expr, &no_vars()).unwrap_or_else(|e| panic!("{expr}: {e}"))
}

/// Every path in `v` has its own entry in the source map.
fn assert_every_value_positioned(t: &Tree) {
    fn walk(t: &Tree, v: &Value, p: &mut Vec<Seg>, missing: &mut Vec<String>) {
        if !p.is_empty() && t.source_map.subtree(p).lookup(&[]).is_none() {
            missing.push(crate::jobspec::tree::display_path(p));
        }
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    p.push(Seg::Index(i));
                    walk(t, item, p, missing);
                    p.pop();
                }
            }
            Value::Object(m) => {
                for (k, item) in m {
                    p.push(Seg::Key(k.clone()));
                    walk(t, item, p, missing);
                    p.pop();
                }
            }
            _ => {}
        }
    }
    let mut missing = Vec::new();
    walk(t, &t.value, &mut Vec::new(), &mut missing);
    assert!(missing.is_empty(), "no position for {missing:?}");
}

// ---------------------------------------------------------------------------------------------
// Shape rules

#[test]
fn shape_rules() {
    let cases: &[(&str, &str, Value)] = &[
        (
            "attributes",
            "count = 3\nname = \"x\"\nratio = 0.5\nwhole = 2.0\nok = true\nnothing = null",
            json!({"count": 3, "name": "x", "ratio": 0.5, "whole": 2, "ok": true, "nothing": null}),
        ),
        (
            "collections",
            "tags = [\"a\", \"b\"]\nmeta = { a = 1, \"b.c\" = [true] }",
            json!({"tags": ["a", "b"], "meta": {"a": 1, "b.c": [true]}}),
        ),
        (
            "labelled block",
            "group \"web\" {\n  count = 2\n}",
            json!({"group": {"web": {"count": 2}}}),
        ),
        (
            "unlabelled block once is an array",
            "constraint {\n  attribute = \"a\"\n}",
            json!({"constraint": [{"attribute": "a"}]}),
        ),
        (
            "repeated unlabelled blocks",
            "constraint {\n  value = 1\n}\nconstraint {\n  value = 2\n}",
            json!({"constraint": [{"value": 1}, {"value": 2}]}),
        ),
        (
            "repeated labelled blocks merge",
            "group \"a\" {}\ngroup \"b\" {}",
            json!({"group": {"a": {}, "b": {}}}),
        ),
        (
            "two labels nest",
            "x \"a\" \"b\" {\n  v = 1\n}\nx \"a\" \"c\" {}\nx \"d\" \"b\" {}",
            json!({"x": {"a": {"b": {"v": 1}, "c": {}}, "d": {"b": {}}}}),
        ),
        (
            "nested blocks",
            "group \"g\" {\n  task \"t\" {\n    config {\n      image = \"redis:7\"\n    }\n  }\n}",
            json!({"group": {"g": {"task": {"t": {"config": [{"image": "redis:7"}]}}}}}),
        ),
        (
            "empty blocks",
            "update {}\nport \"db\" {}",
            json!({"update": [{}], "port": {"db": {}}}),
        ),
        (
            "one-line block",
            "port \"http\" { static = 8080 }",
            json!({"port": {"http": {"static": 8080}}}),
        ),
        ("ident label", "group web {}", json!({"group": {"web": {}}})),
        (
            "interleaved",
            "a {}\nb = 1\na {}",
            json!({"a": [{}, {}], "b": 1}),
        ),
    ];
    for (name, body, want) in cases {
        let src = format!("job \"j\" {{\n{body}\n}}\n");
        let t = parse_jobspec(&src, &no_vars()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&t.value["job"]["j"], want, "{name}");
        assert_every_value_positioned(&t);
    }
}

#[test]
fn parse_config_uses_the_same_mapping_without_job_rules() {
    let t = parse_config("data_dir = \"/tmp\"\nserver {\n  enabled = true\n}\nplugin \"docker\" {\n  config {\n    volumes { enabled = true }\n  }\n}\n").unwrap();
    assert_eq!(
        t.value,
        json!({"data_dir": "/tmp", "server": [{"enabled": true}], "plugin": {"docker": {"config": [{"volumes": [{"enabled": true}]}]}}})
    );
    assert_eq!(
        pos_at(&t, "plugin.docker.config[0].volumes[0].enabled"),
        "7:15"
    );
    assert_every_value_positioned(&t);
    // Variables are not a thing there; runtime interpolations are still kept.
    let e = parse_config("x = var.y\n").unwrap_err();
    assert!(
        one_problem(&e).contains("cannot be used in this file"),
        "{e}"
    );
    let e = parse_config("x = y\n").unwrap_err();
    assert_eq!(one_problem(&e), "1:5: unknown variable \"y\"");
    assert_eq!(
        parse_config("x = \"${NOMAD_X}\"\n").unwrap().value,
        json!({"x": "${NOMAD_X}"})
    );
    // A `variable` block is plain data in a config file.
    assert_eq!(
        parse_config("variable \"a\" {}\n").unwrap().value,
        json!({"variable": {"a": {}}})
    );
}

// ---------------------------------------------------------------------------------------------
// Source positions

#[test]
fn source_map_positions() {
    let src = r#"job "example" {
  datacenters = ["dc1", "dc2"]
  group "cache" {
    count = 3
    network {
      port "db" {
        to = 6379
      }
    }
    task "redis" {
      env = {
        A = "1"
        B = upper("b")
      }
      config {
        args = concat(["-a"], ["-b"])
      }
    }
  }
  meta "a" "b" {
    x = 1
  }
}
"#;
    let t = parse_ok(src);
    let cases = [
        ("job", "1:1"),
        ("job.example", "1:1"),
        ("job.example.datacenters", "2:3"),
        ("job.example.datacenters[0]", "2:18"),
        ("job.example.datacenters[1]", "2:25"),
        ("job.example.group", "3:3"),
        ("job.example.group.cache", "3:3"),
        ("job.example.group.cache.count", "4:5"),
        ("job.example.group.cache.network", "5:5"),
        ("job.example.group.cache.network[0]", "5:5"),
        ("job.example.group.cache.network[0].port.db", "6:7"),
        ("job.example.group.cache.network[0].port.db.to", "7:9"),
        ("job.example.group.cache.task.redis.env", "11:7"),
        ("job.example.group.cache.task.redis.env.A", "12:9"),
        ("job.example.group.cache.task.redis.env.B", "13:9"),
        ("job.example.group.cache.task.redis.config[0].args", "16:9"),
        (
            "job.example.group.cache.task.redis.config[0].args[1]",
            "16:9",
        ),
        ("job.example.meta.a", "20:3"),
        ("job.example.meta.a.b", "20:3"),
        ("job.example.meta.a.b.x", "21:5"),
    ];
    for (p, want) in cases {
        assert_eq!(pos_at(&t, p), want, "{p}");
    }
    assert_every_value_positioned(&t);
}

#[test]
fn positions_count_characters_not_bytes() {
    let t = parse_ok("job \"j\" {\n  meta = { \"é\" = \"ü\", b = 1 }\n}\n");
    assert_eq!(pos_at(&t, "job.j.meta.b"), "2:23");
    let t = parse_ok("\u{feff}job \"j\" {\n  a = 1\n}\n");
    assert_eq!(pos_at(&t, "job.j.a"), "2:3");
}

// ---------------------------------------------------------------------------------------------
// Variables

const VARS: &str = r#"
variable "name" {
  type    = string
  default = "web"
}
variable "count" {
  type    = number
  default = 1
}
variable "enabled" {
  type    = bool
  default = false
}
variable "tags" {
  type    = list(string)
  default = ["a"]
}
variable "ports" {
  type    = map(number)
  default = {}
}
"#;

fn inputs(files: &[(&str, &str)], env: &[(&str, &str)], flags: &[(&str, &str)]) -> VariableInputs {
    let pairs = |xs: &[(&str, &str)]| {
        xs.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    VariableInputs {
        files: files
            .iter()
            .map(|(n, c)| VarFile {
                name: n.to_string(),
                content: c.to_string(),
            })
            .collect(),
        env: pairs(env),
        flags: pairs(flags),
    }
}

#[test]
fn variables_take_inputs_in_precedence_order() {
    let expr = "[var.name, var.count, var.enabled, var.tags, var.ports]";
    let cases: &[(&str, VariableInputs, Value)] = &[
        ("defaults", no_vars(), json!(["web", 1, false, ["a"], {}])),
        (
            "hcl var file",
            inputs(
                &[(
                    "prod.hcl",
                    "name = \"api\"\ncount = 2 + 1\ntags = [\"x\", \"y\"]\nports = { http = 80 }\nundeclared = 1\n",
                )],
                &[],
                &[],
            ),
            json!(["api", 3, false, ["x", "y"], {"http": 80}]),
        ),
        (
            "json var file",
            inputs(
                &[(
                    "prod.json",
                    r#"{"name": "api", "count": "4", "enabled": true, "tags": ["j"]}"#,
                )],
                &[],
                &[],
            ),
            json!(["api", 4, true, ["j"], {}]),
        ),
        (
            "env converts raw strings",
            inputs(
                &[],
                &[
                    ("count", "5"),
                    ("enabled", "true"),
                    ("tags", "[\"e1\", \"e2\"]"),
                    ("ports", "{ db = 6379 }"),
                    ("other", "ignored"),
                ],
                &[],
            ),
            json!(["web", 5, true, ["e1", "e2"], {"db": 6379}]),
        ),
        (
            "flags convert raw strings",
            inputs(
                &[],
                &[],
                &[("name", "a b"), ("count", "2.5"), ("enabled", "true")],
            ),
            json!(["a b", 2.5, true, ["a"], {}]),
        ),
        (
            "later inputs win",
            inputs(
                &[
                    ("a.hcl", "name = \"file1\"\ncount = 10"),
                    ("b.json", r#"{"name": "file2"}"#),
                ],
                &[("count", "20"), ("name", "env")],
                &[("name", "flag")],
            ),
            json!(["flag", 20, false, ["a"], {}]),
        ),
    ];
    for (name, vars, want) in cases {
        let got = eval_with(VARS, expr, vars).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&got, want, "{name}");
    }
}

#[test]
fn variable_errors() {
    let cases: &[(&str, &str, VariableInputs, &str)] = &[
        (
            "missing value",
            "variable \"image\" {}\n",
            no_vars(),
            "1:1: variable \"image\" has no value: give it a default, or set it with -var image=...",
        ),
        (
            "undeclared -var",
            "",
            inputs(&[], &[], &[("x", "1")]),
            "variable \"x\" is not declared",
        ),
        (
            "number from a flag",
            VARS,
            inputs(&[], &[], &[("count", "many")]),
            "invalid value for variable \"count\" from -var: a number is required, found \"many\"",
        ),
        (
            "bool from env",
            VARS,
            inputs(&[], &[("enabled", "yes")], &[]),
            "variable \"enabled\" from NOMAD_VAR_enabled: true or false is required",
        ),
        (
            "list from a flag",
            VARS,
            inputs(&[], &[], &[("tags", "[unclosed")]),
            "invalid value for variable \"tags\" from -var",
        ),
        (
            "bad default",
            "variable \"n\" {\n  type = number\n  default = \"x\"\n}\n",
            no_vars(),
            "3:13: invalid default for variable \"n\": a number is required",
        ),
        (
            "bad element",
            "variable \"n\" {\n  type = list(number)\n  default = [1, \"x\"]\n}\n",
            no_vars(),
            "element 1: a number is required",
        ),
        (
            "bad type",
            "variable \"n\" {\n  type = strin\n}\n",
            no_vars(),
            "2:10: variable \"n\": invalid type \"strin\"",
        ),
        (
            "unknown attribute",
            "variable \"n\" {\n  defualt = 1\n}\n",
            no_vars(),
            "2:3: variable \"n\": unsupported attribute \"defualt\"",
        ),
        (
            "declared twice",
            "variable \"n\" {\n  default = 1\n}\nvariable \"n\" {\n  default = 1\n}\n",
            no_vars(),
            "4:1: variable \"n\" is declared twice; first declared at 1:1",
        ),
        (
            "var in a default",
            "variable \"a\" {\n  default = 1\n}\nvariable \"b\" {\n  default = var.a\n}\n",
            no_vars(),
            "input variables (var.*) cannot be used in a variable's default",
        ),
        (
            "bad json var file",
            VARS,
            inputs(&[("v.json", "{\n  \"name\": ,\n}")], &[], &[]),
            "v.json:2:11: invalid JSON",
        ),
        (
            "bad hcl var file",
            VARS,
            inputs(&[("v.hcl", "name = \n")], &[], &[]),
            "v.hcl:1:",
        ),
        (
            "wrong type in var file",
            VARS,
            inputs(&[("v.hcl", "\ncount = \"x\"\n")], &[], &[]),
            "v.hcl:2:1: invalid value for variable \"count\"",
        ),
        (
            "validation",
            "variable \"port\" {\n  type = number\n  default = 80\n  validation {\n    condition     = var.port > 1024\n    error_message = \"The port must be above 1024.\"\n  }\n}\n",
            no_vars(),
            "5:21: invalid value for variable \"port\": The port must be above 1024.",
        ),
    ];
    for (name, prelude, vars, want) in cases {
        let src = format!("{prelude}job \"j\" {{}}\n");
        let e = fails_with(&src, vars);
        let got = e
            .problems()
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            got.contains(want),
            "{name}: {got:?} does not contain {want:?}"
        );
    }
    // A validation that passes, and one that checks a flag's value.
    let prelude = "variable \"port\" {\n  type = number\n  default = 8080\n  validation {\n    condition = var.port > 1024\n    error_message = \"too low\"\n  }\n}\n";
    assert_eq!(
        eval_with(prelude, "var.port", &no_vars()).unwrap(),
        json!(8080)
    );
    let e = eval_with(prelude, "var.port", &inputs(&[], &[], &[("port", "80")])).unwrap_err();
    assert!(e.to_string().contains("too low"), "{e}");
}

#[test]
fn variables_blocks_declare_with_defaults() {
    let prelude = "variables {\n  region = \"global\"\n  count = 2\n  dcs = [\"dc1\"]\n}\n";
    assert_eq!(
        eval_with(prelude, "[var.region, var.count, var.dcs]", &no_vars()).unwrap(),
        json!(["global", 2, ["dc1"]])
    );
    // The default's type is the variable's type, for raw inputs.
    let flags = inputs(
        &[],
        &[],
        &[("count", "5"), ("dcs", "[\"a\", \"b\"]"), ("region", "eu")],
    );
    assert_eq!(
        eval_with(prelude, "[var.region, var.count, var.dcs]", &flags).unwrap(),
        json!(["eu", 5, ["a", "b"]])
    );
    let e = eval_with(prelude, "1", &inputs(&[], &[], &[("count", "x")])).unwrap_err();
    assert!(
        one_problem(&e).contains("invalid value for variable \"count\""),
        "{e}"
    );
    let e = eval_with(
        "variables {\n  a = 1\n}\nvariable \"a\" {}\n",
        "1",
        &no_vars(),
    )
    .unwrap_err();
    assert_eq!(
        one_problem(&e),
        "4:1: variable \"a\" is declared twice; first declared at 2:3"
    );
}

#[test]
fn complex_variable_types() {
    let prelude = r#"
variable "svc" {
  type = object({ name = string, port = number, tags = optional(list(string)) })
  default = { name = "web", port = "80", extra = 1 }
}
variable "pair" {
  type = tuple([string, number])
  default = ["a", 1]
}
variable "uniq" {
  type = set(string)
  default = ["a", "b", "a"]
}
variable "anything" {
  default = { nested = [1, 2] }
}
"#;
    assert_eq!(
        eval_with(
            prelude,
            "[var.svc, var.pair, var.uniq, var.anything.nested[1]]",
            &no_vars()
        )
        .unwrap(),
        json!([{"name": "web", "port": 80, "tags": null}, ["a", 1], ["a", "b"], 2])
    );
    let flags = inputs(
        &[],
        &[],
        &[
            ("svc", "{ name = \"api\", port = 9090 }"),
            ("anything", "raw"),
        ],
    );
    assert_eq!(
        eval_with(prelude, "[var.svc.port, var.anything]", &flags).unwrap(),
        json!([9090, "raw"])
    );
}

// ---------------------------------------------------------------------------------------------
// Locals

#[test]
fn locals_resolve_in_any_order() {
    let prelude = r#"
variable "env" {
  default = "prod"
}
locals {
  full = "${local.prefix}-${local.suffix}"
  upper_full = upper(local.full)
}
locals {
  prefix = "app-${var.env}"
  suffix = length(local.parts)
  parts = ["a", "b", "c"]
}
"#;
    assert_eq!(
        eval_with(prelude, "[local.full, local.upper_full]", &no_vars()).unwrap(),
        json!(["app-prod-3", "APP-PROD-3"])
    );
}

#[test]
fn locals_errors() {
    let cases = [
        (
            "locals {\n  a = local.b\n  b = local.c\n  c = local.a\n}\n",
            "2:3: local values refer to each other in a cycle: local.a -> local.b -> local.c -> local.a",
        ),
        (
            "locals {\n  a = local.a\n}\n",
            "2:3: local values refer to each other in a cycle: local.a -> local.a",
        ),
        (
            "locals {\n  a = local.nope\n}\n",
            "2:12: there is no local value named \"nope\"",
        ),
        (
            "locals {\n  a = 1\n}\nlocals {\n  a = 2\n}\n",
            "5:3: local value \"a\" is defined twice; first defined at 2:3",
        ),
        ("locals {\n  a = 1 / 0\n}\n", "2:7: division by zero"),
    ];
    for (prelude, want) in cases {
        let e = fails(&format!("{prelude}job \"j\" {{}}\n"));
        assert_eq!(one_problem(&e), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Functions and expressions

#[test]
fn functions() {
    let cases: &[(&str, Value)] = &[
        (r#"upper("web")"#, json!("WEB")),
        (r#"lower("WEB")"#, json!("web")),
        (r#"format("%s-%d-%v", "a", 3, true)"#, json!("a-3-true")),
        (r#"join(",", ["a", "b"])"#, json!("a,b")),
        (r#"split(",", "a,b")"#, json!(["a", "b"])),
        (r#"concat(["a"], ["b", "c"])"#, json!(["a", "b", "c"])),
        (r#"length("héllo")"#, json!(5)),
        (r#"length({a = 1})"#, json!(1)),
        (r#"replace("a.b.c", ".", "-")"#, json!("a-b-c")),
        (r#"trimspace("  x \n")"#, json!("x")),
        (r#"trimprefix("v1.2", "v")"#, json!("1.2")),
        (r#"trimsuffix("file.txt", ".txt")"#, json!("file")),
        (r#"substr("hello", 1, 3)"#, json!("ell")),
        (r#"lookup({a = 1}, "a", 2)"#, json!(1)),
        (r#"lookup({a = 1}, "b", 2)"#, json!(2)),
        (r#"coalesce("", "x")"#, json!("x")),
        ("tostring(5)", json!("5")),
        (r#"tonumber("5")"#, json!(5)),
        (r#"tobool("true")"#, json!(true)),
        ("min(3, 1, 2)", json!(1)),
        ("max(3, 1.5)", json!(3)),
        ("max([4, 9]...)", json!(9)),
        ("abs(-4)", json!(4)),
        ("keys({b = 1, a = 2})", json!(["a", "b"])),
        ("values({b = 1, a = 2})", json!([2, 1])),
        (r#"contains(["a", "b"], "b")"#, json!(true)),
        ("merge({a = 1}, {b = 2})", json!({"a": 1, "b": 2})),
        ("range(3)", json!([0, 1, 2])),
        ("range(1, 7, 2)", json!([1, 3, 5])),
        (r#"element(["a", "b"], 3)"#, json!("b")),
        (r#"jsonencode({a = [1, "x"]})"#, json!(r#"{"a":[1,"x"]}"#)),
        (r#"jsondecode("{\"a\": 1}").a"#, json!(1)),
        ("ceil(1.2)", json!(2)),
        ("floor(1.8)", json!(1)),
        (r#"try(jsondecode("nope"), "fallback")"#, json!("fallback")),
        ("can([][0])", json!(false)),
        ("can([1][0])", json!(true)),
        ("flatten([[1], [2, [3]]])", json!([1, 2, 3])),
        ("distinct([1, 2, 1])", json!([1, 2])),
        ("reverse([1, 2])", json!([2, 1])),
        ("sort([\"b\", \"a\"])", json!(["a", "b"])),
        // Operators, conditionals, for expressions, splats.
        ("1 + 2 * 3", json!(7)),
        ("7 / 2", json!(3.5)),
        ("6 / 2", json!(3)),
        ("7 % 3", json!(1)),
        ("-(2 - 5)", json!(3)),
        ("1 < 2 && !false", json!(true)),
        ("1 == 1.0", json!(true)),
        (r#""a" != "b" ? "yes" : "no""#, json!("yes")),
        ("[for s in [\"a\", \"b\"] : upper(s)]", json!(["A", "B"])),
        (
            "[for i, s in [\"a\", \"b\"] : \"${i}${s}\" if i > 0]",
            json!(["1b"]),
        ),
        (
            "{for k, v in {a = 1, b = 2} : v => k}",
            json!({"1": "a", "2": "b"}),
        ),
        (
            "{for s in [\"a\", \"ab\", \"b\"] : substr(s, 0, 1) => s...}",
            json!({"a": ["a", "ab"], "b": ["b"]}),
        ),
        ("[{n = 1}, {n = 2}][*].n", json!([1, 2])),
        ("[{n = 1}, {n = 2}].*.n", json!([1, 2])),
        ("[[1, 2], [3]][0][1]", json!(2)),
        ("{a = {b = [5]}}.a.b[0]", json!(5)),
        ("[1, 2].0", json!(1)),
        ("\"${1 + 1}\"", json!(2)),
        ("\"n=${1 + 1}\"", json!("n=2")),
        ("\"%{ for x in [1, 2] }${x},%{ endfor }\"", json!("1,2,")),
        ("\"%{ if true }yes%{ else }no%{ endif }\"", json!("yes")),
        ("\"a  ${~ \"b\" ~}  c\"", json!("abc")),
        ("\"$${not} %%{also not}\"", json!("${not} %{also not}")),
    ];
    for (expr, want) in cases {
        assert_eq!(&eval(expr), want, "{expr}");
    }
    assert!(FUNCTIONS.contains(&"upper"));
}

#[test]
fn template_directives_and_strip_markers() {
    let prelude = "variable \"servers\" {\n  default = [\"a\", \"b\"]\n}\n";
    let cases: &[(&str, &str)] = &[
        (
            "<<EOT\n%{ for ip in var.servers ~}\nserver ${ip}\n%{ endfor ~}\nEOT\n",
            "server a\nserver b\n",
        ),
        (
            "<<EOT\n%{ for i, s in var.servers }${i}=${s} %{ endfor }\nEOT\n",
            "0=a 1=b \n",
        ),
        (
            "\"%{ if length(var.servers) > 1 ~}  many  %{~ else ~} one %{~ endif }\"",
            "many",
        ),
        ("\"%{ if false }x%{ else ~}   y%{ endif }\"", "y"),
        ("\"[${ join(\",\", var.servers) }]\"", "[a,b]"),
        ("\"${var.servers[0]}${var.servers[1]}\"", "ab"),
    ];
    for (expr, want) in cases {
        let got = eval_with(prelude, expr, &no_vars()).unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(got, json!(want), "{expr}");
    }
}

#[test]
fn expression_errors_have_positions() {
    let cases = [
        (
            "upper(1, 2)",
            "2:7: upper(): takes exactly 1 argument, got 2",
        ),
        ("nosuch(1)", "2:7: unknown function \"nosuch\""),
        ("file(\"x.txt\")", "2:7: function \"file\" is not supported"),
        (
            "[1][5]",
            "2:11: index 5 is out of range for a list of 1 element(s)",
        ),
        ("{a = 1}.b", "2:14: this object has no attribute \"b\""),
        (
            "1 + \"x\"",
            "2:11: invalid operand for +: a number is required, found a string",
        ),
        (
            "\"a${[1]}\"",
            "2:11: cannot interpolate: a list cannot be used as a string",
        ),
        (
            "join(\",\", [[1]])",
            "2:17: join(): every element must be a string",
        ),
        (
            "2 ? 3 : 4",
            "2:7: invalid condition: a bool is required, found number 2",
        ),
        (
            "foo",
            "2:7: unknown variable \"foo\"; did you mean var.foo? (declare it with a variable \"foo\" block)",
        ),
        ("var.nope", "2:10: there is no variable named \"nope\""),
        ("{a = 1, (\"a\") = 2}", "2:15: duplicate key \"a\""),
        ("merge({a = 1, (\"a\") = 2})", "2:21: duplicate key \"a\""),
        (
            "upper(attr.kernel.name)",
            "2:13: attr.kernel.name is only known when the task runs",
        ),
    ];
    for (expr, want) in cases {
        let e = eval_with("", expr, &no_vars()).unwrap_err();
        let got = one_problem(&e);
        assert!(
            got.starts_with(want),
            "{expr}: {got:?} does not start with {want:?}"
        );
    }
    // With the variable declared, the hint names it.
    let e = eval_with("variable \"foo\" {\n  default = 1\n}\n", "foo", &no_vars()).unwrap_err();
    assert_eq!(
        one_problem(&e),
        "5:7: unknown variable \"foo\"; did you mean var.foo?"
    );
    let e = eval_with("locals {\n  foo = 1\n}\n", "foo", &no_vars()).unwrap_err();
    assert_eq!(
        one_problem(&e),
        "5:7: unknown variable \"foo\"; did you mean local.foo?"
    );
}

#[test]
fn every_problem_is_reported() {
    let e = fails("job \"j\" {\n  a = nope\n  b = 1\n  c = upper()\n}\n");
    let ps: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(ps.len(), 2, "{ps:?}");
    assert!(ps[0].starts_with("2:7: unknown variable"), "{ps:?}");
    assert!(
        ps[1].starts_with("4:7: upper(): takes exactly 1 argument"),
        "{ps:?}"
    );
}

#[test]
fn expensive_expressions_are_cut_short() {
    let e = eval_with(
        "",
        "[for a in range(1000) : [for b in range(1000) : [for c in range(1000) : c]]]",
        &no_vars(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("too expensive"), "{e}");
    // Copying a big value again and again is paid for too.
    let prelude = "locals {\n  a = join(\"\", [for i in range(1024) : \"0123456789abcdef\"])\n  b = join(\"\", [for i in range(1024) : local.a])\n  c = [for i in range(1024) : [for j in range(1024) : local.b]]\n}\n";
    let e = eval_with(prelude, "length(local.c)", &no_vars()).unwrap_err();
    assert!(e.to_string().contains("too expensive"), "{e}");
    // Strings have a size limit.
    let prelude = "locals {\n  a = join(\"\", [for i in range(1024) : \"0123456789abcdef\"])\n  b = join(\"\", [for i in range(1024) : local.a])\n}\n";
    let e = eval_with(prelude, "\"${local.b}${local.b}\"", &no_vars()).unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Run-time interpolations

#[test]
fn runtime_interpolations_are_kept_verbatim() {
    let prelude = "variable \"prefix\" {\n  default = \"web\"\n}\nlocals {\n  dir = \"/srv\"\n}\n";
    let cases: &[(&str, &str)] = &[
        (
            r#""${var.prefix}-${NOMAD_ALLOC_INDEX}""#,
            "web-${NOMAD_ALLOC_INDEX}",
        ),
        (r#""${NOMAD_PORT_db}""#, "${NOMAD_PORT_db}"),
        (r#""${attr.kernel.name}""#, "${attr.kernel.name}"),
        (
            r#""${node.unique.name}-${meta.rack}""#,
            "${node.unique.name}-${meta.rack}",
        ),
        (r#""${env["HOME"]}/x""#, r#"${env["HOME"]}/x"#),
        (
            r#""${ NOMAD_TASK_DIR }${local.dir}""#,
            "${ NOMAD_TASK_DIR }/srv",
        ),
        (
            r#""${attr.unique.network.ip-address}""#,
            "${attr.unique.network.ip-address}",
        ),
        (r#""${~NOMAD_X~}  ${var.prefix}""#, "${~NOMAD_X~}  web"),
        ("attr.kernel.name", "${attr.kernel.name}"),
        ("NOMAD_ALLOC_ID", "${NOMAD_ALLOC_ID}"),
        (r#"env["HOME"]"#, r#"${env["HOME"]}"#),
        // Device attributes, and task environment variables written in capitals.
        (r#""${device.attr.memory}""#, "${device.attr.memory}"),
        (
            r#""--endpoint=${CSI_ENDPOINT}""#,
            "--endpoint=${CSI_ENDPOINT}",
        ),
        // A directive that needs a run-time value keeps the whole template as written.
        (
            r#""%{ if NOMAD_ALLOC_INDEX == "0" }leader%{ endif } ${var.prefix}""#,
            r#"%{ if NOMAD_ALLOC_INDEX == "0" }leader%{ endif } ${var.prefix}"#,
        ),
        // A directive over known values is evaluated; run-time parts inside stay.
        (
            r#""%{ for p in ["a", "b"] }${p}:${NOMAD_PORT_http} %{ endfor }""#,
            "a:${NOMAD_PORT_http} b:${NOMAD_PORT_http} ",
        ),
        // A `for` binding named like a run-time root is an ordinary value.
        (
            r#"join(",", [for node in ["n1", "n2"] : "${node}"])"#,
            "n1,n2",
        ),
    ];
    for (expr, want) in cases {
        let got = eval_with(prelude, expr, &no_vars()).unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(got, json!(want), "{expr}");
    }
    // Lists and objects keep them too.
    assert_eq!(
        eval_with(
            prelude,
            r#"{ addr = NOMAD_ADDR_http, args = [attr.cpu.arch, "${var.prefix}"] }"#,
            &no_vars()
        )
        .unwrap(),
        json!({"addr": "${NOMAD_ADDR_http}", "args": ["${attr.cpu.arch}", "web"]})
    );
}

#[test]
fn heredocs_survive_byte_for_byte() {
    let src = r#"variable "service" {
  default = "redis"
}
job "j" {
  group "g" {
    task "t" {
      template {
        data = <<EOH
{{ range service "${var.service}" }}
server {{ .Address }}:{{ .Port }}   # spaces   kept
{{ end }}
dir=${NOMAD_TASK_DIR}/conf  secret=${NOMAD_SECRETS_DIR}
{{ with nomadVar "nomad/jobs" }}{{ .password }}{{ end }}
literal $${NOT_INTERPOLATED} and %%{ not a directive }
EOH
        destination = "local/app.conf"
      }
      template {
        data = <<-EOT
          line one ${NOMAD_ALLOC_INDEX}
            indented {{ key "x" }}
          EOT
        destination = "local/b"
      }
    }
  }
}
"#;
    let t = parse_ok(src);
    let task = &t.value["job"]["j"]["group"]["g"]["task"]["t"];
    assert_eq!(
        task["template"][0]["data"],
        json!(
            "{{ range service \"redis\" }}\nserver {{ .Address }}:{{ .Port }}   # spaces   kept\n{{ end }}\ndir=${NOMAD_TASK_DIR}/conf  secret=${NOMAD_SECRETS_DIR}\n{{ with nomadVar \"nomad/jobs\" }}{{ .password }}{{ end }}\nliteral ${NOT_INTERPOLATED} and %{ not a directive }\n"
        )
    );
    assert_eq!(task["template"][0]["destination"], json!("local/app.conf"));
    assert_eq!(
        task["template"][1]["data"],
        json!("line one ${NOMAD_ALLOC_INDEX}\n  indented {{ key \"x\" }}\n")
    );
    assert_eq!(pos_at(&t, "job.j.group.g.task.t.template[0].data"), "8:9");
    assert_eq!(pos_at(&t, "job.j.group.g.task.t.template[1]"), "18:7");
}

// ---------------------------------------------------------------------------------------------
// Whole job files

const REDIS: &str = r#"# There can only be a single job definition per file.
job "example" {
  # Run the job in the global region, which is the default.
  # region = "global"

  # Specify the datacenters within the region this job can run in.
  datacenters = ["dc1"]

  # Service type jobs optimize for long-lived services.
  type = "service"

  update {
    max_parallel      = 1
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = false
    canary            = 0
  }

  migrate {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "10s"
    healthy_deadline = "5m"
  }

  group "cache" {
    count = 1

    network {
      port "db" {
        to = 6379
      }
    }

    service {
      name     = "redis-cache"
      tags     = ["global", "cache"]
      port     = "db"
      provider = "nomad"

      check {
        name     = "alive"
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    restart {
      attempts = 2
      interval = "30m"
      delay    = "15s"
      mode     = "fail"
    }

    ephemeral_disk {
      size = 300
    }

    task "redis" {
      driver = "docker"

      config {
        image          = "redis:7"
        ports          = ["db"]
        auth_soft_fail = true
      }

      identity {
        env  = true
        file = true
      }

      resources {
        cpu    = 500 # 500 MHz
        memory = 256 # 256MB
      }
    }
  }
}
"#;

#[test]
fn nomad_job_init_example() {
    let t = parse_ok(REDIS);
    assert_eq!(
        t.value,
        json!({"job": {"example": {
            "datacenters": ["dc1"],
            "type": "service",
            "update": [{"max_parallel": 1, "min_healthy_time": "10s", "healthy_deadline": "3m", "progress_deadline": "10m", "auto_revert": false, "canary": 0}],
            "migrate": [{"max_parallel": 1, "health_check": "checks", "min_healthy_time": "10s", "healthy_deadline": "5m"}],
            "group": {"cache": {
                "count": 1,
                "network": [{"port": {"db": {"to": 6379}}}],
                "service": [{"name": "redis-cache", "tags": ["global", "cache"], "port": "db", "provider": "nomad",
                    "check": [{"name": "alive", "type": "tcp", "interval": "10s", "timeout": "2s"}]}],
                "restart": [{"attempts": 2, "interval": "30m", "delay": "15s", "mode": "fail"}],
                "ephemeral_disk": [{"size": 300}],
                "task": {"redis": {
                    "driver": "docker",
                    "config": [{"image": "redis:7", "ports": ["db"], "auth_soft_fail": true}],
                    "identity": [{"env": true, "file": true}],
                    "resources": [{"cpu": 500, "memory": 256}]
                }}
            }}
        }}})
    );
    assert_eq!(pos_at(&t, "job.example.group.cache.count"), "29:5");
    assert_eq!(
        pos_at(&t, "job.example.group.cache.task.redis.resources[0].memory"),
        "78:9"
    );
    assert_every_value_positioned(&t);
}

#[test]
fn older_syntax_comes_through_as_data() {
    let src = r#"job "legacy" {
  datacenters = ["dc1"]
  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }
  group "cache" {
    task "redis" {
      driver = "docker"
      config {
        image = "redis:7"
        port_map {
          db = 6379
        }
      }
      env {
        REDIS_PORT = "${NOMAD_PORT_db}"
      }
      resources {
        cpu    = 500
        memory = 256
        network {
          mbits = 10
          port "db" {}
          port "http" {
            static = 8080
          }
        }
      }
      service {
        name = "global-redis-check"
        tags = ["global", "cache"]
        port = "db"
        check {
          name     = "alive"
          type     = "tcp"
          interval = "10s"
          timeout  = "2s"
        }
      }
    }
  }
}
"#;
    let v = job(src);
    let task = &v["job"]["legacy"]["group"]["cache"]["task"]["redis"];
    assert_eq!(
        v["job"]["legacy"]["constraint"],
        json!([{"attribute": "${attr.kernel.name}", "value": "linux"}])
    );
    assert_eq!(
        task["config"],
        json!([{"image": "redis:7", "port_map": [{"db": 6379}]}])
    );
    assert_eq!(task["env"], json!([{"REDIS_PORT": "${NOMAD_PORT_db}"}]));
    assert_eq!(
        task["resources"],
        json!([{"cpu": 500, "memory": 256, "network": [{"mbits": 10, "port": {"db": {}, "http": {"static": 8080}}}]}])
    );
    assert_eq!(task["service"][0]["check"][0]["type"], json!("tcp"));
}

#[test]
fn dynamic_blocks_are_expanded() {
    let src = r#"variable "ports" {
  default = { http = 8080, admin = 9090 }
}
job "j" {
  group "g" {
    network {
      dynamic "port" {
        for_each = var.ports
        labels   = [port.key]
        content {
          static = port.value
        }
      }
    }
    dynamic "constraint" {
      for_each = ["a", "b"]
      iterator = c
      content {
        attribute = "${node.class}"
        value     = "${c.value}-${c.key}"
      }
    }
    dynamic "volume" {
      for_each = []
      content {}
    }
  }
}
"#;
    let t = parse_ok(src);
    let g = &t.value["job"]["j"]["group"]["g"];
    assert_eq!(
        g["network"],
        json!([{"port": {"http": {"static": 8080}, "admin": {"static": 9090}}}])
    );
    assert_eq!(
        g["constraint"],
        json!([{"attribute": "${node.class}", "value": "a-0"}, {"attribute": "${node.class}", "value": "b-1"}])
    );
    assert!(g.get("volume").is_none());
    assert_eq!(pos_at(&t, "job.j.group.g.network[0].port.admin"), "7:7");
    assert_eq!(
        pos_at(&t, "job.j.group.g.network[0].port.admin.static"),
        "11:11"
    );
    assert_eq!(pos_at(&t, "job.j.group.g.constraint[1].value"), "20:9");
    assert_every_value_positioned(&t);

    let cases = [
        (
            "dynamic \"port\" {\n    content {}\n  }",
            "2:3: a dynamic block needs for_each and a content block",
        ),
        (
            "dynamic \"port\" {\n    for_each = 3\n    content {}\n  }",
            "3:16: for_each must be a list or an object, found number 3",
        ),
        (
            "dynamic {\n    for_each = []\n    content {}\n  }",
            "2:3: a dynamic block needs one label",
        ),
        (
            "dynamic \"p\" {\n    for_each = [1, 1]\n    labels = [p.value]\n    content {}\n  }",
            "2:3: duplicate p \"1\"; first defined at 2:3",
        ),
        (
            "dynamic \"p\" {\n    for_each = [1]\n    content {\n      x = p.nope\n    }\n  }",
            "5:12: this object has no attribute \"nope\"",
        ),
    ];
    for (body, want) in cases {
        let got = one_problem(&fails(&format!("job \"j\" {{\n  {body}\n}}\n")));
        assert!(
            got.starts_with(want),
            "{body}\n{got:?} does not start with {want:?}"
        );
    }
    // In a configuration file, `dynamic` is just a block.
    assert_eq!(
        parse_config("dynamic \"x\" {}\n").unwrap().value,
        json!({"dynamic": {"x": {}}})
    );
}

// ---------------------------------------------------------------------------------------------
// Structural errors

#[test]
fn structural_errors_have_positions() {
    let cases = [
        (
            "job \"a\" {\n  group \"web\" {\n  }\n  group \"web\" {}\n}\n",
            "4:3: duplicate group \"web\"; first defined at 2:3",
        ),
        (
            "job \"a\" {\n  x \"p\" \"q\" {}\n  x \"p\" \"q\" {}\n}\n",
            "3:3: duplicate x \"p\" \"q\"; first defined at 2:3",
        ),
        (
            "job \"a\" {}\n\njob \"b\" {}\n",
            "3:1: a job file may hold only one job block; the first is at 1:1",
        ),
        (
            "variable \"x\" {\n  default = 1\n}\n",
            "1:1: no job block found",
        ),
        ("job {}\n", "1:1: a job block needs exactly one label"),
        (
            "job \"a\" \"b\" {}\n",
            "1:1: a job block needs exactly one label",
        ),
        (
            "job \"a\" {}\ngroup \"g\" {}\n",
            "2:1: unexpected block \"group\" at the top level",
        ),
        (
            "id = 1\njob \"a\" {}\n",
            "1:1: unexpected attribute \"id\" at the top level",
        ),
        (
            "job \"a\" {\n  meta {}\n  meta = {}\n}\n",
            "3:3: \"meta\" is defined both as an attribute and as a block (the block is at 2:3)",
        ),
        (
            "job \"a\" {\n  meta = {}\n  meta {}\n}\n",
            "3:3: \"meta\" is defined both as an attribute (at 2:3) and as a block",
        ),
        (
            "job \"a\" {\n  port \"a\" {}\n  port {}\n}\n",
            "3:3: every \"port\" block here must have the same number of labels",
        ),
        (
            "job \"a\" {\n  x = foo\n}\n",
            "2:7: unknown variable \"foo\"; did you mean var.foo?",
        ),
    ];
    for (src, want) in cases {
        let got = one_problem(&fails(src));
        assert!(
            got.starts_with(want),
            "{src}\n{got:?} does not start with {want:?}"
        );
    }
}

#[test]
fn syntax_errors_have_a_line() {
    let cases: &[(&str, u32)] = &[
        ("job \"a\" {\n  group \"g\" {\n    count = 1\n", 3),
        ("job \"a\" {\n  count = \n}\n", 2),
        ("job \"a\" {\n  count = 1\n  count = 2\n}\n", 3),
        ("job \"a\" {\n  x = \"unterminated\n}\n", 2),
        ("job \"a\" {\n  x = [1, 2\n}\n", 3),
    ];
    for (src, line) in cases {
        match fails(src) {
            SpecError::Syntax(p) => {
                assert_eq!(p.at.pos.map(|p| p.line), Some(*line), "{src}: {p}");
                assert!(p.message.starts_with("HCL syntax error"), "{p}");
            }
            other => panic!("{src}: expected a syntax error, got {other:?}"),
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let depth = 200;
    let src = format!(
        "job \"a\" {{\n{}{}}}\n",
        "b {\n".repeat(depth),
        "}\n".repeat(depth)
    );
    assert!(parse_jobspec(&src, &no_vars()).is_err());
    let src = format!(
        "job \"a\" {{\n  x = {}1{}\n}}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert!(parse_jobspec(&src, &no_vars()).is_err());
    let src = format!("job \"a\" {{\n  x = {}true\n}}\n", "!".repeat(depth));
    assert!(parse_jobspec(&src, &no_vars()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Fuzzing: nothing panics.

fn mutate(src: &[u8], edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = src.to_vec();
    for &(at, kind, byte) in edits {
        let at = if bytes.is_empty() {
            0
        } else {
            at % (bytes.len() + 1)
        };
        match kind % 4 {
            0 if at < bytes.len() => {
                bytes.remove(at);
            }
            1 => bytes.insert(at, byte),
            2 => bytes.truncate(at),
            _ => {
                // Insert a piece of HCL syntax, which reaches deeper than random bytes.
                const PIECES: &[&str] = &[
                    "{",
                    "}",
                    "\"",
                    "${",
                    "%{",
                    "[",
                    "]",
                    "(",
                    ")",
                    "=",
                    "\n",
                    "<<EOF\n",
                    "EOF\n",
                    "~}",
                    "...",
                    "var.",
                    "local.",
                    "for x in ",
                    " if ",
                    "? 1 : 2",
                    "#",
                    "/*",
                    "*/",
                    "\\",
                ];
                let piece = PIECES[usize::from(byte) % PIECES.len()].as_bytes();
                for (i, b) in piece.iter().enumerate() {
                    bytes.insert(at + i, *b);
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

const FUZZ_SEED: &str = r#"variable "n" {
  type = number
  default = 2
}
locals {
  name = "w-${var.n}"
  list = [for i in range(var.n) : "${local.name}-${i}"]
}
job "x" {
  group "g" {
    count = var.n * 2
    task "t" {
      env = { A = "${NOMAD_ALLOC_INDEX}", B = local.list[0] }
      template {
        data = <<EOH
{{ range service "db" }}${attr.kernel.name}{{ end }}
%{ for x in local.list }${x}%{ endfor }
EOH
      }
      config {
        args = concat(["-a"], split(",", "b,c"))
        port_map { db = 6379 }
      }
    }
  }
}
"#;

/// Random, mostly well-formed expressions: function calls with odd arguments, operators,
/// templates, `for` expressions, traversals.
fn arb_expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() {
            format!("{f:?}")
        } else {
            "0".into()
        }),
        prop::sample::select(vec![
            "0",
            "-1",
            "1",
            "2.5",
            "true",
            "false",
            "null",
            "\"\"",
            "\"a,b\"",
            "\"héllo\"",
            "[]",
            "{}",
            "var.n",
            "local.list",
            "local.name",
            "NOMAD_ALLOC_INDEX",
            "attr.kernel.name",
            "x",
            "i"
        ])
        .prop_map(String::from),
        "[a-z ${}%~\\\\]{0,8}".prop_map(|s| format!("{s:?}")),
    ];
    leaf.boxed().prop_recursive(4, 48, 4, |inner| {
        let names: Vec<&'static str> = FUNCTIONS.to_vec();
        prop_oneof![
            (
                prop::sample::select(names),
                prop::collection::vec(inner.clone(), 0..4),
                any::<bool>()
            )
                .prop_map(|(f, args, expand)| format!(
                    "{f}({}{})",
                    args.join(", "),
                    if expand && !args.is_empty() {
                        "..."
                    } else {
                        ""
                    }
                )),
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|xs| format!("[{}]", xs.join(", "))),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|xs| {
                let fields: Vec<String> = xs
                    .iter()
                    .enumerate()
                    .map(|(i, x)| format!("k{i} = {x}"))
                    .collect();
                format!("{{ {} }}", fields.join(", "))
            }),
            (
                inner.clone(),
                prop::sample::select(vec![
                    "+", "-", "*", "/", "%", "==", "!=", "<", ">=", "&&", "||"
                ]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
            (inner.clone(), inner.clone()).prop_map(|(c, v)| format!("[for i, x in {c} : {v}]")),
            (inner.clone(), inner.clone())
                .prop_map(|(c, v)| format!("{{for i, x in {c} : tostring(i) => {v}...}}")),
            (
                inner.clone(),
                prop::sample::select(vec!["[0]", "[1]", ".a", "[*].a", ".*", "[\"k0\"]", ".0"])
            )
                .prop_map(|(e, op)| format!("({e}){op}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!(
                "\"<${{{a}}}|%{{ if {b} }}y%{{ else ~}} n%{{ endif }}>\""
            )),
            (inner.clone(), inner)
                .prop_map(|(c, v)| format!("\"%{{ for x in {c} ~}}${{{v}}},%{{~ endfor }}\"")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_expressions_never_panic(expr in arb_expr()) {
        let prelude = "variable \"n\" {\n  default = 3\n}\nlocals {\n  name = \"w\"\n  list = [1, \"a\", [2]]\n}\n";
        let _ = eval_with(prelude, &expr, &no_vars());
    }

    #[test]
    fn line_index_agrees_with_pos_from_offset(src in "(\\PC{0,12}\r?\n?){0,6}", offset in 0usize..120) {
        prop_assert_eq!(Lines::new(&src).pos(offset), Pos::from_offset(&src, offset));
    }

    #[test]
    fn random_text_never_panics(src in "\\PC{0,200}") {
        let _ = parse_jobspec(&src, &no_vars());
        let _ = parse_config(&src);
    }

    #[test]
    fn hcl_like_text_never_panics(src in "[a-z_\"{}\\[\\]()=$%~<>!?:,.*+/\\-0-9 \n#]{0,300}") {
        let _ = parse_jobspec(&src, &no_vars());
        let _ = parse_config(&src);
    }

    #[test]
    fn mutated_jobspecs_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let src = mutate(FUZZ_SEED.as_bytes(), &edits);
        let vars = inputs(&[("v.hcl", "n = 3\n")], &[("n", "4")], &[]);
        let _ = parse_jobspec(&src, &vars);
        let _ = parse_config(&src);
    }

    #[test]
    fn mutated_variable_inputs_never_panic(raw in "\\PC{0,40}", edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..4)) {
        let file = mutate(b"n = 3\n", &edits);
        let vars = inputs(&[("v.hcl", &file), ("v.json", &raw)], &[("n", &raw)], &[("n", &raw)]);
        let _ = parse_jobspec(FUZZ_SEED, &vars);
    }
}

#[test]
fn the_fuzz_seed_is_valid() {
    let t = parse_ok(FUZZ_SEED);
    let g = &t.value["job"]["x"]["group"]["g"];
    assert_eq!(g["count"], json!(4));
    assert_eq!(
        g["task"]["t"]["env"],
        json!({"A": "${NOMAD_ALLOC_INDEX}", "B": "w-2-0"})
    );
    assert_eq!(
        g["task"]["t"]["template"][0]["data"],
        json!("{{ range service \"db\" }}${attr.kernel.name}{{ end }}\nw-2-0w-2-1\n")
    );
    assert_every_value_positioned(&t);
}
