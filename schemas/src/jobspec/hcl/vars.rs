//! `variable` blocks and their inputs (defaults < var files < `NOMAD_VAR_*` < `-var`), type
//! constraints and validations; `locals` blocks resolved in dependency order.

use super::eval::{Budget, Eval, EvalError, Names, Scope};
use super::value::{describe, equal, num_of, num_value, parse_num, to_bool, to_str};
use super::{VariableInputs, problem_at, syntax_error};
use crate::jobspec::error::{Problem, SpecError};
use crate::jobspec::tree::Pos;
use hcl_edit::Span;
use hcl_edit::expr::{Expression, ObjectKey, TraversalOperator};
use hcl_edit::structure::{Attribute, Block, Body, Structure};
use hcl_edit::template::{Directive, Element, Template};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::ops::Range;

/// A type constraint, as written in a `type = …` attribute.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Type {
    Any,
    String,
    Number,
    Bool,
    List(Box<Type>),
    Set(Box<Type>),
    Map(Box<Type>),
    Tuple(Vec<Type>),
    Object(Vec<(String, Type, bool)>),
}

const TYPE_HELP: &str = "use string, number, bool, any, list(T), set(T), map(T), \
                         tuple([T, …]) or object({name = T, …})";

/// Reads a type expression without evaluating it.
pub(super) fn parse_type(e: &Expression) -> Result<Type, EvalError> {
    let bad = |what: &str| EvalError::new(e.span(), format!("invalid type {what}; {TYPE_HELP}"));
    match e {
        Expression::Variable(v) => match v.as_str() {
            "string" => Ok(Type::String),
            "number" => Ok(Type::Number),
            "bool" => Ok(Type::Bool),
            "any" => Ok(Type::Any),
            other => Err(bad(&format!("\"{other}\""))),
        },
        // The quoted forms of Terraform 0.11, still found in old files.
        Expression::String(s) => match s.value().as_str() {
            "string" => Ok(Type::String),
            "list" => Ok(Type::List(Box::new(Type::Any))),
            "map" => Ok(Type::Map(Box::new(Type::Any))),
            other => Err(bad(&format!("\"{other}\""))),
        },
        Expression::Parenthesis(p) => parse_type(p.inner()),
        Expression::FuncCall(f) => {
            let name = f.name.name.as_str();
            let args: Vec<&Expression> = f.args.iter().collect();
            let [arg] = args.as_slice() else {
                return Err(bad(&format!("{name}(…): it takes exactly one argument")));
            };
            match name {
                "list" => Ok(Type::List(Box::new(parse_type(arg)?))),
                "set" => Ok(Type::Set(Box::new(parse_type(arg)?))),
                "map" => Ok(Type::Map(Box::new(parse_type(arg)?))),
                "tuple" => match arg {
                    Expression::Array(a) => Ok(Type::Tuple(
                        a.iter().map(parse_type).collect::<Result<_, _>>()?,
                    )),
                    _ => Err(bad("tuple(…): it takes a list of types")),
                },
                "object" => match arg {
                    Expression::Object(o) => {
                        let mut attrs = Vec::new();
                        for (k, v) in o.iter() {
                            let key = match k {
                                ObjectKey::Ident(id) => id.as_str().to_string(),
                                ObjectKey::Expression(Expression::String(s)) => s.value().clone(),
                                ObjectKey::Expression(other) => {
                                    return Err(EvalError::new(
                                        other.span(),
                                        "an object type's attribute names must be names",
                                    ));
                                }
                            };
                            let (ty, optional) = match v.expr() {
                                Expression::FuncCall(o) if o.name.name.as_str() == "optional" => {
                                    match o.args.iter().next() {
                                        Some(inner) => (parse_type(inner)?, true),
                                        None => return Err(bad("optional(): it takes a type")),
                                    }
                                }
                                other => (parse_type(other)?, false),
                            };
                            attrs.push((key, ty, optional));
                        }
                        Ok(Type::Object(attrs))
                    }
                    _ => Err(bad("object(…): it takes an object of attribute types")),
                },
                other => Err(bad(&format!("\"{other}(…)\""))),
            }
        }
        _ => Err(bad("expression")),
    }
}

