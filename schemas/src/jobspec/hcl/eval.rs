//! Evaluates expressions and templates straight from hcl-edit's syntax tree, so that every error
//! keeps the byte span of the expression it is about, and so that run-time interpolations
//! (`${NOMAD_ALLOC_INDEX}`, `${attr.kernel.name}`, `${meta.rack}`, `${env["HOME"]}`) can be kept
//! exactly as written while `${var.x}` and `${local.y}` next to them are evaluated.

use super::funcs::{self, FnError};
use super::value::{
    MAX_STRING, Num, equal, float_value, from_hcl_number, num_of, to_bool, to_key, to_str,
    type_name,
};
use hcl_edit::Span;
use hcl_edit::expr::{
    BinaryOp, BinaryOperator, Expression, ForExpr, FuncCall, Object, ObjectKey, Traversal,
    TraversalOperator, UnaryOp, UnaryOperator,
};
use hcl_edit::template::{Directive, Element, ForDirective, IfDirective, Template};
use serde_json::{Map, Value};
use std::cell::Cell;
use std::ops::Range;

/// How many evaluation steps one document may take; protects against `for` expressions over
/// `range()` nested into something that would run for hours.
const STEP_BUDGET: u64 = 5_000_000;

/// An evaluation error: a message and the byte span of the source it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EvalError {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl EvalError {
    pub(super) fn new(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        EvalError {
            span,
            message: message.into(),
        }
    }
}

pub(super) type EvalResult<T> = Result<T, EvalError>;

/// Whether `name` is the root of a value that only the client knows when the task runs:
/// `NOMAD_*`, `attr`, `node`, `meta`, `env`, `device` (device constraints), and names written
/// like environment variables (`CSI_ENDPOINT`), which Nomad interpolates from the task's
/// environment.
pub(super) fn is_runtime_root(name: &str) -> bool {
    name.starts_with("NOMAD_")
        || matches!(name, "attr" | "node" | "meta" | "env" | "device")
        || is_env_style(name)
}

/// `NOMAD_ALLOC_INDEX`, `CSI_ENDPOINT`, `X`: an upper-case letter, then upper-case letters,
/// digits and underscores.
fn is_env_style(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// What `var` or `local` resolves to where an expression is evaluated.
#[derive(Debug, Clone, Copy)]
pub(super) enum Names<'a> {
    /// Not available here; the text completes "… cannot be used …".
    Unavailable(&'static str),
    Known(&'a Map<String, Value>),
}

/// Names bound by `for` expressions and `%{ for }` directives, innermost last.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope<'s> {
    Root,
    Bind {
        parent: &'s Scope<'s>,
        name: &'s str,
        value: &'s Value,
    },
}

impl<'s> Scope<'s> {
    fn get(&self, name: &str) -> Option<&'s Value> {
        let mut cur = *self;
        loop {
            match cur {
                Scope::Root => return None,
                Scope::Bind {
                    parent,
                    name: n,
                    value,
                } => {
                    if n == name {
                        return Some(value);
                    }
                    cur = *parent;
                }
            }
        }
    }

    fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = *self;
        while let Scope::Bind { parent, name, .. } = cur {
            out.push(name.to_string());
            cur = *parent;
        }
        out
    }
}

/// The evaluation steps left for one document, shared by all its evaluators.
#[derive(Debug)]
pub(super) struct Budget(Cell<u64>);

impl Default for Budget {
    fn default() -> Self {
        Budget(Cell::new(STEP_BUDGET))
    }
}

/// The evaluator: the source text (for positions and verbatim run-time interpolations) and what
/// `var` and `local` mean.
#[derive(Debug)]
pub(super) struct Eval<'a> {
    pub src: &'a str,
    pub vars: Names<'a>,
    pub locals: Names<'a>,
    budget: &'a Budget,
}

impl<'a> Eval<'a> {
    pub(super) fn new(
        src: &'a str,
        vars: Names<'a>,
        locals: Names<'a>,
        budget: &'a Budget,
    ) -> Self {
        Eval {
            src,
            vars,
            locals,
            budget,
        }
    }

    fn step(&self, span: Option<Range<usize>>) -> EvalResult<()> {
        let left = self.budget.0.get();
        if left == 0 {
            return Err(EvalError::new(
                span,
                "this document is too expensive to evaluate",
            ));
        }
        self.budget.0.set(left - 1);
        Ok(())
    }

