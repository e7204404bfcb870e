//! HCL front-end: reads a Nomad job file (or any HCL configuration file) into a [`Tree`] in the
//! document's own shape, the same shape HCL's JSON syntax would have:
//!
//! - an attribute `count = 3` becomes `"count": 3`;
//! - a labelled block `group "web" { … }` becomes `"group": {"web": {…}}` (two labels nest two
//!   levels; repeated blocks of one type merge; a repeated label is an error);
//! - an unlabelled block `constraint { … }` becomes `"constraint": [{…}]`, an array with one
//!   element per occurrence even when there is only one.
//!
//! A job file is `{"job": {"<id>": {…}}}`; its `variable`, `variables` and `locals` blocks are
//! consumed: `var.*` and `local.*` are evaluated, with a library of functions (see
//! [`FUNCTIONS`]), and `dynamic "<type>" { for_each = …  content { … } }` blocks are expanded.
//!
//! Interpolations of values only known when the task runs (`${NOMAD_*}`, `${attr.*}`,
//! `${node.*}`, `${meta.*}`, `${env[…]}`, `${device.*}`, and environment-style names such as
//! `${CSI_ENDPOINT}`) are kept exactly as written, and a bare reference such as
//! `value = attr.kernel.name` becomes the string `"${attr.kernel.name}"`. A template whose
//! `%{ if }` condition or `%{ for }` collection needs such a value is kept as written. Any other
//! unknown name is an error that suggests `var.<name>`.
//!
//! Every emitted value and block has a position in the [`SourceMap`], so that a later typed
//! decoder can point at the line and column of a wrong value. Errors name a line and column:
//! syntax errors come back as [`SpecError::Syntax`], everything else as [`SpecError::Invalid`]
//! listing every problem found. No input makes these functions panic: nesting is limited by the
//! parser, and evaluation has a step and size budget.

mod eval;
mod funcs;
mod value;
mod vars;

#[cfg(test)]
mod tests;

use self::eval::{Budget, Eval, EvalError, EvalResult, Names, Scope};
use super::error::{Problem, SpecError};
use super::tree::{Pos, Seg, SourceMap, Tree};
use hcl_edit::Span;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{Attribute, Block, Body, Structure};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::ops::Range;

/// The functions a job file may call. `file` is not among them.
pub const FUNCTIONS: &[&str] = funcs::NAMES;

/// Blocks nested deeper than this are refused.
const MAX_DEPTH: usize = 128;

/// A variable file given with `-var-file`: HCL `name = value` lines, or a JSON object when the
/// name ends in `.json`.
#[derive(Debug, Clone, Default)]
pub struct VarFile {
    pub name: String,
    pub content: String,
}

/// Inputs for `variable` blocks, in Nomad's precedence order (later wins): defaults < var files <
/// environment `NOMAD_VAR_<name>` < `-var` flags.
#[derive(Debug, Clone, Default)]
pub struct VariableInputs {
    pub files: Vec<VarFile>,
    /// `NOMAD_VAR_<name>` variables, with the prefix already stripped: `(name, value)`.
    pub env: Vec<(String, String)>,
    /// `-var name=value` flags, split at the first `=`: `(name, raw value)`.
    pub flags: Vec<(String, String)>,
}