/// Converts a value to a type, as HCL's automatic conversions do.
pub(super) fn convert(v: Value, t: &Type) -> Result<Value, String> {
    if v.is_null() {
        return Ok(v);
    }
    match t {
        Type::Any => Ok(v),
        Type::String => match v {
            Value::String(_) => Ok(v),
            Value::Number(_) | Value::Bool(_) => to_str(&v).map(Value::String),
            other => Err(format!("a string is required, found {}", describe(&other))),
        },
        Type::Number => match num_of(&v) {
            Some(n) => num_value(n),
            None => Err(format!("a number is required, found {}", describe(&v))),
        },
        Type::Bool => to_bool(&v).map(Value::Bool),
        Type::List(inner) | Type::Set(inner) => match v {
            Value::Array(items) => {
                let mut out: Vec<Value> = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let c = convert(item, inner).map_err(|m| format!("element {i}: {m}"))?;
                    if !matches!(t, Type::Set(_)) || !out.iter().any(|o| equal(o, &c)) {
                        out.push(c);
                    }
                }
                Ok(Value::Array(out))
            }
            other => Err(format!("a list is required, found {}", describe(&other))),
        },
        Type::Map(inner) => match v {
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, item) in map {
                    let c = convert(item, inner).map_err(|m| format!("key \"{k}\": {m}"))?;
                    out.insert(k, c);
                }
                Ok(Value::Object(out))
            }
            other => Err(format!("a map is required, found {}", describe(&other))),
        },
        Type::Tuple(types) => match v {
            Value::Array(items) if items.len() == types.len() => items
                .into_iter()
                .zip(types)
                .enumerate()
                .map(|(i, (item, ty))| convert(item, ty).map_err(|m| format!("element {i}: {m}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Array(items) => Err(format!(
                "a list of {} elements is required, found {}",
                types.len(),
                items.len()
            )),
            other => Err(format!("a list is required, found {}", describe(&other))),
        },
        Type::Object(attrs) => match v {
            Value::Object(mut map) => {
                let mut out = Map::new();
                for (name, ty, optional) in attrs {
                    match map.swap_remove(name) {
                        Some(item) => {
                            out.insert(
                                name.clone(),
                                convert(item, ty)
                                    .map_err(|m| format!("attribute \"{name}\": {m}"))?,
                            );
                        }
                        None if *optional => {
                            out.insert(name.clone(), Value::Null);
                        }
                        None => return Err(format!("attribute \"{name}\" is required")),
                    }
                }
                Ok(Value::Object(out))
            }
            other => Err(format!("an object is required, found {}", describe(&other))),
        },
    }
}

/// One `variable` block.
#[derive(Debug)]
struct Decl<'b> {
    name: String,
    span: Option<Range<usize>>,
    ty: Type,
    /// Declared in a `variables { name = default }` block: the type is the default's.
    inferred: bool,
    default: Option<&'b Expression>,
    validations: Vec<(&'b Expression, Option<&'b Expression>)>,
}

fn pos_of(src: &str, span: Option<&Range<usize>>) -> Option<Pos> {
    span.map(|s| Pos::from_offset(src, s.start))
}