    /// Charges the budget for copying a value: about one step per 16 bytes, so that copying
    /// large values over and over (a big local in a long `for`) cannot exhaust memory.
    fn charge(&self, v: &Value, span: Option<Range<usize>>) -> EvalResult<()> {
        fn cost(v: &Value) -> u64 {
            match v {
                Value::String(s) => 1 + (s.len() as u64) / 16,
                Value::Array(items) => items.iter().map(cost).fold(1, u64::saturating_add),
                Value::Object(m) => m
                    .iter()
                    .map(|(k, v)| cost(v) + (k.len() as u64) / 16)
                    .fold(1, u64::saturating_add),
                _ => 1,
            }
        }
        let c = cost(v);
        let left = self.budget.0.get();
        if c > left {
            self.budget.0.set(0);
            return Err(EvalError::new(
                span,
                "this document is too expensive to evaluate",
            ));
        }
        self.budget.0.set(left - c);
        Ok(())
    }

    /// A copy of a named value, paid for.
    fn copy(&self, v: &Value, span: Option<Range<usize>>) -> EvalResult<Value> {
        self.charge(v, span)?;
        Ok(v.clone())
    }

    /// The source text of a span, as written.
    fn raw(&self, span: Option<Range<usize>>) -> &'a str {
        span.and_then(|s| self.src.get(s)).unwrap_or("")
    }

    /// If `e` is a bare reference to a run-time value (`attr.kernel.name`, `NOMAD_ALLOC_INDEX`,
    /// `env["HOME"]`), the interpolation string that keeps it for run time.
    fn runtime_ref(&self, e: &Expression, scope: &Scope<'_>) -> Option<String> {
        let root = match e {
            Expression::Variable(v) => v.as_str(),
            Expression::Traversal(t) => match &t.expr {
                Expression::Variable(v) => v.as_str(),
                _ => return None,
            },
            _ => return None,
        };
        if is_runtime_root(root) && scope.get(root).is_none() {
            Some(format!("${{{}}}", self.raw(e.span()).trim()))
        } else {
            None
        }
    }

    /// Evaluates an expression in a value position (an attribute value, an element of a list or
    /// object literal): a bare run-time reference becomes the string `"${…}"`.
    pub(super) fn value(&self, e: &Expression, scope: &Scope<'_>) -> EvalResult<Value> {
        if let Some(s) = self.runtime_ref(e, scope) {
            return Ok(Value::String(s));
        }
        match e {
            Expression::Array(a) => a
                .iter()
                .map(|x| self.value(x, scope))
                .collect::<EvalResult<Vec<_>>>()
                .map(Value::Array),
            Expression::Object(o) => self.object(o, scope, true),
            Expression::Parenthesis(p) => self.value(p.inner(), scope),
            Expression::Conditional(c) => {
                let b = self.cond(&c.cond_expr, scope)?;
                self.value(if b { &c.true_expr } else { &c.false_expr }, scope)
            }
            _ => self.expr(e, scope),
        }
    }

    /// Evaluates an expression.
    pub(super) fn expr(&self, e: &Expression, scope: &Scope<'_>) -> EvalResult<Value> {
        self.step(e.span())?;
        match e {
            Expression::Null(_) => Ok(Value::Null),
            Expression::Bool(b) => Ok(Value::Bool(*b.value())),
            Expression::Number(n) => Ok(from_hcl_number(n.value())),
            Expression::String(s) => Ok(Value::String(s.value().clone())),
            Expression::Array(a) => a
                .iter()
                .map(|x| self.expr(x, scope))
                .collect::<EvalResult<Vec<_>>>()
                .map(Value::Array),
            Expression::Object(o) => self.object(o, scope, false),
            Expression::StringTemplate(t) => self.template(t, scope),
            Expression::HeredocTemplate(h) => self.template(&h.template, scope),
            Expression::Parenthesis(p) => self.expr(p.inner(), scope),
            Expression::Variable(v) => self.variable(v.as_str(), e.span(), scope),
            Expression::Conditional(c) => {
                let b = self.cond(&c.cond_expr, scope)?;
                self.expr(if b { &c.true_expr } else { &c.false_expr }, scope)
            }
            Expression::FuncCall(f) => self.call(f, e.span(), scope),
            Expression::Traversal(t) => self.traversal(t, scope),
            Expression::UnaryOp(u) => self.unary(u, scope),
            Expression::BinaryOp(b) => self.binary(b, scope),
            Expression::ForExpr(f) => self.for_expr(f, scope),
        }
    }

    pub(super) fn cond(&self, e: &Expression, scope: &Scope<'_>) -> EvalResult<bool> {
        let v = self.expr(e, scope)?;
        to_bool(&v).map_err(|m| EvalError::new(e.span(), format!("invalid condition: {m}")))
    }

    /// The name of an object literal's key: a bare name, or an expression's string value.
    pub(super) fn object_key(&self, k: &ObjectKey, scope: &Scope<'_>) -> EvalResult<String> {
        match k {
            ObjectKey::Ident(id) => Ok(id.as_str().to_string()),
            ObjectKey::Expression(e) => {
                let kv = self.expr(e, scope)?;
                to_key(&kv).map_err(|m| EvalError::new(e.span(), m))
            }
        }
    }

    fn object(&self, o: &Object, scope: &Scope<'_>, value_mode: bool) -> EvalResult<Value> {
        let mut map = Map::new();
        for (k, v) in o.iter() {
            let key = self.object_key(k, scope)?;
            if map.contains_key(&key) {
                return Err(EvalError::new(k.span(), format!("duplicate key \"{key}\"")));
            }
            let val = if value_mode {
                self.value(v.expr(), scope)?
            } else {
                self.expr(v.expr(), scope)?
            };
            map.insert(key, val);
        }
        Ok(Value::Object(map))
    }

    fn runtime_error(&self, span: Option<Range<usize>>) -> EvalError {
        let raw = self.raw(span.clone()).trim();
        EvalError::new(
            span,
            format!(
                "{raw} is only known when the task runs, so it can only be used inside a \
                 string, e.g. \"${{{raw}}}\""
            ),
        )
    }

    fn unknown_variable(&self, name: &str) -> String {
        let declared = |names: &Names<'_>| matches!(names, Names::Known(m) if m.contains_key(name));
        if declared(&self.locals) && !declared(&self.vars) {
            format!("unknown variable \"{name}\"; did you mean local.{name}?")
        } else if declared(&self.vars) {
            format!("unknown variable \"{name}\"; did you mean var.{name}?")
        } else if matches!(self.vars, Names::Known(_)) {
            format!(
                "unknown variable \"{name}\"; did you mean var.{name}? \
                 (declare it with a variable \"{name}\" block)"
            )
        } else {
            format!("unknown variable \"{name}\"")
        }
    }

    fn names_for(&self, root: &str) -> (Names<'a>, &'static str) {
        if root == "var" {
            (self.vars, "input variables (var.*)")
        } else {
            (self.locals, "local values (local.*)")
        }
    }

    fn variable(
        &self,
        name: &str,
        span: Option<Range<usize>>,
        scope: &Scope<'_>,
    ) -> EvalResult<Value> {
        if let Some(v) = scope.get(name) {
            return self.copy(v, span);
        }
        match name {
            "var" | "local" => match self.names_for(name) {
                (Names::Known(m), _) => {
                    let v = Value::Object(m.clone());
                    self.charge(&v, span)?;
                    Ok(v)
                }
                (Names::Unavailable(why), what) => {
                    Err(EvalError::new(span, format!("{what} cannot be used {why}")))
                }
            },
            n if is_runtime_root(n) => Err(self.runtime_error(span)),
            n => Err(EvalError::new(span, self.unknown_variable(n))),
        }
    }

    fn lookup_name(&self, root: &str, key: &str, span: Option<Range<usize>>) -> EvalResult<Value> {
        match self.names_for(root) {
            (Names::Unavailable(why), what) => {
                Err(EvalError::new(span, format!("{what} cannot be used {why}")))
            }
            (Names::Known(m), _) => match m.get(key) {
                Some(v) => self.copy(v, span),
                None => {
                    let msg = if root == "var" {
                        format!(
                            "there is no variable named \"{key}\"; \
                             declare it with a variable \"{key}\" block"
                        )
                    } else {
                        format!("there is no local value named \"{key}\"")
                    };
                    Err(EvalError::new(span, msg))
                }
            },
        }
    }

    fn traversal(&self, t: &Traversal, scope: &Scope<'_>) -> EvalResult<Value> {
        let ops = &t.operators[..];
        let (root, rest) = match &t.expr {
            Expression::Variable(v)
                if scope.get(v.as_str()).is_none() && matches!(v.as_str(), "var" | "local") =>
            {
                match ops.split_first() {
                    Some((first, rest)) => match first.value() {
                        TraversalOperator::GetAttr(name) => (
                            self.lookup_name(v.as_str(), name.as_str(), first.span())?,
                            rest,
                        ),
                        TraversalOperator::Index(ix) => {
                            let k = self.expr(ix, scope)?;
                            let k = to_key(&k).map_err(|m| EvalError::new(ix.span(), m))?;
                            (self.lookup_name(v.as_str(), &k, ix.span())?, rest)
                        }
                        _ => (self.variable(v.as_str(), t.expr.span(), scope)?, ops),
                    },
                    None => (self.variable(v.as_str(), t.expr.span(), scope)?, ops),
                }
            }
            Expression::Variable(v)
                if scope.get(v.as_str()).is_none() && is_runtime_root(v.as_str()) =>
            {
                return Err(self.runtime_error(t.span()));
            }
            other => (self.expr(other, scope)?, ops),
        };
        self.apply_ops(root, rest, scope)
    }

    fn apply_ops(
        &self,
        value: Value,
        ops: &[hcl_edit::Decorated<TraversalOperator>],
        scope: &Scope<'_>,
    ) -> EvalResult<Value> {
        let mut cur = value;
        let mut i = 0;
        while let Some(op) = ops.get(i) {
            i += 1;
            self.step(op.span())?;
            cur = match op.value() {
                TraversalOperator::GetAttr(name) => {
                    get_attr(cur, name.as_str()).map_err(|m| EvalError::new(op.span(), m))?
                }
                TraversalOperator::Index(ix) => {
                    let k = self.expr(ix, scope)?;
                    index(cur, &k).map_err(|m| EvalError::new(ix.span(), m))?
                }
                TraversalOperator::LegacyIndex(n) => index(cur, &Value::from(*n.value()))
                    .map_err(|m| EvalError::new(op.span(), m))?,
                TraversalOperator::AttrSplat(_) => {
                    let start = i;
                    while matches!(
                        ops.get(i).map(|o| o.value()),
                        Some(TraversalOperator::GetAttr(_))
                    ) {
                        i += 1;
                    }
                    self.splat(cur, ops.get(start..i).unwrap_or(&[]), scope)?
                }
                TraversalOperator::FullSplat(_) => {
                    let sub = ops.get(i..).unwrap_or(&[]);
                    i = ops.len();
                    self.splat(cur, sub, scope)?
                }
            };
        }
        Ok(cur)
    }

    fn splat(
        &self,
        value: Value,
        ops: &[hcl_edit::Decorated<TraversalOperator>],
        scope: &Scope<'_>,
    ) -> EvalResult<Value> {
        let items = match value {
            Value::Null => Vec::new(),
            Value::Array(items) => items,
            other => vec![other],
        };
        items
            .into_iter()
            .map(|item| self.apply_ops(item, ops, scope))
            .collect::<EvalResult<Vec<_>>>()
            .map(Value::Array)
    }

    fn call(
        &self,
        f: &FuncCall,
        span: Option<Range<usize>>,
        scope: &Scope<'_>,
    ) -> EvalResult<Value> {
        let name = f.name.name.as_str();
        if !f.name.namespace.is_empty() {
            let full: Vec<&str> = f
                .name
                .namespace
                .iter()
                .map(|n| n.as_str())
                .chain([name])
                .collect();
            return Err(EvalError::new(
                span,
                format!("unknown function \"{}\"", full.join("::")),
            ));
        }
        match name {
            "try" => {
                let mut last = None;
                for a in f.args.iter() {
                    match self.expr(a, scope) {
                        Ok(v) => return Ok(v),
                        Err(e) => last = Some(e),
                    }
                }
                let detail = last.map(|e| format!(": {}", e.message)).unwrap_or_default();
                return Err(EvalError::new(
                    span,
                    format!("try(): none of the arguments could be evaluated{detail}"),
                ));
            }
            "can" => {
                return match (f.args.len(), f.args.iter().next()) {
                    (1, Some(a)) => Ok(Value::Bool(self.expr(a, scope).is_ok())),
                    _ => Err(EvalError::new(span, "can(): takes exactly one argument")),
                };
            }
            _ => {}
        }
        let count = f.args.len();
        let mut args = Vec::with_capacity(count);
        let mut arg_spans = Vec::with_capacity(count);
        for (i, a) in f.args.iter().enumerate() {
            let v = self.expr(a, scope)?;
            if f.args.expand_final() && i + 1 == count {
                match v {
                    Value::Array(items) => {
                        arg_spans.extend(std::iter::repeat_n(a.span(), items.len()));
                        args.extend(items);
                    }
                    other => {
                        return Err(EvalError::new(
                            a.span(),
                            format!(
                                "{name}(): only a list can be expanded with ..., found a {}",
                                type_name(&other)
                            ),
                        ));
                    }
                }
            } else {
                args.push(v);
                arg_spans.push(a.span());
            }
        }
        funcs::call(name, args).map_err(|e| match e {
            FnError::Unknown if name == "file" => EvalError::new(
                f.name.name.span().or(span),
                "function \"file\" is not supported: job files are read without access to \
                 the files next to them; paste the content instead, e.g. in a heredoc",
            ),
            FnError::Unknown => EvalError::new(
                f.name.name.span().or(span),
                format!("unknown function \"{name}\""),
            ),
            FnError::Arg(i, m) => {
                let at = arg_spans.get(i).cloned().flatten().or(span);
                EvalError::new(at, format!("{name}(): {m}"))
            }
            FnError::Msg(m) => EvalError::new(span, format!("{name}(): {m}")),
        })
    }

    fn unary(&self, u: &UnaryOp, scope: &Scope<'_>) -> EvalResult<Value> {
        let v = self.expr(&u.expr, scope)?;
        match u.operator.value() {
            UnaryOperator::Not => {
                let b = to_bool(&v).map_err(|m| {
                    EvalError::new(u.expr.span(), format!("invalid operand for !: {m}"))
                })?;
                Ok(Value::Bool(!b))
            }
            UnaryOperator::Neg => match num_of(&v) {
                Some(Num::Int(i)) => match i.checked_neg() {
                    Some(n) => Ok(Value::from(n)),
                    None => float_value(-(i as f64)).map_err(|m| EvalError::new(u.span(), m)),
                },
                Some(Num::Float(f)) => float_value(-f).map_err(|m| EvalError::new(u.span(), m)),
                None => Err(EvalError::new(
                    u.expr.span(),
                    format!(
                        "invalid operand for -: a number is required, found a {}",
                        type_name(&v)
                    ),
                )),
            },
        }
    }

    fn binary(&self, b: &BinaryOp, scope: &Scope<'_>) -> EvalResult<Value> {
        use BinaryOperator as Op;
        let op = *b.operator.value();
        if matches!(op, Op::And | Op::Or) {
            let l = self.cond(&b.lhs_expr, scope)?;
            if (op == Op::And && !l) || (op == Op::Or && l) {
                return Ok(Value::Bool(l));
            }
            return self.cond(&b.rhs_expr, scope).map(Value::Bool);
        }
        let l = self.expr(&b.lhs_expr, scope)?;
        let r = self.expr(&b.rhs_expr, scope)?;
        match op {
            Op::Eq => return Ok(Value::Bool(equal(&l, &r))),
            Op::NotEq => return Ok(Value::Bool(!equal(&l, &r))),
            _ => {}
        }
        let operand = |v: &Value, e: &Expression| {
            num_of(v).ok_or_else(|| {
                EvalError::new(
                    e.span(),
                    format!(
                        "invalid operand for {}: a number is required, found a {}",
                        op.as_str(),
                        type_name(v)
                    ),
                )
            })
        };
        let x = operand(&l, &b.lhs_expr)?;
        let y = operand(&r, &b.rhs_expr)?;
        let cmp = |f: fn(f64, f64) -> bool, g: fn(i64, i64) -> bool| match (x, y) {
            (Num::Int(p), Num::Int(q)) => Value::Bool(g(p, q)),
            _ => Value::Bool(f(x.as_f64(), y.as_f64())),
        };
        match op {
            Op::Less => Ok(cmp(|p, q| p < q, |p, q| p < q)),
            Op::LessEq => Ok(cmp(|p, q| p <= q, |p, q| p <= q)),
            Op::Greater => Ok(cmp(|p, q| p > q, |p, q| p > q)),
            Op::GreaterEq => Ok(cmp(|p, q| p >= q, |p, q| p >= q)),
            _ => arith(op, x, y).map_err(|m| EvalError::new(b.span(), m)),
        }
    }

    fn for_expr(&self, f: &ForExpr, scope: &Scope<'_>) -> EvalResult<Value> {
        let coll_expr = &f.intro.collection_expr;
        let coll = self.expr(coll_expr, scope)?;
        let items = iter_items(coll).map_err(|m| EvalError::new(coll_expr.span(), m))?;
        let key_name = f.intro.key_var.as_ref().map(|k| k.as_str());
        let val_name = f.intro.value_var.as_str();
        let mut list = Vec::new();
        let mut map = Map::new();
        for (k, v) in items {
            self.step(f.span())?;
            let outer;
            let inner = match key_name {
                Some(kn) => {
                    outer = Scope::Bind {
                        parent: scope,
                        name: kn,
                        value: &k,
                    };
                    Scope::Bind {
                        parent: &outer,
                        name: val_name,
                        value: &v,
                    }
                }
                None => Scope::Bind {
                    parent: scope,
                    name: val_name,
                    value: &v,
                },
            };
            if let Some(c) = &f.cond
                && !self.cond(&c.expr, &inner)?
            {
                continue;
            }
            match &f.key_expr {
                None => list.push(self.expr(&f.value_expr, &inner)?),
                Some(ke) => {
                    let kv = self.expr(ke, &inner)?;
                    let key = to_key(&kv).map_err(|m| EvalError::new(ke.span(), m))?;
                    let val = self.expr(&f.value_expr, &inner)?;
                    if f.grouping {
                        match map.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
                            Value::Array(group) => group.push(val),
                            _ => {
                                return Err(EvalError::new(
                                    ke.span(),
                                    "internal error: group is not a list",
                                ));
                            }
                        }
                    } else if map.contains_key(&key) {
                        return Err(EvalError::new(
                            ke.span(),
                            format!(
                                "duplicate key \"{key}\" in for expression; \
                                 add ... after the value to group values by key"
                            ),
                        ));
                    } else {
                        map.insert(key, val);
                    }
                }
            }
        }
        Ok(if f.key_expr.is_some() {
            Value::Object(map)
        } else {
            Value::Array(list)
        })
    }

    /// Evaluates a template: a lone interpolation yields its value unchanged (`"${var.count}"`
    /// is a number); anything else yields a string.
    pub(super) fn template(&self, tpl: &Template, scope: &Scope<'_>) -> EvalResult<Value> {
        let mut bound = scope.names();
        if directives_need_runtime(tpl, &mut bound) {
            return Ok(Value::String(self.verbatim(tpl)));
        }
        if let Some(Element::Interpolation(interp)) = tpl.as_single_element() {
            if mentions_runtime(&interp.expr, &mut bound) {
                return Ok(Value::String(self.raw(interp.span()).to_string()));
            }
            return self.expr(&interp.expr, scope);
        }
        let mut out = String::new();
        self.render(tpl, scope, &mut out, false, false)?;
        Ok(Value::String(out))
    }

    /// The template as written: literals as parsed, interpolations and directives verbatim.
    fn verbatim(&self, tpl: &Template) -> String {
        let mut out = String::new();
        for el in tpl.iter() {
            match el {
                Element::Literal(lit) => out.push_str(lit.value()),
                other => out.push_str(self.raw(other.span())),
            }
        }
        out
    }

    fn render(
        &self,
        tpl: &Template,
        scope: &Scope<'_>,
        out: &mut String,
        strip_first: bool,
        strip_last: bool,
    ) -> EvalResult<()> {
        let elems: Vec<&Element> = tpl.iter().collect();
        let len = elems.len();
        // Interpolations kept for run time are kept whole, strip markers included, and so do
        // not strip their neighbours either.
        let mut bound = scope.names();
        let runtime: Vec<bool> = elems
            .iter()
            .map(|el| match el {
                Element::Interpolation(i) => mentions_runtime(&i.expr, &mut bound),
                _ => false,
            })
            .collect();
        let strips = |j: usize, f: fn(&Element) -> bool| {
            runtime.get(j) == Some(&false) && elems.get(j).is_some_and(|el| f(el))
        };
        for (i, el) in elems.iter().enumerate() {
            match el {
                Element::Literal(lit) => {
                    let mut s: &str = lit.value();
                    let strip_start = if i == 0 {
                        strip_first
                    } else {
                        strips(i - 1, strips_after)
                    };
                    let strip_end = if i + 1 == len {
                        strip_last
                    } else {
                        strips(i + 1, strips_before)
                    };
                    if strip_start {
                        s = s.trim_start();
                    }
                    if strip_end {
                        s = s.trim_end();
                    }
                    out.push_str(s);
                }
                Element::Interpolation(interp) => {
                    if runtime.get(i) == Some(&true) {
                        out.push_str(self.raw(interp.span()));
                    } else {
                        let v = self.expr(&interp.expr, scope)?;
                        let s = to_str(&v).map_err(|m| {
                            EvalError::new(interp.expr.span(), format!("cannot interpolate: {m}"))
                        })?;
                        out.push_str(&s);
                    }
                }
                Element::Directive(d) => match d.as_ref() {
                    Directive::If(d) => self.render_if(d, scope, out)?,
                    Directive::For(d) => self.render_for(d, scope, out)?,
                },
            }
            if out.len() > MAX_STRING {
                return Err(EvalError::new(
                    tpl.span(),
                    format!("this template makes a string longer than {MAX_STRING} bytes"),
                ));
            }
        }
        Ok(())
    }

    fn render_if(&self, d: &IfDirective, scope: &Scope<'_>, out: &mut String) -> EvalResult<()> {
        if self.cond(&d.if_expr.cond_expr, scope)? {
            let next = d
                .else_expr
                .as_ref()
                .map_or(d.endif_expr.strip, |e| e.strip)
                .strip_start();
            self.render(
                &d.if_expr.template,
                scope,
                out,
                d.if_expr.strip.strip_end(),
                next,
            )
        } else if let Some(e) = &d.else_expr {
            self.render(
                &e.template,
                scope,
                out,
                e.strip.strip_end(),
                d.endif_expr.strip.strip_start(),
            )
        } else {
            Ok(())
        }
    }

    fn render_for(&self, d: &ForDirective, scope: &Scope<'_>, out: &mut String) -> EvalResult<()> {
        let fe = &d.for_expr;
        let coll = self.expr(&fe.collection_expr, scope)?;
        let items = iter_items(coll).map_err(|m| EvalError::new(fe.collection_expr.span(), m))?;
        for (k, v) in items {
            self.step(d.span())?;
            let outer;
            let inner = match &fe.key_var {
                Some(kn) => {
                    outer = Scope::Bind {
                        parent: scope,
                        name: kn.as_str(),
                        value: &k,
                    };
                    Scope::Bind {
                        parent: &outer,
                        name: fe.value_var.as_str(),
                        value: &v,
                    }
                }
                None => Scope::Bind {
                    parent: scope,
                    name: fe.value_var.as_str(),
                    value: &v,
                },
            };
            self.render(
                &fe.template,
                &inner,
                out,
                fe.strip.strip_end(),
                d.endfor_expr.strip.strip_start(),
            )?;
        }
        Ok(())
    }
}

