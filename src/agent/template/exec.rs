//! Executes a parsed template: Go `text/template` semantics for values, truth, variables,
//! fields, pipelines and control structures.

use super::funcs;
use super::parse::{Arg, Cmd, Control, Node, Pipe, SyntaxError};
use std::collections::BTreeMap;

/// A template value (Go's `interface{}` as the functions Nomad templates use produce it).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    /// A `map[string]interface{}`: a missing key reads as no value.
    Map(BTreeMap<String, Value>),
    /// A Go struct pointer (`*NomadService`): fields in order; an unknown field is an error.
    Object(Object),
}

/// A struct value.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub type_name: &'static str,
    pub fields: Vec<(&'static str, Value)>,
}

impl Value {
    /// Go's name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "<nil>",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float64",
            Value::Str(_) => "string",
            Value::List(_) => "[]interface {}",
            Value::Map(_) => "map[string]interface {}",
            Value::Object(o) => o.type_name,
        }
    }

    /// Go's truth: false, 0, "", nil and empty collections are false.
    pub fn is_true(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
            Value::Object(_) => true,
        }
    }

    /// The value as `%v` prints it.
    pub fn go_string(&self) -> String {
        funcs::format_value(self)
    }
}

/// What a template can look up while it runs.
pub trait Lookup {
    /// A task environment variable (`env "NAME"`); `None` when unset.
    fn env(&self, name: &str) -> Option<String>;
    /// `nomadService "query"`: the instances, as `*NomadService` objects.
    fn nomad_service(&self, query: &str) -> Result<Vec<Value>, String>;
}

/// Options for one execution.
pub struct Options<'a> {
    pub lookup: &'a dyn Lookup,
    /// `error_on_missing_key`: a missing map key is an error instead of `<no value>`.
    pub err_missing_key: bool,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("err_missing_key", &self.err_missing_key)
            .finish_non_exhaustive()
    }
}

/// The most a template may write.
pub const MAX_OUTPUT: usize = 16 << 20;
/// The most nodes and commands a template may evaluate.
const MAX_STEPS: u64 = 10_000_000;

enum Flow {
    Normal,
    Break,
    Continue,
}

type R<T> = Result<T, SyntaxError>;

fn fail<T>(pos: usize, msg: impl Into<String>) -> R<T> {
    Err(SyntaxError {
        pos,
        msg: msg.into(),
    })
}

/// Runs `nodes` with no data (Nomad templates have none) and returns the text.
pub fn execute(nodes: &[Node], opts: &Options<'_>) -> R<String> {
    let mut x = Exec {
        opts,
        out: String::new(),
        vars: vec![("$".to_owned(), Value::Nil)],
        steps: 0,
    };
    x.walk(&Value::Nil, nodes)?;
    Ok(x.out)
}

struct Exec<'a> {
    opts: &'a Options<'a>,
    out: String,
    vars: Vec<(String, Value)>,
    steps: u64,
}