/// Reads a Nomad job file: exactly one `job "<id>" { … }` block, plus any number of `variable`,
/// `variables` and `locals` blocks. The result is `{"job": {"<id>": {…}}}`.
pub fn parse_jobspec(src: &str, vars: &VariableInputs) -> Result<Tree, SpecError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let body = parse(src)?;

    let mut problems = Vec::new();
    let mut var_blocks = Vec::new();
    let mut local_blocks = Vec::new();
    let mut jobs: Vec<&Block> = Vec::new();
    for s in body.iter() {
        match s {
            Structure::Block(b) => match b.ident.as_str() {
                "variable" | "variables" => var_blocks.push(b),
                "locals" => local_blocks.push(b),
                "job" => jobs.push(b),
                other => problems.push(problem_at(
                    src,
                    b.span(),
                    format!(
                        "unexpected block \"{other}\" at the top level; a job file holds one \
                         job block, plus variable(s) and locals blocks"
                    ),
                )),
            },
            Structure::Attribute(a) => problems.push(problem_at(
                src,
                a.span(),
                format!(
                    "unexpected attribute \"{}\" at the top level; a job file holds one \
                     job block, plus variable(s) and locals blocks",
                    a.key.as_str()
                ),
            )),
        }
    }
    let job = match jobs.as_slice() {
        [] => {
            problems.push(Problem::at_pos(
                Some(Pos { line: 1, column: 1 }),
                "no job block found; a job file needs one job \"<id>\" { … } block",
            ));
            None
        }
        [job, rest @ ..] => {
            let first = Pos::from_offset(src, job.span().map_or(0, |s| s.start));
            for other in rest {
                problems.push(problem_at(
                    src,
                    other.span(),
                    format!("a job file may hold only one job block; the first is at {first}"),
                ));
            }
            Some(*job)
        }
    };
    let id = match job.map(|j| (j, j.labels.as_slice())) {
        Some((_, [label])) => Some(label.as_str().to_string()),
        Some((j, _)) => {
            problems.push(problem_at(
                src,
                j.span(),
                "a job block needs exactly one label, the job's ID: job \"example\" { … }",
            ));
            None
        }
        None => None,
    };
    let (Some(job), Some(id), true) = (job, id, problems.is_empty()) else {
        return Err(SpecError::Invalid(problems));
    };

    let budget = Budget::default();
    let var_values = vars::resolve_variables(src, &var_blocks, vars, &budget)?;
    let locals = vars::resolve_locals(src, &local_blocks, &var_values, &budget)?;
    let ev = Eval::new(
        src,
        Names::Known(&var_values),
        Names::Known(&locals),
        &budget,
    );
    let mut w = Walker::new(src, &ev, true);
    let pos = w.pos(job.span());
    let mut path = vec![Seg::Key("job".into())];
    w.map.insert(path.clone(), pos);
    path.push(Seg::Key(id.clone()));
    w.map.insert(path.clone(), pos);
    let job_value = w.body(&job.body, &mut path, 1, &Scope::Root);
    if !w.problems.is_empty() {
        return Err(SpecError::Invalid(w.problems));
    }
    let mut jobs = Map::new();
    jobs.insert(id, job_value);
    let mut root = Map::new();
    root.insert("job".into(), Value::Object(jobs));
    Ok(Tree {
        value: Value::Object(root),
        source_map: w.map,
    })
}

/// Reads a generic HCL file (an agent configuration, for one) with the same block mapping, but
/// without variables, locals or the rules of job files.
pub fn parse_config(src: &str) -> Result<Tree, SpecError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let body = parse(src)?;
    let budget = Budget::default();
    let ev = Eval::new(
        src,
        Names::Unavailable("in this file"),
        Names::Unavailable("in this file"),
        &budget,
    );
    let mut w = Walker::new(src, &ev, false);
    let value = w.body(&body, &mut Vec::new(), 0, &Scope::Root);
    if !w.problems.is_empty() {
        return Err(SpecError::Invalid(w.problems));
    }
    Ok(Tree {
        value,
        source_map: w.map,
    })
}

fn parse(src: &str) -> Result<Body, SpecError> {
    hcl_edit::parser::parse_body(src).map_err(|e| syntax_error(&e))
}

/// A syntax error from hcl-edit, with its line and column.
fn syntax_error(e: &hcl_edit::parser::Error) -> SpecError {
    let loc = e.location();
    let pos = Pos {
        line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
        column: u32::try_from(loc.column()).unwrap_or(u32::MAX),
    };
    SpecError::syntax(Some(pos), format!("HCL syntax error: {}", e.message()))
}

/// A problem at the start of a byte span of `src`.
fn problem_at(src: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Problem {
    Problem::at_pos(span.map(|s| Pos::from_offset(src, s.start)), message)
}

/// Turns byte offsets into lines and columns without rescanning the text each time.
#[derive(Debug)]
struct Lines<'a> {
    src: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(src: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { src, starts }
    }

    /// Same result as [`Pos::from_offset`].
    fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.src.len());
        let line = self.starts.partition_point(|s| *s <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let column = self
            .src
            .get(start..)
            .unwrap_or("")
            .char_indices()
            .take_while(|(i, _)| start + i < offset)
            .count()
            + 1;
        Pos {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }
}

/// What a key of a body was first defined as.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Attribute(Pos),
    Block { labels: usize, pos: Pos },
}