/// Whether the element asks to strip the whitespace before it (`${~`, `%{~ if`, `%{~ for`).
fn strips_before(el: &Element) -> bool {
    match el {
        Element::Literal(_) => false,
        Element::Interpolation(i) => i.strip.strip_start(),
        Element::Directive(d) => match d.as_ref() {
            Directive::If(d) => d.if_expr.strip.strip_start(),
            Directive::For(d) => d.for_expr.strip.strip_start(),
        },
    }
}

/// Whether the element asks to strip the whitespace after it (`~}`, `%{ endif ~}`, `%{ endfor ~}`).
fn strips_after(el: &Element) -> bool {
    match el {
        Element::Literal(_) => false,
        Element::Interpolation(i) => i.strip.strip_end(),
        Element::Directive(d) => match d.as_ref() {
            Directive::If(d) => d.endif_expr.strip.strip_end(),
            Directive::For(d) => d.endfor_expr.strip.strip_end(),
        },
    }
}

/// Whether an expression refers to a run-time value anywhere (names in `bound` are shadowed by
/// `for` bindings).
pub(super) fn mentions_runtime(e: &Expression, bound: &mut Vec<String>) -> bool {
    match e {
        Expression::Null(_)
        | Expression::Bool(_)
        | Expression::Number(_)
        | Expression::String(_) => false,
        Expression::Variable(v) => {
            is_runtime_root(v.as_str()) && !bound.iter().any(|b| b == v.as_str())
        }
        Expression::Traversal(t) => {
            mentions_runtime(&t.expr, bound)
                || t.operators.iter().any(|op| match op.value() {
                    TraversalOperator::Index(ix) => mentions_runtime(ix, bound),
                    _ => false,
                })
        }
        Expression::Array(a) => a.iter().any(|x| mentions_runtime(x, bound)),
        Expression::Object(o) => o.iter().any(|(k, v)| {
            matches!(k, ObjectKey::Expression(ke) if mentions_runtime(ke, bound))
                || mentions_runtime(v.expr(), bound)
        }),
        Expression::StringTemplate(t) => template_mentions_runtime(t, bound),
        Expression::HeredocTemplate(h) => template_mentions_runtime(&h.template, bound),
        Expression::Parenthesis(p) => mentions_runtime(p.inner(), bound),
        Expression::Conditional(c) => {
            mentions_runtime(&c.cond_expr, bound)
                || mentions_runtime(&c.true_expr, bound)
                || mentions_runtime(&c.false_expr, bound)
        }
        Expression::FuncCall(f) => f.args.iter().any(|a| mentions_runtime(a, bound)),
        Expression::UnaryOp(u) => mentions_runtime(&u.expr, bound),
        Expression::BinaryOp(b) => {
            mentions_runtime(&b.lhs_expr, bound) || mentions_runtime(&b.rhs_expr, bound)
        }
        Expression::ForExpr(f) => {
            if mentions_runtime(&f.intro.collection_expr, bound) {
                return true;
            }
            let n = bound.len();
            bound.extend(f.intro.key_var.iter().map(|k| k.as_str().to_string()));
            bound.push(f.intro.value_var.as_str().to_string());
            let found = f
                .key_expr
                .as_ref()
                .is_some_and(|k| mentions_runtime(k, bound))
                || mentions_runtime(&f.value_expr, bound)
                || f.cond
                    .as_ref()
                    .is_some_and(|c| mentions_runtime(&c.expr, bound));
            bound.truncate(n);
            found
        }
    }
}