fn declare<'b>(src: &str, block: &'b Block, problems: &mut Vec<Problem>) -> Option<Decl<'b>> {
    let [label] = block.labels.as_slice() else {
        problems.push(problem_at(
            src,
            block.span(),
            "a variable block needs exactly one label, its name: variable \"name\" { … }",
        ));
        return None;
    };
    let name = label.as_str().to_string();
    // A problem inside this declaration.
    let mut bad = |span: Option<Range<usize>>, msg: &str| {
        problems.push(problem_at(src, span, format!("variable \"{name}\": {msg}")));
    };
    let mut decl = Decl {
        name: name.clone(),
        span: block.span(),
        ty: Type::Any,
        inferred: false,
        default: None,
        validations: Vec::new(),
    };
    for s in block.body.iter() {
        match s {
            Structure::Attribute(a) => match a.key.as_str() {
                "type" => match parse_type(&a.value) {
                    Ok(t) => decl.ty = t,
                    Err(e) => bad(e.span, &e.message),
                },
                "default" => decl.default = Some(&a.value),
                "description" | "sensitive" | "nullable" => {}
                other => bad(
                    a.span(),
                    &format!(
                        "unsupported attribute \"{other}\"; a variable has type, default, \
                         description, sensitive and validation"
                    ),
                ),
            },
            Structure::Block(b) if b.ident.as_str() == "validation" && b.labels.is_empty() => {
                let mut condition = None;
                let mut message = None;
                for vs in b.body.iter() {
                    match vs {
                        Structure::Attribute(a) if a.key.as_str() == "condition" => {
                            condition = Some(&a.value);
                        }
                        Structure::Attribute(a) if a.key.as_str() == "error_message" => {
                            message = Some(&a.value);
                        }
                        other => bad(
                            other.span(),
                            "a validation block has only condition and error_message",
                        ),
                    }
                }
                match condition {
                    Some(c) => decl.validations.push((c, message)),
                    None => bad(b.span(), "a validation block needs a condition"),
                }
            }
            Structure::Block(b) => bad(
                b.span(),
                &format!(
                    "unsupported block \"{}\"; only validation blocks are allowed",
                    b.ident.as_str()
                ),
            ),
        }
    }
    Some(decl)
}

/// The variables of a `variables { name = default … }` block, as Nomad allows.
fn declare_many<'b>(
    src: &str,
    block: &'b Block,
    out: &mut Vec<Decl<'b>>,
    problems: &mut Vec<Problem>,
) {
    if !block.labels.is_empty() {
        problems.push(problem_at(
            src,
            block.span(),
            "a variables block takes no label: variables { name = default }",
        ));
    }
    for s in block.body.iter() {
        match s {
            Structure::Attribute(a) => out.push(Decl {
                name: a.key.as_str().to_string(),
                span: a.span(),
                ty: Type::Any,
                inferred: true,
                default: Some(&a.value),
                validations: Vec::new(),
            }),
            Structure::Block(b) => problems.push(problem_at(
                src,
                b.span(),
                format!(
                    "a variables block holds only name = default lines; found a block \"{}\"",
                    b.ident.as_str()
                ),
            )),
        }
    }
}

/// The type a `variables` default gives its variable, for converting raw inputs.
fn type_of(v: &Value) -> Type {
    match v {
        Value::String(_) => Type::String,
        Value::Number(_) => Type::Number,
        Value::Bool(_) => Type::Bool,
        Value::Array(_) => Type::List(Box::new(Type::Any)),
        Value::Object(_) => Type::Map(Box::new(Type::Any)),
        Value::Null => Type::Any,
    }
}

/// Converts a raw `-var` or `NOMAD_VAR_*` string to the declared type.
fn convert_raw(raw: &str, ty: &Type, budget: &Budget) -> Result<Value, String> {
    match ty {
        Type::Any | Type::String => Ok(Value::String(raw.to_string())),
        Type::Number => match parse_num(raw) {
            Some(n) => num_value(n),
            None => Err(format!("a number is required, found {raw:?}")),
        },
        Type::Bool => match raw.trim() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("true or false is required, found {raw:?}")),
        },
        complex => {
            let expr = hcl_edit::parser::parse_expr(raw)
                .map_err(|e| format!("{raw:?} is not a valid HCL value: {}", e.message()))?;
            let ev = Eval::new(
                raw,
                Names::Unavailable("in a -var value"),
                Names::Unavailable("in a -var value"),
                budget,
            );
            let v = ev.value(&expr, &Scope::Root).map_err(|e| e.message)?;
            convert(v, complex)
        }
    }
}