/// The object a body is being turned into, and what its keys were defined as.
#[derive(Debug, Default)]
struct Out {
    map: Map<String, Value>,
    origins: HashMap<String, Origin>,
    /// The position of each block type plus label prefix seen so far.
    labels: HashMap<Vec<String>, Pos>,
}

/// A block to emit: one written in the file, or one made by a `dynamic` block.
struct BlockRef<'b> {
    ident: &'b str,
    labels: Vec<String>,
    body: &'b Body,
    span: Option<Range<usize>>,
}

/// Walks a body into a JSON object, recording positions and collecting problems.
struct Walker<'a> {
    lines: Lines<'a>,
    ev: &'a Eval<'a>,
    /// Whether `dynamic "x" { … }` blocks are expanded (job files) or plain data.
    dynamic: bool,
    map: SourceMap,
    problems: Vec<Problem>,
}

impl<'a> Walker<'a> {
    fn new(src: &'a str, ev: &'a Eval<'a>, dynamic: bool) -> Self {
        Walker {
            lines: Lines::new(src),
            ev,
            dynamic,
            map: SourceMap::default(),
            problems: Vec::new(),
        }
    }

    fn pos(&self, span: Option<Range<usize>>) -> Pos {
        self.lines.pos(span.map_or(0, |s| s.start))
    }

    fn problem(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let pos = span.map(|s| self.lines.pos(s.start));
        self.problems.push(Problem::at_pos(pos, message));
    }

    fn eval_problem(&mut self, e: EvalError) {
        self.problem(e.span, e.message);
    }

    fn body(&mut self, body: &Body, path: &mut Vec<Seg>, depth: usize, scope: &Scope<'_>) -> Value {
        let mut out = Out::default();
        if depth > MAX_DEPTH {
            self.problem(
                body.span(),
                format!("blocks are nested more than {MAX_DEPTH} levels deep"),
            );
            return Value::Object(out.map);
        }
        for s in body.iter() {
            match s {
                Structure::Attribute(a) => self.attribute(a, &mut out, path, scope),
                Structure::Block(b) if self.dynamic && b.ident.as_str() == "dynamic" => {
                    self.dynamic_block(b, &mut out, path, depth, scope);
                }
                Structure::Block(b) => {
                    let block = BlockRef {
                        ident: b.ident.as_str(),
                        labels: b.labels.iter().map(|l| l.as_str().to_string()).collect(),
                        body: &b.body,
                        span: b.span(),
                    };
                    self.block(&block, &mut out, path, depth, scope);
                }
            }
        }
        Value::Object(out.map)
    }

    fn attribute(&mut self, a: &Attribute, out: &mut Out, path: &mut Vec<Seg>, scope: &Scope<'_>) {
        let key = a.key.as_str();
        let pos = self.pos(a.span());
        match out.origins.get(key) {
            Some(Origin::Attribute(first)) => {
                return self.problem(
                    a.span(),
                    format!("attribute \"{key}\" is defined twice; first defined at {first}"),
                );
            }
            Some(Origin::Block { pos: first, .. }) => {
                return self.problem(
                    a.span(),
                    format!(
                        "\"{key}\" is defined both as an attribute and as a block \
                         (the block is at {first})"
                    ),
                );
            }
            None => {
                out.origins.insert(key.to_string(), Origin::Attribute(pos));
            }
        }
        path.push(Seg::Key(key.to_string()));
        match self.emit(&a.value, path, pos, scope) {
            Ok(v) => {
                out.map.insert(key.to_string(), v);
            }
            Err(e) => self.eval_problem(e),
        }
        path.pop();
    }