fn template_mentions_runtime(t: &Template, bound: &mut Vec<String>) -> bool {
    t.iter().any(|el| match el {
        Element::Literal(_) => false,
        Element::Interpolation(i) => mentions_runtime(&i.expr, bound),
        Element::Directive(d) => match d.as_ref() {
            Directive::If(d) => {
                mentions_runtime(&d.if_expr.cond_expr, bound)
                    || template_mentions_runtime(&d.if_expr.template, bound)
                    || d.else_expr
                        .as_ref()
                        .is_some_and(|e| template_mentions_runtime(&e.template, bound))
            }
            Directive::For(d) => {
                if mentions_runtime(&d.for_expr.collection_expr, bound) {
                    return true;
                }
                let n = bound.len();
                bound.extend(d.for_expr.key_var.iter().map(|k| k.as_str().to_string()));
                bound.push(d.for_expr.value_var.as_str().to_string());
                let found = template_mentions_runtime(&d.for_expr.template, bound);
                bound.truncate(n);
                found
            }
        },
    })
}

/// Whether the control expression of any directive (an `%{ if }` condition or a `%{ for }`
/// collection) needs a run-time value: such a template cannot be evaluated now and is kept as
/// written.
fn directives_need_runtime(t: &Template, bound: &mut Vec<String>) -> bool {
    t.iter().any(|el| match el {
        Element::Directive(d) => match d.as_ref() {
            Directive::If(d) => {
                mentions_runtime(&d.if_expr.cond_expr, bound)
                    || directives_need_runtime(&d.if_expr.template, bound)
                    || d.else_expr
                        .as_ref()
                        .is_some_and(|e| directives_need_runtime(&e.template, bound))
            }
            Directive::For(d) => {
                if mentions_runtime(&d.for_expr.collection_expr, bound) {
                    return true;
                }
                let n = bound.len();
                bound.extend(d.for_expr.key_var.iter().map(|k| k.as_str().to_string()));
                bound.push(d.for_expr.value_var.as_str().to_string());
                let found = directives_need_runtime(&d.for_expr.template, bound);
                bound.truncate(n);
                found
            }
        },
        _ => false,
    })
}