/// Resolves every declared variable from its inputs. `blocks` are the `variable` and
/// `variables` blocks of the job file `src`.
pub(super) fn resolve_variables(
    src: &str,
    blocks: &[&Block],
    inputs: &VariableInputs,
    budget: &Budget,
) -> Result<Map<String, Value>, SpecError> {
    let mut problems = Vec::new();
    let mut decls: Vec<Decl<'_>> = Vec::new();
    let mut first_at: HashMap<String, Option<Pos>> = HashMap::new();
    let mut found = Vec::new();
    for b in blocks {
        if b.ident.as_str() == "variables" {
            declare_many(src, b, &mut found, &mut problems);
        } else if let Some(d) = declare(src, b, &mut problems) {
            found.push(d);
        }
    }
    for d in found {
        if let Some(first) = first_at.get(&d.name) {
            let first = first
                .map(|p| format!("; first declared at {p}"))
                .unwrap_or_default();
            problems.push(problem_at(
                src,
                d.span.clone(),
                format!("variable \"{}\" is declared twice{first}", d.name),
            ));
            continue;
        }
        first_at.insert(d.name.clone(), pos_of(src, d.span.as_ref()));
        decls.push(d);
    }

    let mut values: Map<String, Value> = Map::new();
    // Variables whose value was given but is wrong: they are not also reported as missing.
    let mut invalid: Vec<String> = Vec::new();
    let defaults = Eval::new(
        src,
        Names::Unavailable("in a variable's default"),
        Names::Unavailable("in a variable's default"),
        budget,
    );
    for d in &mut decls {
        if let Some(e) = d.default {
            match defaults
                .value(e, &Scope::Root)
                .inspect(|v| {
                    if d.inferred {
                        d.ty = type_of(v);
                    }
                })
                .map_err(|e| problem_at(src, e.span, e.message))
                .and_then(|v| {
                    convert(v, &d.ty).map_err(|m| {
                        problem_at(
                            src,
                            e.span(),
                            format!("invalid default for variable \"{}\": {m}", d.name),
                        )
                    })
                }) {
                Ok(v) => {
                    values.insert(d.name.clone(), v);
                }
                Err(p) => {
                    invalid.push(d.name.clone());
                    problems.push(p);
                }
            }
        }
    }
    let decl_of = |name: &str| decls.iter().find(|d| d.name == name);

    for file in &inputs.files {
        let in_file = |mut p: Problem| {
            p.at.file = Some(file.name.clone());
            p
        };
        if file.name.to_ascii_lowercase().ends_with(".json") {
            let parsed: Value = serde_json::from_str(&file.content).map_err(|e| {
                let pos = (e.line() > 0).then(|| Pos {
                    line: u32::try_from(e.line()).unwrap_or(u32::MAX),
                    column: u32::try_from(e.column()).unwrap_or(u32::MAX),
                });
                SpecError::Syntax(in_file(Problem::at_pos(pos, format!("invalid JSON: {e}"))))
            })?;
            let Value::Object(map) = parsed else {
                problems.push(in_file(Problem::new(
                    "a JSON variable file must hold an object of variable values",
                )));
                continue;
            };
            for (name, v) in map {
                if let Some(d) = decl_of(&name) {
                    match convert(v, &d.ty) {
                        Ok(v) => {
                            values.insert(name, v);
                        }
                        Err(m) => {
                            problems.push(in_file(Problem::new(format!(
                                "invalid value for variable \"{name}\": {m}"
                            ))));
                            invalid.push(name);
                        }
                    }
                }
            }
        } else {
            let body = hcl_edit::parser::parse_body(&file.content)
                .map_err(|e| syntax_error(&e).in_file(&file.name))?;
            let ev = Eval::new(
                &file.content,
                Names::Unavailable("in a variable file"),
                Names::Unavailable("in a variable file"),
                budget,
            );
            for s in body.iter() {
                match s {
                    Structure::Attribute(a) => {
                        let Some(d) = decl_of(a.key.as_str()) else {
                            continue;
                        };
                        let v = ev
                            .value(&a.value, &Scope::Root)
                            .map_err(|e| problem_at(&file.content, e.span, e.message));
                        match v.and_then(|v| {
                            convert(v, &d.ty).map_err(|m| {
                                problem_at(
                                    &file.content,
                                    a.span(),
                                    format!("invalid value for variable \"{}\": {m}", d.name),
                                )
                            })
                        }) {
                            Ok(v) => {
                                values.insert(d.name.clone(), v);
                            }
                            Err(p) => {
                                invalid.push(d.name.clone());
                                problems.push(in_file(p));
                            }
                        }
                    }
                    Structure::Block(b) => problems.push(in_file(problem_at(
                        &file.content,
                        b.span(),
                        format!(
                            "a variable file holds only name = value lines; found a block \"{}\"",
                            b.ident.as_str()
                        ),
                    ))),
                }
            }
        }
    }

    for (name, raw) in &inputs.env {
        if let Some(d) = decl_of(name) {
            match convert_raw(raw, &d.ty, budget) {
                Ok(v) => {
                    values.insert(name.clone(), v);
                }
                Err(m) => {
                    invalid.push(name.clone());
                    problems.push(problem_at(
                        src,
                        d.span.clone(),
                        format!("invalid value for variable \"{name}\" from NOMAD_VAR_{name}: {m}"),
                    ));
                }
            }
        }
    }

    for (name, raw) in &inputs.flags {
        match decl_of(name) {
            None => problems.push(Problem::new(format!(
                "variable \"{name}\" is not declared; a -var value needs a \
                 variable \"{name}\" {{}} block in the job file"
            ))),
            Some(d) => match convert_raw(raw, &d.ty, budget) {
                Ok(v) => {
                    values.insert(name.clone(), v);
                }
                Err(m) => {
                    invalid.push(name.clone());
                    problems.push(problem_at(
                        src,
                        d.span.clone(),
                        format!("invalid value for variable \"{name}\" from -var: {m}"),
                    ));
                }
            },
        }
    }

    for d in &decls {
        if !values.contains_key(&d.name) && !invalid.contains(&d.name) {
            problems.push(problem_at(
                src,
                d.span.clone(),
                format!(
                    "variable \"{0}\" has no value: give it a default, or set it with \
                     -var {0}=..., a -var-file, or the NOMAD_VAR_{0} environment variable",
                    d.name
                ),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(SpecError::Invalid(problems));
    }

    let ev = Eval::new(
        src,
        Names::Known(&values),
        Names::Unavailable("in a variable validation"),
        budget,
    );
    for d in &decls {
        for (cond, message) in &d.validations {
            let ok = ev.expr(cond, &Scope::Root).and_then(|v| {
                to_bool(&v).map_err(|m| {
                    EvalError::new(cond.span(), format!("invalid validation condition: {m}"))
                })
            });
            match ok {
                Ok(true) => {}
                Ok(false) => {
                    let msg = message
                        .and_then(|m| ev.expr(m, &Scope::Root).ok())
                        .and_then(|v| to_str(&v).ok())
                        .unwrap_or_else(|| "the validation condition is false".to_string());
                    problems.push(problem_at(
                        src,
                        cond.span(),
                        format!("invalid value for variable \"{}\": {msg}", d.name),
                    ));
                }
                Err(e) => problems.push(problem_at(src, e.span, e.message)),
            }
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(SpecError::Invalid(problems))
    }
}

/// A reference from one local value to others.
#[derive(Debug)]
enum LocalRef {
    Name(String, Option<Range<usize>>),
    All,
}

fn is_local_root(e: &Expression) -> bool {
    matches!(e, Expression::Variable(v) if v.as_str() == "local")
}

fn local_refs(e: &Expression, out: &mut Vec<LocalRef>) {
    match e {
        Expression::Traversal(t) if is_local_root(&t.expr) => {
            match t.operators.first().map(|o| (o.value(), o.span())) {
                Some((TraversalOperator::GetAttr(n), span)) => {
                    out.push(LocalRef::Name(n.as_str().to_string(), span))
                }
                Some((TraversalOperator::Index(Expression::String(s)), span)) => {
                    out.push(LocalRef::Name(s.value().clone(), span));
                }
                _ => out.push(LocalRef::All),
            }
            for op in &t.operators {
                if let TraversalOperator::Index(ix) = op.value() {
                    local_refs(ix, out);
                }
            }
        }
        other if is_local_root(other) => out.push(LocalRef::All),
        other => children(other, &mut |c| local_refs(c, out)),
    }
}

/// Calls `f` on each expression directly inside `e`, including those inside templates.
fn children<'e>(e: &'e Expression, f: &mut dyn FnMut(&'e Expression)) {
    match e {
        Expression::Null(_)
        | Expression::Bool(_)
        | Expression::Number(_)
        | Expression::String(_)
        | Expression::Variable(_) => {}
        Expression::Array(a) => a.iter().for_each(f),
        Expression::Object(o) => {
            for (k, v) in o.iter() {
                if let ObjectKey::Expression(ke) = k {
                    f(ke);
                }
                f(v.expr());
            }
        }
        Expression::StringTemplate(t) => template_children(t, f),
        Expression::HeredocTemplate(h) => template_children(&h.template, f),
        Expression::Parenthesis(p) => f(p.inner()),
        Expression::Conditional(c) => {
            f(&c.cond_expr);
            f(&c.true_expr);
            f(&c.false_expr);
        }
        Expression::FuncCall(c) => c.args.iter().for_each(f),
        Expression::Traversal(t) => {
            f(&t.expr);
            for op in &t.operators {
                if let TraversalOperator::Index(ix) = op.value() {
                    f(ix);
                }
            }
        }
        Expression::UnaryOp(u) => f(&u.expr),
        Expression::BinaryOp(b) => {
            f(&b.lhs_expr);
            f(&b.rhs_expr);
        }
        Expression::ForExpr(fe) => {
            f(&fe.intro.collection_expr);
            if let Some(k) = &fe.key_expr {
                f(k);
            }
            f(&fe.value_expr);
            if let Some(c) = &fe.cond {
                f(&c.expr);
            }
        }
    }
}

fn template_children<'e>(t: &'e Template, f: &mut dyn FnMut(&'e Expression)) {
    for el in t.iter() {
        match el {
            Element::Literal(_) => {}
            Element::Interpolation(i) => f(&i.expr),
            Element::Directive(d) => match d.as_ref() {
                Directive::If(d) => {
                    f(&d.if_expr.cond_expr);
                    template_children(&d.if_expr.template, f);
                    if let Some(e) = &d.else_expr {
                        template_children(&e.template, f);
                    }
                }
                Directive::For(d) => {
                    f(&d.for_expr.collection_expr);
                    template_children(&d.for_expr.template, f);
                }
            },
        }
    }
}

/// Resolves the `locals` blocks of a job file, in dependency order whatever the order they are
/// written in.
pub(super) fn resolve_locals(
    src: &str,
    blocks: &[&Block],
    vars: &Map<String, Value>,
    budget: &Budget,
) -> Result<Map<String, Value>, SpecError> {
    let mut problems = Vec::new();
    let mut attrs: Vec<&Attribute> = Vec::new();
    for b in blocks {
        if !b.labels.is_empty() {
            problems.push(problem_at(
                src,
                b.span(),
                "a locals block takes no label: locals { name = value }",
            ));
        }
        collect_locals(src, &b.body, &mut attrs, &mut problems);
    }
    let index: HashMap<&str, usize> = attrs
        .iter()
        .enumerate()
        .map(|(i, a)| (a.key.as_str(), i))
        .collect();

    // deps[i]: the locals that local i needs.
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(attrs.len());
    let mut failed = vec![false; attrs.len()];
    for (i, a) in attrs.iter().enumerate() {
        let mut refs = Vec::new();
        local_refs(&a.value, &mut refs);
        let mut d = Vec::new();
        for r in refs {
            match r {
                LocalRef::All => d.extend((0..attrs.len()).filter(|j| *j != i)),
                LocalRef::Name(n, span) => match index.get(n.as_str()) {
                    Some(j) => d.push(*j),
                    None => {
                        problems.push(problem_at(
                            src,
                            span,
                            format!("there is no local value named \"{n}\""),
                        ));
                        if let Some(f) = failed.get_mut(i) {
                            *f = true;
                        }
                    }
                },
            }
        }
        d.sort_unstable();
        d.dedup();
        deps.push(d);
    }

    // Kahn's algorithm: what is left at the end sits on or behind a cycle.
    let n = attrs.len();
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            if let Some(u) = users.get_mut(j) {
                u.push(i);
            }
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting.get(i) == Some(&0)).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &u in users.get(i).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(w) = waiting.get_mut(u) {
                *w -= 1;
                if *w == 0 {
                    ready.push(u);
                }
            }
        }
    }
    if order.len() < n {
        let stuck: Vec<usize> = (0..n)
            .filter(|i| waiting.get(*i).is_some_and(|w| *w > 0))
            .collect();
        if let Some(cycle) = find_cycle(&stuck, &deps) {
            let names: Vec<String> = cycle
                .iter()
                .filter_map(|i| attrs.get(*i))
                .map(|a| format!("local.{}", a.key.as_str()))
                .collect();
            let first = cycle.first().and_then(|i| attrs.get(*i));
            problems.push(problem_at(
                src,
                first.and_then(|a| a.span()),
                format!(
                    "local values refer to each other in a cycle: {}",
                    names.join(" -> ")
                ),
            ));
        } else {
            problems.push(Problem::new("local values refer to each other in a cycle"));
        }
    }

    let mut values = Map::new();
    for i in order {
        let Some(a) = attrs.get(i) else { continue };
        if failed.get(i) == Some(&true) {
            continue;
        }
        if deps
            .get(i)
            .is_some_and(|d| d.iter().any(|j| failed.get(*j) == Some(&true)))
        {
            if let Some(f) = failed.get_mut(i) {
                *f = true;
            }
            continue;
        }
        let ev = Eval::new(src, Names::Known(vars), Names::Known(&values), budget);
        match ev.value(&a.value, &Scope::Root) {
            Ok(v) => {
                values.insert(a.key.as_str().to_string(), v);
            }
            Err(e) => {
                problems.push(problem_at(src, e.span, e.message));
                if let Some(f) = failed.get_mut(i) {
                    *f = true;
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(SpecError::Invalid(problems))
    }
}

fn collect_locals<'b>(
    src: &str,
    body: &'b Body,
    attrs: &mut Vec<&'b Attribute>,
    problems: &mut Vec<Problem>,
) {
    for s in body.iter() {
        match s {
            Structure::Attribute(a) => {
                if let Some(first) = attrs.iter().find(|b| b.key.as_str() == a.key.as_str()) {
                    let at = pos_of(src, first.span().as_ref())
                        .map(|p| format!("; first defined at {p}"))
                        .unwrap_or_default();
                    problems.push(problem_at(
                        src,
                        a.span(),
                        format!("local value \"{}\" is defined twice{at}", a.key.as_str()),
                    ));
                } else {
                    attrs.push(a);
                }
            }
            Structure::Block(b) => problems.push(problem_at(
                src,
                b.span(),
                format!(
                    "a locals block holds only name = value lines; found a block \"{}\"",
                    b.ident.as_str()
                ),
            )),
        }
    }
}

/// A cycle among `stuck` nodes (each of which has a dependency among them), as a path that
/// starts and ends at the same node.
fn find_cycle(stuck: &[usize], deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    let mut cur = *stuck.first()?;
    let mut path = vec![cur];
    for _ in 0..=stuck.len() {
        let next = deps.get(cur)?.iter().copied().find(|d| stuck.contains(d))?;
        if let Some(start) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<usize> = path.get(start..)?.to_vec();
            cycle.push(next);
            return Some(cycle);
        }
        path.push(next);
        cur = next;
    }
    None
}