    fn block(
        &mut self,
        b: &BlockRef<'_>,
        out: &mut Out,
        path: &mut Vec<Seg>,
        depth: usize,
        scope: &Scope<'_>,
    ) {
        let ident = b.ident;
        let pos = self.pos(b.span.clone());
        let labels = &b.labels;
        match out.origins.get(ident) {
            Some(Origin::Attribute(first)) => {
                return self.problem(
                    b.span.clone(),
                    format!(
                        "\"{ident}\" is defined both as an attribute (at {first}) and as a block"
                    ),
                );
            }
            Some(Origin::Block {
                labels: n,
                pos: first,
            }) if *n != labels.len() => {
                let (n, m) = (*n, labels.len());
                return self.problem(
                    b.span.clone(),
                    format!(
                        "every \"{ident}\" block here must have the same number of labels: \
                         the one at {first} has {n}, this one has {m}"
                    ),
                );
            }
            Some(_) => {}
            None => {
                out.origins.insert(
                    ident.to_string(),
                    Origin::Block {
                        labels: labels.len(),
                        pos,
                    },
                );
                let mut p = path.clone();
                p.push(Seg::Key(ident.to_string()));
                self.map.insert(p, pos);
            }
        }

        let Some((last, parents)) = labels.split_last() else {
            let index = match out.map.get(ident) {
                Some(Value::Array(items)) => items.len(),
                _ => 0,
            };
            path.push(Seg::Key(ident.to_string()));
            path.push(Seg::Index(index));
            self.map.insert(path.clone(), pos);
            let v = self.body(b.body, path, depth + 1, scope);
            path.pop();
            path.pop();
            match out
                .map
                .entry(ident.to_string())
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(items) => items.push(v),
                _ => self.problem(
                    b.span.clone(),
                    format!("\"{ident}\" blocks must all have labels or none"),
                ),
            }
            return;
        };

        let mut key = vec![ident.to_string()];
        key.extend(labels.iter().cloned());
        if let Some(first) = out.labels.get(&key) {
            let quoted: Vec<String> = labels.iter().map(|l| format!("{l:?}")).collect();
            return self.problem(
                b.span.clone(),
                format!(
                    "duplicate {ident} {}; first defined at {first}",
                    quoted.join(" ")
                ),
            );
        }
        // Record the position of each label level the first time it appears.
        path.push(Seg::Key(ident.to_string()));
        let base = path.len();
        for (n, label) in labels.iter().enumerate() {
            path.push(Seg::Key(label.clone()));
            let prefix: Vec<String> = key.iter().take(n + 2).cloned().collect();
            if let std::collections::hash_map::Entry::Vacant(e) = out.labels.entry(prefix) {
                e.insert(pos);
                self.map.insert(path.clone(), pos);
            }
        }
        let v = self.body(b.body, path, depth + 1, scope);
        path.truncate(base - 1);