/// The (key, value) pairs a `for` iterates over.
fn iter_items(coll: Value) -> Result<Vec<(Value, Value)>, String> {
    match coll {
        Value::Array(items) => Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (Value::from(i), v))
            .collect()),
        Value::Object(map) => Ok(map
            .into_iter()
            .map(|(k, v)| (Value::String(k), v))
            .collect()),
        Value::Null => Err("cannot iterate over a null value".into()),
        other => Err(format!(
            "cannot iterate over a {}; a list or an object is required",
            type_name(&other)
        )),
    }
}

fn get_attr(v: Value, name: &str) -> Result<Value, String> {
    match v {
        Value::Object(mut map) => map
            .swap_remove(name)
            .ok_or_else(|| format!("this object has no attribute \"{name}\"")),
        Value::Null => Err(format!("cannot read attribute \"{name}\" of a null value")),
        other => Err(format!(
            "cannot read attribute \"{name}\" of a {}",
            type_name(&other)
        )),
    }
}

fn index(v: Value, k: &Value) -> Result<Value, String> {
    match v {
        Value::Array(mut items) => {
            let len = items.len();
            let i = num_of(k).and_then(Num::as_int).ok_or_else(|| {
                format!(
                    "a list index must be a whole number, found {}",
                    super::value::describe(k)
                )
            })?;
            match usize::try_from(i) {
                Ok(i) if i < len => Ok(items.swap_remove(i)),
                _ => Err(format!(
                    "index {i} is out of range for a list of {len} element(s)"
                )),
            }
        }
        Value::Object(mut map) => {
            let key = to_key(k)?;
            map.swap_remove(&key)
                .ok_or_else(|| format!("this object has no key \"{key}\""))
        }
        Value::Null => Err("cannot index a null value".into()),
        other => Err(format!("cannot index a {}", type_name(&other))),
    }
}