impl Exec<'_> {
    fn step(&mut self, pos: usize) -> R<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return fail(pos, "template takes too many steps to render");
        }
        Ok(())
    }

    fn write(&mut self, s: &str, pos: usize) -> R<()> {
        if self.out.len() + s.len() > MAX_OUTPUT {
            return fail(
                pos,
                format!("rendered output exceeds {} MiB", MAX_OUTPUT >> 20),
            );
        }
        self.out.push_str(s);
        Ok(())
    }

    fn walk(&mut self, dot: &Value, nodes: &[Node]) -> R<Flow> {
        for node in nodes {
            match node {
                Node::Text(s) => self.write(s, 0)?,
                Node::Action(pipe) => {
                    self.step(pipe.pos)?;
                    let v = self.pipe_value(dot, pipe)?;
                    if pipe.decl.is_empty() {
                        let s = match &v {
                            Value::Nil => "<no value>".to_owned(),
                            v => v.go_string(),
                        };
                        self.write(&s, pipe.pos)?;
                    } else {
                        self.declare(pipe, v);
                    }
                }
                Node::If(c) | Node::With(c) => {
                    self.step(c.pipe.pos)?;
                    let mark = self.vars.len();
                    let v = self.pipe_value(dot, &c.pipe)?;
                    self.declare(&c.pipe, v.clone());
                    let flow = if v.is_true() {
                        let inner = if matches!(node, Node::With(_)) {
                            &v
                        } else {
                            dot
                        };
                        self.walk(inner, &c.list)?
                    } else {
                        self.walk(dot, &c.else_list)?
                    };
                    self.vars.truncate(mark);
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::Range(c) => {
                    self.step(c.pipe.pos)?;
                    self.range(dot, c)?;
                }
                Node::Break(_) => return Ok(Flow::Break),
                Node::Continue(_) => return Ok(Flow::Continue),
            }
        }
        Ok(Flow::Normal)
    }

    fn declare(&mut self, pipe: &Pipe, v: Value) {
        if pipe.decl.is_empty() {
            return;
        }
        if pipe.assign {
            if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| *n == pipe.decl[0]) {
                slot.1 = v;
            }
        } else {
            self.vars.push((pipe.decl[0].clone(), v));
        }
    }

    fn range(&mut self, dot: &Value, c: &Control) -> R<()> {
        let v = self.pipe_value(dot, &c.pipe)?;
        let items: Vec<(Value, Value)> = match v {
            Value::Nil => Vec::new(),
            Value::List(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Value::Int(i64::try_from(i).unwrap_or(i64::MAX)), v))
                .collect(),
            Value::Map(m) => m.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
            other => {
                return fail(
                    c.pipe.pos,
                    format!("range can't iterate over {}", other.go_string()),
                );
            }
        };
        if items.is_empty() {
            let mark = self.vars.len();
            self.walk(dot, &c.else_list)?;
            self.vars.truncate(mark);
            return Ok(());
        }
        for (key, item) in items {
            self.step(c.pipe.pos)?;
            let mark = self.vars.len();
            match c.pipe.decl.as_slice() {
                [] => {}
                [one] => self.vars.push((one.clone(), item.clone())),
                [k, v, ..] => {
                    self.vars.push((k.clone(), key));
                    self.vars.push((v.clone(), item.clone()));
                }
            }
            let flow = self.walk(&item, &c.list)?;
            self.vars.truncate(mark);
            if matches!(flow, Flow::Break) {
                break;
            }
        }
        Ok(())
    }

    /// The value of a pipeline (its declarations are the caller's business).
    fn pipe_value(&mut self, dot: &Value, pipe: &Pipe) -> R<Value> {
        let mut last: Option<Value> = None;
        for cmd in &pipe.cmds {
            last = Some(self.command(dot, cmd, last)?);
        }
        Ok(last.unwrap_or(Value::Nil))
    }

    fn command(&mut self, dot: &Value, cmd: &Cmd, piped: Option<Value>) -> R<Value> {
        self.step(cmd.pos)?;
        let Some(first) = cmd.args.first() else {
            return fail(cmd.pos, "empty command");
        };
        match first {
            Arg::Func(name, pos) => self.call(dot, name, &cmd.args[1..], piped, *pos),
            other => {
                if cmd.args.len() > 1 || piped.is_some() {
                    return fail(
                        other.pos(),
                        format!(
                            "can't give argument to non-function {}",
                            describe_arg(other)
                        ),
                    );
                }
                self.arg(dot, other)
            }
        }
    }

    fn arg(&mut self, dot: &Value, arg: &Arg) -> R<Value> {
        match arg {
            Arg::Func(name, pos) => self.call(dot, name, &[], None, *pos),
            Arg::Dot(_) => Ok(dot.clone()),
            Arg::Fields(chain, pos) => self.fields(dot.clone(), chain, *pos),
            Arg::Var(name, chain, pos) => {
                let Some(v) = self
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                else {
                    return fail(*pos, format!("undefined variable {name:?}"));
                };
                self.fields(v, chain, *pos)
            }
            Arg::Const(v, _) => Ok(v.clone()),
            Arg::Pipe(pipe, chain, pos) => {
                let v = self.pipe_value(dot, pipe)?;
                self.declare(pipe, v.clone());
                self.fields(v, chain, *pos)
            }
        }
    }

    fn fields(&self, mut v: Value, chain: &[String], pos: usize) -> R<Value> {
        for name in chain {
            v = match v {
                Value::Map(mut m) => match m.remove(name) {
                    Some(v) => v,
                    None if self.opts.err_missing_key => {
                        return fail(pos, format!("map has no entry for key {name:?}"));
                    }
                    None => Value::Nil,
                },
                Value::Object(o) => match o.fields.into_iter().find(|(n, _)| n == name) {
                    Some((_, v)) => v,
                    None => {
                        return fail(
                            pos,
                            format!("can't evaluate field {name} in type {}", o.type_name),
                        );
                    }
                },
                Value::Nil => return fail(pos, format!("nil data; no entry for key {name:?}")),
                other => {
                    return fail(
                        pos,
                        format!("can't evaluate field {name} in type {}", other.type_name()),
                    );
                }
            };
        }
        Ok(v)
    }

    fn call(
        &mut self,
        dot: &Value,
        name: &str,
        args: &[Arg],
        piped: Option<Value>,
        pos: usize,
    ) -> R<Value> {
        // `and` and `or` evaluate their arguments only as far as they need to.
        if name == "and" || name == "or" {
            let total = args.len() + usize::from(piped.is_some());
            if total == 0 {
                return fail(
                    pos,
                    format!("wrong number of args for {name}: want at least 1 got 0"),
                );
            }
            let mut last = Value::Nil;
            for a in args {
                last = self.arg(dot, a)?;
                if last.is_true() != (name == "and") {
                    return Ok(last);
                }
            }
            if let Some(p) = piped {
                last = p;
            }
            return Ok(last);
        }
        let mut vals = Vec::with_capacity(args.len() + 1);
        for a in args {
            vals.push(self.arg(dot, a)?);
        }
        if let Some(p) = piped {
            vals.push(p);
        }
        funcs::call(name, vals, self.opts).map_err(|msg| SyntaxError { pos, msg })
    }
}

fn describe_arg(a: &Arg) -> String {
    match a {
        Arg::Func(n, _) => n.clone(),
        Arg::Dot(_) => ".".into(),
        Arg::Fields(c, _) => format!(".{}", c.join(".")),
        Arg::Var(n, c, _) if c.is_empty() => n.clone(),
        Arg::Var(n, c, _) => format!("{n}.{}", c.join(".")),
        Arg::Const(v, _) => v.go_string(),
        Arg::Pipe(..) => "(pipeline)".into(),
    }
}