        let mut cur = out
            .map
            .entry(ident.to_string())
            .or_insert_with(value::object);
        for l in parents {
            cur = match cur {
                Value::Object(m) => m.entry(l.clone()).or_insert_with(value::object),
                _ => {
                    return self.problem(
                        b.span.clone(),
                        format!("\"{ident}\" blocks must all have the same number of labels"),
                    );
                }
            };
        }
        match cur {
            Value::Object(m) => {
                m.insert(last.clone(), v);
            }
            _ => self.problem(
                b.span.clone(),
                format!("\"{ident}\" blocks must all have labels or none"),
            ),
        }
    }

    /// Expands `dynamic "<type>" { for_each = …  iterator = …  labels = […]  content {…} }`
    /// into one `<type>` block per element, as Nomad does.
    fn dynamic_block(
        &mut self,
        b: &Block,
        out: &mut Out,
        path: &mut Vec<Seg>,
        depth: usize,
        scope: &Scope<'_>,
    ) {
        let [label] = b.labels.as_slice() else {
            return self.problem(
                b.span(),
                "a dynamic block needs one label, the type of the blocks it makes: \
                 dynamic \"port\" { … }",
            );
        };
        let target = label.as_str();
        let mut for_each = None;
        let mut iterator = target;
        let mut labels = None;
        let mut content: Option<&Block> = None;
        for s in b.body.iter() {
            match s {
                Structure::Attribute(a) => match (a.key.as_str(), &a.value) {
                    ("for_each", e) => for_each = Some(e),
                    ("labels", e) => labels = Some(e),
                    ("iterator", Expression::Variable(v)) => iterator = v.as_str(),
                    ("iterator", _) => {
                        return self
                            .problem(a.span(), "iterator must be a bare name, e.g. iterator = p");
                    }
                    (other, _) => {
                        return self.problem(
                            a.span(),
                            format!(
                                "unsupported attribute \"{other}\" in a dynamic block; \
                                 it takes for_each, iterator, labels and a content block"
                            ),
                        );
                    }
                },
                Structure::Block(c) if c.ident.as_str() == "content" && c.labels.is_empty() => {
                    if content.is_some() {
                        return self.problem(c.span(), "a dynamic block takes one content block");
                    }
                    content = Some(c);
                }
                Structure::Block(other) => {
                    return self.problem(
                        other.span(),
                        format!(
                            "unsupported block \"{}\" in a dynamic block; \
                             it takes one content block",
                            other.ident.as_str()
                        ),
                    );
                }
            }
        }
        let (Some(for_each), Some(content)) = (for_each, content) else {
            return self.problem(
                b.span(),
                "a dynamic block needs for_each and a content block",
            );
        };
        let items = match self.ev.expr(for_each, scope) {
            Ok(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Value::from(i), v))
                .collect::<Vec<_>>(),
            Ok(Value::Object(m)) => m.into_iter().map(|(k, v)| (Value::String(k), v)).collect(),
            Ok(other) => {
                return self.problem(
                    for_each.span(),
                    format!(
                        "for_each must be a list or an object, found {}",
                        value::describe(&other)
                    ),
                );
            }
            Err(e) => return self.eval_problem(e),
        };
        for (key, item) in items {
            let mut it = Map::new();
            it.insert("key".into(), key);
            it.insert("value".into(), item);
            let it = Value::Object(it);
            let inner = Scope::Bind {
                parent: scope,
                name: iterator,
                value: &it,
            };
            let labels = match labels {
                None => Vec::new(),
                Some(e) => match self.ev.expr(e, &inner) {
                    Ok(Value::Array(ls)) => {
                        match ls.iter().map(value::to_str).collect::<Result<Vec<_>, _>>() {
                            Ok(ls) => ls,
                            Err(m) => return self.problem(e.span(), format!("invalid label: {m}")),
                        }
                    }
                    Ok(other) => {
                        return self.problem(
                            e.span(),
                            format!(
                                "labels must be a list of strings, found {}",
                                value::describe(&other)
                            ),
                        );
                    }
                    Err(err) => return self.eval_problem(err),
                },
            };
            let block = BlockRef {
                ident: target,
                labels,
                body: &content.body,
                span: b.span(),
            };
            self.block(&block, out, path, depth, &inner);
        }
    }

    /// Evaluates an attribute value, recording the position of every value inside it: literal
    /// list elements and object entries at their own position, computed values at the position
    /// of the expression that computed them.
    fn emit(
        &mut self,
        e: &Expression,
        path: &mut Vec<Seg>,
        pos: Pos,
        scope: &Scope<'_>,
    ) -> EvalResult<Value> {
        self.map.insert(path.clone(), pos);
        match e {
            Expression::Array(a) => {
                let mut items = Vec::new();
                for (i, x) in a.iter().enumerate() {
                    let p = x.span().map_or(pos, |s| self.lines.pos(s.start));
                    path.push(Seg::Index(i));
                    let r = self.emit(x, path, p, scope);
                    path.pop();
                    items.push(r?);
                }
                Ok(Value::Array(items))
            }
            Expression::Object(o) => {
                let mut map = Map::new();
                for (k, v) in o.iter() {
                    let key = self.ev.object_key(k, scope)?;
                    if map.contains_key(&key) {
                        return Err(EvalError::new(k.span(), format!("duplicate key \"{key}\"")));
                    }
                    let p = k
                        .span()
                        .or_else(|| v.expr().span())
                        .map_or(pos, |s| self.lines.pos(s.start));
                    path.push(Seg::Key(key.clone()));
                    let r = self.emit(v.expr(), path, p, scope);
                    path.pop();
                    map.insert(key, r?);
                }
                Ok(Value::Object(map))
            }
            Expression::Parenthesis(p) => self.emit(p.inner(), path, pos, scope),
            Expression::Conditional(c) => {
                let b = self.ev.cond(&c.cond_expr, scope)?;
                self.emit(
                    if b { &c.true_expr } else { &c.false_expr },
                    path,
                    pos,
                    scope,
                )
            }
            _ => {
                let v = self.ev.value(e, scope)?;
                self.fill(path, &v, pos);
                Ok(v)
            }
        }
    }

    /// Gives every value inside a computed value the position of the expression.
    fn fill(&mut self, path: &mut Vec<Seg>, v: &Value, pos: Pos) {
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    self.map.insert(path.clone(), pos);
                    self.fill(path, item, pos);
                    path.pop();
                }
            }
            Value::Object(m) => {
                for (k, item) in m {
                    path.push(Seg::Key(k.clone()));
                    self.map.insert(path.clone(), pos);
                    self.fill(path, item, pos);
                    path.pop();
                }
            }
            _ => {}
        }
    }
}