fn arith(op: BinaryOperator, x: Num, y: Num) -> Result<Value, String> {
    use BinaryOperator as Op;
    if let (Num::Int(a), Num::Int(b)) = (x, y) {
        let exact = match op {
            Op::Plus => a.checked_add(b),
            Op::Minus => a.checked_sub(b),
            Op::Mul => a.checked_mul(b),
            Op::Div => {
                if b == 0 {
                    return Err("division by zero".into());
                }
                if a.checked_rem(b) == Some(0) {
                    a.checked_div(b)
                } else {
                    None
                }
            }
            Op::Mod => {
                if b == 0 {
                    return Err("modulo by zero".into());
                }
                a.checked_rem(b)
            }
            _ => None,
        };
        if let Some(r) = exact {
            return Ok(Value::from(r));
        }
    }
    let (a, b) = (x.as_f64(), y.as_f64());
    let r = match op {
        Op::Plus => a + b,
        Op::Minus => a - b,
        Op::Mul => a * b,
        Op::Div if b == 0.0 => return Err("division by zero".into()),
        Op::Div => a / b,
        Op::Mod if b == 0.0 => return Err("modulo by zero".into()),
        Op::Mod => a % b,
        other => return Err(format!("unsupported operator {}", other.as_str())),
    };
    float_value(r)
}
