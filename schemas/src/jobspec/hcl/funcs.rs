//! The functions a jobspec can call: the commonly used part of Nomad's (Terraform's) library.
//! `try` and `can` need lazy arguments and live in the evaluator; `file` is not offered.

use super::value::{
    MAX_STRING, Num, describe, equal, float_value, format_number, num_of, num_value, to_bool,
    to_key, to_str,
};
use serde_json::{Map, Value};

/// Longest list `range` may build, as in Terraform.
const MAX_RANGE: usize = 1024;
/// Largest width or precision a `format` verb may ask for.
const MAX_WIDTH: usize = 4096;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FnError {
    /// No function has that name.
    Unknown,
    /// The argument at this index is wrong.
    Arg(usize, String),
    /// Something else, e.g. the number of arguments.
    Msg(String),
}

type FnResult = Result<Value, FnError>;

/// The names of the functions offered, for documentation and tests.
pub(super) const NAMES: &[&str] = &[
    "abs",
    "alltrue",
    "anytrue",
    "base64decode",
    "base64encode",
    "can",
    "ceil",
    "chomp",
    "coalesce",
    "coalescelist",
    "compact",
    "concat",
    "contains",
    "distinct",
    "element",
    "endswith",
    "flatten",
    "floor",
    "format",
    "index",
    "indent",
    "join",
    "jsondecode",
    "jsonencode",
    "keys",
    "length",
    "lookup",
    "lower",
    "max",
    "merge",
    "min",
    "one",
    "parseint",
    "pow",
    "range",
    "regex",
    "regexall",
    "replace",
    "reverse",
    "signum",
    "slice",
    "sort",
    "split",
    "startswith",
    "strcontains",
    "strrev",
    "substr",
    "sum",
    "title",
    "tobool",
    "tolist",
    "tomap",
    "tonumber",
    "toset",
    "tostring",
    "trim",
    "trimprefix",
    "trimspace",
    "trimsuffix",
    "try",
    "upper",
    "values",
    "zipmap",
];

/// Calls the function `name`.
pub(super) fn call(name: &str, args: Vec<Value>) -> FnResult {
    let out = call_inner(name, args)?;
    match &out {
        Value::String(s) if s.len() > MAX_STRING => Err(FnError::Msg(format!(
            "the result is a string longer than {MAX_STRING} bytes"
        ))),
        _ => Ok(out),
    }
}

fn call_inner(name: &str, args: Vec<Value>) -> FnResult {
    match name {
        // Strings.
        "upper" => one_str(&args, |s| s.to_uppercase()),
        "lower" => one_str(&args, |s| s.to_lowercase()),
        "title" => one_str(&args, title),
        "trimspace" => one_str(&args, |s| s.trim().to_string()),
        "strrev" => one_str(&args, |s| s.chars().rev().collect()),
        "chomp" => one_str(&args, |s| s.trim_end_matches(['\n', '\r']).to_string()),
        "trimprefix" => {
            arity(&args, 2, 2)?;
            let (s, p) = (string(&args, 0)?, string(&args, 1)?);
            Ok(Value::String(
                s.strip_prefix(p.as_str()).unwrap_or(&s).to_string(),
            ))
        }
        "trimsuffix" => {
            arity(&args, 2, 2)?;
            let (s, p) = (string(&args, 0)?, string(&args, 1)?);
            Ok(Value::String(
                s.strip_suffix(p.as_str()).unwrap_or(&s).to_string(),
            ))
        }
        "trim" => {
            arity(&args, 2, 2)?;
            let (s, cut) = (string(&args, 0)?, string(&args, 1)?);
            Ok(Value::String(
                s.trim_matches(|c| cut.contains(c)).to_string(),
            ))
        }
        "startswith" | "endswith" | "strcontains" => {
            arity(&args, 2, 2)?;
            let (s, p) = (string(&args, 0)?, string(&args, 1)?);
            Ok(Value::Bool(match name {
                "startswith" => s.starts_with(p.as_str()),
                "endswith" => s.ends_with(p.as_str()),
                _ => s.contains(p.as_str()),
            }))
        }
        "format" => {
            arity(&args, 1, usize::MAX)?;
            let f = string(&args, 0)?;
            format(&f, args.get(1..).unwrap_or(&[])).map(Value::String)
        }
        "join" => join(&args),
        "split" => {
            arity(&args, 2, 2)?;
            let (sep, s) = (string(&args, 0)?, string(&args, 1)?);
            let parts: Vec<Value> = if sep.is_empty() {
                s.chars().map(|c| Value::String(c.to_string())).collect()
            } else {
                s.split(sep.as_str())
                    .map(|p| Value::String(p.to_string()))
                    .collect()
            };
            Ok(Value::Array(parts))
        }
        "replace" => replace(&args),
        "substr" => substr(&args),
        "indent" => {
            arity(&args, 2, 2)?;
            let n = usize::try_from(int(&args, 0)?)
                .map_err(|_| FnError::Arg(0, "must not be negative".into()))?;
            if n > MAX_WIDTH {
                return Err(FnError::Arg(0, format!("must be at most {MAX_WIDTH}")));
            }
            let s = string(&args, 1)?;
            let pad = " ".repeat(n);
            Ok(Value::String(s.replace('\n', &format!("\n{pad}"))))
        }
        "regex" | "regexall" => regex_fn(name == "regexall", &args),
        // Collections.
        "length" => {
            arity(&args, 1, 1)?;
            match args.first() {
                Some(Value::String(s)) => Ok(Value::from(s.chars().count())),
                Some(Value::Array(a)) => Ok(Value::from(a.len())),
                Some(Value::Object(o)) => Ok(Value::from(o.len())),
                Some(other) => Err(FnError::Arg(
                    0,
                    format!(
                        "a string, list or object is required, found {}",
                        describe(other)
                    ),
                )),
                None => Err(FnError::Msg("takes exactly 1 argument".into())),
            }
        }
        "concat" => {
            let mut out = Vec::new();
            for i in 0..args.len() {
                out.extend(list(&args, i)?.iter().cloned());
            }
            Ok(Value::Array(out))
        }
        "contains" => {
            arity(&args, 2, 2)?;
            let (l, v) = (list(&args, 0)?, arg(&args, 1)?);
            Ok(Value::Bool(l.iter().any(|x| equal(x, v))))
        }
        "index" => {
            arity(&args, 2, 2)?;
            let (l, v) = (list(&args, 0)?, arg(&args, 1)?);
            l.iter()
                .position(|x| equal(x, v))
                .map(Value::from)
                .ok_or_else(|| FnError::Arg(1, "the value is not in the list".into()))
        }
        "element" => {
            arity(&args, 2, 2)?;
            let l = list(&args, 0)?;
            let i = int(&args, 1)?;
            if l.is_empty() {
                return Err(FnError::Arg(
                    0,
                    "cannot use element() with an empty list".into(),
                ));
            }
            let i = usize::try_from(i)
                .map_err(|_| FnError::Arg(1, "the index must not be negative".into()))?;
            l.get(i % l.len())
                .cloned()
                .ok_or_else(|| FnError::Arg(1, "index out of range".into()))
        }
        "keys" | "values" => {
            arity(&args, 1, 1)?;
            let o = object(&args, 0)?;
            let mut entries: Vec<(&String, &Value)> = o.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Ok(Value::Array(if name == "keys" {
                entries
                    .into_iter()
                    .map(|(k, _)| Value::String(k.clone()))
                    .collect()
            } else {
                entries.into_iter().map(|(_, v)| v.clone()).collect()
            }))
        }
        "lookup" => {
            arity(&args, 2, 3)?;
            let o = object(&args, 0)?;
            let k = to_key(arg(&args, 1)?).map_err(|m| FnError::Arg(1, m))?;
            match (o.get(&k), args.get(2)) {
                (Some(v), _) => Ok(v.clone()),
                (None, Some(d)) => Ok(d.clone()),
                (None, None) => Err(FnError::Arg(
                    1,
                    format!("the object has no key \"{k}\" and no default was given"),
                )),
            }
        }
        "merge" => {
            let mut out = Map::new();
            for (i, a) in args.iter().enumerate() {
                match a {
                    Value::Null => {}
                    Value::Object(o) => out.extend(o.iter().map(|(k, v)| (k.clone(), v.clone()))),
                    other => {
                        return Err(FnError::Arg(
                            i,
                            format!("an object is required, found {}", describe(other)),
                        ));
                    }
                }
            }
            Ok(Value::Object(out))
        }
        "zipmap" => {
            arity(&args, 2, 2)?;
            let (ks, vs) = (list(&args, 0)?, list(&args, 1)?);
            if ks.len() != vs.len() {
                return Err(FnError::Msg(format!(
                    "the lists have different lengths ({} and {})",
                    ks.len(),
                    vs.len()
                )));
            }
            let mut out = Map::new();
            for (k, v) in ks.iter().zip(vs) {
                out.insert(to_key(k).map_err(|m| FnError::Arg(0, m))?, v.clone());
            }
            Ok(Value::Object(out))
        }
        "coalesce" => args
            .iter()
            .find(|v| !matches!(v, Value::Null) && v.as_str() != Some(""))
            .cloned()
            .ok_or_else(|| FnError::Msg("no non-null, non-empty argument".into())),
        "coalescelist" => {
            for i in 0..args.len() {
                if !list(&args, i)?.is_empty() {
                    return Ok(arg(&args, i)?.clone());
                }
            }
            Err(FnError::Msg("no non-empty list argument".into()))
        }
        "compact" => {
            arity(&args, 1, 1)?;
            let l = list(&args, 0)?;
            Ok(Value::Array(
                l.iter()
                    .filter(|v| !matches!(v, Value::Null) && v.as_str() != Some(""))
                    .cloned()
                    .collect(),
            ))
        }
        "distinct" | "toset" => {
            arity(&args, 1, 1)?;
            Ok(Value::Array(distinct(list(&args, 0)?)))
        }
        "flatten" => {
            arity(&args, 1, 1)?;
            let mut out = Vec::new();
            flatten(list(&args, 0)?, &mut out, 0)?;
            Ok(Value::Array(out))
        }
        "reverse" => {
            arity(&args, 1, 1)?;
            Ok(Value::Array(
                list(&args, 0)?.iter().rev().cloned().collect(),
            ))
        }
        "slice" => {
            arity(&args, 3, 3)?;
            let l = list(&args, 0)?;
            let start = usize::try_from(int(&args, 1)?)
                .map_err(|_| FnError::Arg(1, "must not be negative".into()))?;
            let end = usize::try_from(int(&args, 2)?)
                .map_err(|_| FnError::Arg(2, "must not be negative".into()))?;
            l.get(start..end)
                .map(|s| Value::Array(s.to_vec()))
                .ok_or_else(|| {
                    FnError::Msg(format!(
                        "invalid range {start}..{end} for a list of {} element(s)",
                        l.len()
                    ))
                })
        }
        "sort" => {
            arity(&args, 1, 1)?;
            let l = list(&args, 0)?;
            let mut strs = l
                .iter()
                .map(to_str)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| FnError::Arg(0, format!("every element must be a string: {m}")))?;
            strs.sort();
            Ok(Value::Array(strs.into_iter().map(Value::String).collect()))
        }
        "range" => range(&args),
        "one" => {
            arity(&args, 1, 1)?;
            let l = list(&args, 0)?;
            match l.as_slice() {
                [] => Ok(Value::Null),
                [v] => Ok(v.clone()),
                _ => Err(FnError::Arg(
                    0,
                    format!("must have at most one element, has {}", l.len()),
                )),
            }
        }
        "alltrue" | "anytrue" => {
            arity(&args, 1, 1)?;
            let bools = list(&args, 0)?
                .iter()
                .map(to_bool)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| FnError::Arg(0, m))?;
            Ok(Value::Bool(if name == "alltrue" {
                bools.iter().all(|b| *b)
            } else {
                bools.iter().any(|b| *b)
            }))
        }
        "sum" => {
            arity(&args, 1, 1)?;
            let l = list(&args, 0)?;
            if l.is_empty() {
                return Err(FnError::Arg(0, "cannot sum an empty list".into()));
            }
            let mut total = Num::Int(0);
            for v in l {
                let n = num_of(v).ok_or_else(|| {
                    FnError::Arg(
                        0,
                        format!("every element must be a number, found {}", describe(v)),
                    )
                })?;
                total = match (total, n) {
                    (Num::Int(a), Num::Int(b)) => a
                        .checked_add(b)
                        .map_or(Num::Float(a as f64 + b as f64), Num::Int),
                    (a, b) => Num::Float(a.as_f64() + b.as_f64()),
                };
            }
            num_value(total).map_err(FnError::Msg)
        }
        // Numbers.
        "min" | "max" => {
            arity(&args, 1, usize::MAX)?;
            let mut best: Option<(Num, usize)> = None;
            for i in 0..args.len() {
                let n = number(&args, i)?;
                let better = match best {
                    None => true,
                    Some((b, _)) => {
                        if name == "min" {
                            n.as_f64() < b.as_f64()
                        } else {
                            n.as_f64() > b.as_f64()
                        }
                    }
                };
                if better {
                    best = Some((n, i));
                }
            }
            match best {
                Some((n, _)) => num_value(n).map_err(FnError::Msg),
                None => Err(FnError::Msg("needs at least one argument".into())),
            }
        }
        "abs" => {
            arity(&args, 1, 1)?;
            match number(&args, 0)? {
                Num::Int(i) => Ok(i.checked_abs().map_or_else(
                    || float_value((i as f64).abs()).unwrap_or(Value::Null),
                    Value::from,
                )),
                Num::Float(f) => float_value(f.abs()).map_err(FnError::Msg),
            }
        }
        "ceil" | "floor" | "signum" => {
            arity(&args, 1, 1)?;
            let f = number(&args, 0)?.as_f64();
            let r = match name {
                "ceil" => f.ceil(),
                "floor" => f.floor(),
                _ => {
                    if f > 0.0 {
                        1.0
                    } else if f < 0.0 {
                        -1.0
                    } else {
                        0.0
                    }
                }
            };
            float_value(r).map_err(FnError::Msg)
        }
        "pow" => {
            arity(&args, 2, 2)?;
            let (b, e) = (number(&args, 0)?.as_f64(), number(&args, 1)?.as_f64());
            float_value(b.powf(e)).map_err(FnError::Msg)
        }
        "parseint" => {
            arity(&args, 2, 2)?;
            let s = string(&args, 0)?;
            let base = int(&args, 1)?;
            let base = u32::try_from(base)
                .ok()
                .filter(|b| (2..=36).contains(b))
                .ok_or_else(|| FnError::Arg(1, "the base must be between 2 and 36".into()))?;
            i64::from_str_radix(&s, base)
                .map(Value::from)
                .map_err(|_| FnError::Arg(0, format!("{s:?} is not a base-{base} integer")))
        }
        // Conversions and encodings.
        "tostring" => {
            arity(&args, 1, 1)?;
            match arg(&args, 0)? {
                Value::Null => Ok(Value::Null),
                v => to_str(v).map(Value::String).map_err(|m| FnError::Arg(0, m)),
            }
        }
        "tonumber" => {
            arity(&args, 1, 1)?;
            match arg(&args, 0)? {
                Value::Null => Ok(Value::Null),
                v => num_of(v)
                    .ok_or_else(|| {
                        FnError::Arg(0, format!("cannot convert {} to a number", describe(v)))
                    })
                    .and_then(|n| num_value(n).map_err(FnError::Msg)),
            }
        }
        "tobool" => {
            arity(&args, 1, 1)?;
            match arg(&args, 0)? {
                Value::Null => Ok(Value::Null),
                v => to_bool(v).map(Value::Bool).map_err(|m| FnError::Arg(0, m)),
            }
        }
        "tolist" => {
            arity(&args, 1, 1)?;
            list(&args, 0).map(|l| Value::Array(l.clone()))
        }
        "tomap" => {
            arity(&args, 1, 1)?;
            object(&args, 0).map(|o| Value::Object(o.clone()))
        }
        "jsonencode" => {
            arity(&args, 1, 1)?;
            serde_json::to_string(arg(&args, 0)?)
                .map(Value::String)
                .map_err(|e| FnError::Arg(0, e.to_string()))
        }
        "jsondecode" => {
            arity(&args, 1, 1)?;
            let s = string(&args, 0)?;
            serde_json::from_str::<Value>(&s)
                .map(normalize)
                .map_err(|e| FnError::Arg(0, format!("invalid JSON: {e}")))
        }
        "base64encode" => one_str(&args, |s| base64_encode(s.as_bytes())),
        "base64decode" => {
            arity(&args, 1, 1)?;
            let s = string(&args, 0)?;
            let bytes =
                base64_decode(&s).ok_or_else(|| FnError::Arg(0, "invalid base64".into()))?;
            String::from_utf8(bytes)
                .map(Value::String)
                .map_err(|_| FnError::Arg(0, "the decoded bytes are not UTF-8 text".into()))
        }
        _ => Err(FnError::Unknown),
    }
}

fn arity(args: &[Value], min: usize, max: usize) -> Result<(), FnError> {
    let n = args.len();
    if n >= min && n <= max {
        return Ok(());
    }
    let want = if min == max {
        format!("exactly {min} argument{}", if min == 1 { "" } else { "s" })
    } else if max == usize::MAX {
        format!("at least {min} argument{}", if min == 1 { "" } else { "s" })
    } else {
        format!("{min} to {max} arguments")
    };
    Err(FnError::Msg(format!("takes {want}, got {n}")))
}

fn arg(args: &[Value], i: usize) -> Result<&Value, FnError> {
    args.get(i)
        .ok_or_else(|| FnError::Msg(format!("argument {} is missing", i + 1)))
}

fn string(args: &[Value], i: usize) -> Result<String, FnError> {
    to_str(arg(args, i)?).map_err(|m| FnError::Arg(i, m))
}

fn number(args: &[Value], i: usize) -> Result<Num, FnError> {
    let v = arg(args, i)?;
    num_of(v).ok_or_else(|| FnError::Arg(i, format!("a number is required, found {}", describe(v))))
}

fn int(args: &[Value], i: usize) -> Result<i64, FnError> {
    number(args, i)?
        .as_int()
        .ok_or_else(|| FnError::Arg(i, "a whole number is required".into()))
}

fn list(args: &[Value], i: usize) -> Result<&Vec<Value>, FnError> {
    match arg(args, i)? {
        Value::Array(a) => Ok(a),
        other => Err(FnError::Arg(
            i,
            format!("a list is required, found {}", describe(other)),
        )),
    }
}

fn object(args: &[Value], i: usize) -> Result<&Map<String, Value>, FnError> {
    match arg(args, i)? {
        Value::Object(o) => Ok(o),
        other => Err(FnError::Arg(
            i,
            format!("an object is required, found {}", describe(other)),
        )),
    }
}

fn one_str(args: &[Value], f: impl Fn(&str) -> String) -> FnResult {
    arity(args, 1, 1)?;
    Ok(Value::String(f(&string(args, 0)?)))
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at_word_start = true;
    for c in s.chars() {
        if at_word_start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        at_word_start = !c.is_alphanumeric();
    }
    out
}

fn join(args: &[Value]) -> FnResult {
    arity(args, 2, usize::MAX)?;
    let sep = string(args, 0)?;
    let mut parts = Vec::new();
    for i in 1..args.len() {
        for v in list(args, i)? {
            parts
                .push(to_str(v).map_err(|m| {
                    FnError::Arg(i, format!("every element must be a string: {m}"))
                })?);
        }
    }
    Ok(Value::String(parts.join(&sep)))
}

fn build_regex(pattern: &str, i: usize) -> Result<regex::Regex, FnError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| FnError::Arg(i, format!("invalid regular expression: {e}")))
}

fn replace(args: &[Value]) -> FnResult {
    arity(args, 3, 3)?;
    let (s, search, with) = (string(args, 0)?, string(args, 1)?, string(args, 2)?);
    if search.len() >= 2 && search.starts_with('/') && search.ends_with('/') {
        let re = build_regex(search.get(1..search.len() - 1).unwrap_or(""), 1)?;
        return Ok(Value::String(
            re.replace_all(&s, with.as_str()).into_owned(),
        ));
    }
    if search.is_empty() {
        return Ok(Value::String(s));
    }
    Ok(Value::String(s.replace(search.as_str(), &with)))
}

fn regex_fn(all: bool, args: &[Value]) -> FnResult {
    arity(args, 2, 2)?;
    let (pattern, s) = (string(args, 0)?, string(args, 1)?);
    let re = build_regex(&pattern, 0)?;
    let names: Vec<Option<&str>> = re.capture_names().skip(1).collect();
    let capture = |caps: regex::Captures<'_>| -> Value {
        let text = |m: Option<regex::Match<'_>>| {
            m.map_or(Value::Null, |m| Value::String(m.as_str().to_string()))
        };
        if names.is_empty() {
            text(caps.get(0))
        } else if names.iter().all(Option::is_some) {
            let mut o = Map::new();
            for (i, n) in names.iter().enumerate() {
                if let Some(n) = n {
                    o.insert((*n).to_string(), text(caps.get(i + 1)));
                }
            }
            Value::Object(o)
        } else {
            Value::Array((1..=names.len()).map(|i| text(caps.get(i))).collect())
        }
    };
    if all {
        Ok(Value::Array(re.captures_iter(&s).map(capture).collect()))
    } else {
        re.captures(&s)
            .map(capture)
            .ok_or_else(|| FnError::Msg("the pattern did not match the string".into()))
    }
}

fn substr(args: &[Value]) -> FnResult {
    arity(args, 3, 3)?;
    let s = string(args, 0)?;
    let offset = int(args, 1)?;
    let length = int(args, 2)?;
    let chars: Vec<char> = s.chars().collect();
    let len = i64::try_from(chars.len()).unwrap_or(i64::MAX);
    let start = if offset < 0 {
        (len + offset).max(0)
    } else {
        offset.min(len)
    };
    let end = if length < 0 {
        len
    } else {
        start.saturating_add(length).min(len)
    };
    let (start, end) = (
        usize::try_from(start).unwrap_or(0),
        usize::try_from(end).unwrap_or(0),
    );
    Ok(Value::String(
        chars
            .get(start..end.max(start))
            .map(|c| c.iter().collect())
            .unwrap_or_default(),
    ))
}

fn range(args: &[Value]) -> FnResult {
    arity(args, 1, 3)?;
    let (start, limit, step) = match args.len() {
        1 => (Num::Int(0), number(args, 0)?, None),
        2 => (number(args, 0)?, number(args, 1)?, None),
        _ => (number(args, 0)?, number(args, 1)?, Some(number(args, 2)?)),
    };
    let step = step.unwrap_or(if limit.as_f64() < start.as_f64() {
        Num::Int(-1)
    } else {
        Num::Int(1)
    });
    if step.as_f64() == 0.0 {
        return Err(FnError::Arg(2, "the step must not be zero".into()));
    }
    let mut out = Vec::new();
    if let (Num::Int(s), Num::Int(l), Num::Int(st)) = (start, limit, step) {
        let mut cur = s;
        while (st > 0 && cur < l) || (st < 0 && cur > l) {
            if out.len() >= MAX_RANGE {
                return Err(FnError::Msg(format!("more than {MAX_RANGE} values")));
            }
            out.push(Value::from(cur));
            match cur.checked_add(st) {
                Some(n) => cur = n,
                None => break,
            }
        }
    } else {
        let (s, l, st) = (start.as_f64(), limit.as_f64(), step.as_f64());
        let mut i = 0u32;
        loop {
            let cur = s + st * f64::from(i);
            if !((st > 0.0 && cur < l) || (st < 0.0 && cur > l)) {
                break;
            }
            if out.len() >= MAX_RANGE {
                return Err(FnError::Msg(format!("more than {MAX_RANGE} values")));
            }
            out.push(float_value(cur).map_err(FnError::Msg)?);
            i += 1;
        }
    }
    Ok(Value::Array(out))
}

fn distinct(l: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for v in l {
        if !out.iter().any(|o| equal(o, v)) {
            out.push(v.clone());
        }
    }
    out
}

fn flatten(l: &[Value], out: &mut Vec<Value>, depth: usize) -> Result<(), FnError> {
    if depth > 128 {
        return Err(FnError::Arg(0, "the list is nested too deeply".into()));
    }
    for v in l {
        match v {
            Value::Array(inner) => flatten(inner, out, depth + 1)?,
            other => out.push(other.clone()),
        }
    }
    Ok(())
}

/// Integral floats become integers, as everywhere else.
fn normalize(v: Value) -> Value {
    match v {
        Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => n
            .as_f64()
            .and_then(|f| float_value(f).ok())
            .unwrap_or(Value::Number(n)),
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

/// Go-style `format`: `%s %d %v %q %t %f %e %g %x %X %o %b %%`, with `-`, `+`, `0` and space
/// flags, a width and a precision.
fn format(f: &str, args: &[Value]) -> Result<String, FnError> {
    let mut out = String::new();
    let mut chars = f.chars().peekable();
    let mut next = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        let (mut left, mut zero, mut plus, mut space) = (false, false, false, false);
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                ' ' => space = true,
                '#' => {}
                _ => break,
            }
            chars.next();
        }
        let mut width = None;
        while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            width = Some(
                width
                    .unwrap_or(0usize)
                    .saturating_mul(10)
                    .saturating_add(d as usize),
            );
            chars.next();
        }
        let mut precision = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                p = p.saturating_mul(10).saturating_add(d as usize);
                chars.next();
            }
            precision = Some(p);
        }
        if width.unwrap_or(0) > MAX_WIDTH || precision.unwrap_or(0) > MAX_WIDTH {
            return Err(FnError::Arg(
                0,
                format!("a width or precision above {MAX_WIDTH} is not supported"),
            ));
        }
        let Some(verb) = chars.next() else {
            return Err(FnError::Arg(
                0,
                "the format string ends in the middle of a verb".into(),
            ));
        };
        let i = next + 1;
        let v = args.get(next).ok_or_else(|| {
            FnError::Msg(format!(
                "not enough arguments for the format string (verb %{verb})"
            ))
        })?;
        next += 1;
        let sign = |negative: bool| {
            if negative {
                "-"
            } else if plus {
                "+"
            } else if space {
                " "
            } else {
                ""
            }
        };
        let (prefix, body, numeric) = match verb {
            's' => {
                let mut s = to_str(v).map_err(|m| FnError::Arg(i, m))?;
                if let Some(p) = precision {
                    s = s.chars().take(p).collect();
                }
                ("", s, false)
            }
            'v' => (
                "",
                match v {
                    Value::Null => "null".to_string(),
                    Value::Array(_) | Value::Object(_) => {
                        serde_json::to_string(v).unwrap_or_default()
                    }
                    other => to_str(other).map_err(|m| FnError::Arg(i, m))?,
                },
                false,
            ),
            'q' => {
                let s = to_str(v).map_err(|m| FnError::Arg(i, m))?;
                ("", serde_json::to_string(&s).unwrap_or_default(), false)
            }
            't' => (
                "",
                to_bool(v).map_err(|m| FnError::Arg(i, m))?.to_string(),
                false,
            ),
            'd' | 'x' | 'X' | 'o' | 'b' => {
                let n = num_of(v).and_then(Num::as_int).ok_or_else(|| {
                    FnError::Arg(
                        i,
                        format!("%{verb} needs a whole number, found {}", describe(v)),
                    )
                })?;
                let mag = n.unsigned_abs();
                let body = match verb {
                    'd' => mag.to_string(),
                    'x' => format!("{mag:x}"),
                    'X' => format!("{mag:X}"),
                    'o' => format!("{mag:o}"),
                    _ => format!("{mag:b}"),
                };
                (sign(n < 0), body, true)
            }
            'f' | 'F' | 'e' | 'E' | 'g' | 'G' => {
                let n = num_of(v)
                    .ok_or_else(|| {
                        FnError::Arg(i, format!("%{verb} needs a number, found {}", describe(v)))
                    })?
                    .as_f64();
                let mag = n.abs();
                let body = match verb {
                    'f' | 'F' => format!("{mag:.*}", precision.unwrap_or(6)),
                    'e' => format!("{mag:.*e}", precision.unwrap_or(6)),
                    'E' => format!("{mag:.*E}", precision.unwrap_or(6)),
                    _ => match precision {
                        Some(p) => format!("{mag:.*}", p),
                        None => format_number(
                            &serde_json::Number::from_f64(mag).unwrap_or_else(|| 0.into()),
                        ),
                    },
                };
                (sign(n < 0.0), body, true)
            }
            other => return Err(FnError::Arg(0, format!("unsupported verb %{other}"))),
        };
        let len = prefix.chars().count() + body.chars().count();
        let pad = width.unwrap_or(0).saturating_sub(len);
        if left {
            out.push_str(prefix);
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if zero && numeric {
            out.push_str(prefix);
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(&body);
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(prefix);
            out.push_str(&body);
        }
    }
    if next < args.len() {
        return Err(FnError::Msg(format!(
            "too many arguments: the format string uses {next} but {} were given",
            args.len()
        )));
    }
    Ok(out)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(B64[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)?;
        acc = (acc << 6) | u32::try_from(v).ok()?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(name: &str, args: Value) -> Value {
        let Value::Array(args) = args else {
            panic!("args must be a list")
        };
        call(name, args).unwrap_or_else(|e| panic!("{name}: {e:?}"))
    }

    #[test]
    fn format_verbs() {
        assert_eq!(f("format", json!(["%s-%d", "web", 3])), json!("web-3"));
        assert_eq!(
            f("format", json!(["%v|%v|%v", "a", 1.5, [1]])),
            json!("a|1.5|[1]")
        );
        assert_eq!(
            f(
                "format",
                json!(["%05d|%-4s|%4s|%.2f|%q|%%", -42, "ab", "cd", 1.23456, "x"])
            ),
            json!("-0042|ab  |  cd|1.23|\"x\"|%")
        );
        assert_eq!(f("format", json!(["%x %t", 255, true])), json!("ff true"));
        assert!(call("format", vec![json!("%s %s"), json!("a")]).is_err());
        assert!(call("format", vec![json!("%s"), json!("a"), json!("b")]).is_err());
        assert!(call("format", vec![json!("%d"), json!(1.5)]).is_err());
        assert!(call("format", vec![json!("%99999s"), json!("a")]).is_err());
    }

    #[test]
    fn collection_functions() {
        assert_eq!(f("range", json!([3])), json!([0, 1, 2]));
        assert_eq!(f("range", json!([4, 1])), json!([4, 3, 2]));
        assert_eq!(f("range", json!([0, 1, 0.25])), json!([0, 0.25, 0.5, 0.75]));
        assert!(call("range", vec![json!(1_000_000)]).is_err());
        assert_eq!(f("element", json!([["a", "b"], 3])), json!("b"));
        assert_eq!(f("keys", json!([{"b": 1, "a": 2}])), json!(["a", "b"]));
        assert_eq!(f("values", json!([{"b": 1, "a": 2}])), json!([2, 1]));
        assert_eq!(
            f("merge", json!([{"a": 1}, null, {"a": 2, "b": 3}])),
            json!({"a": 2, "b": 3})
        );
        assert_eq!(f("flatten", json!([[1, [2, [3]], []]])), json!([1, 2, 3]));
        assert_eq!(f("distinct", json!([[1, 1.0, 2]])), json!([1, 2]));
        assert_eq!(f("slice", json!([[1, 2, 3], 1, 3])), json!([2, 3]));
        assert_eq!(f("zipmap", json!([["a"], [1]])), json!({"a": 1}));
        assert_eq!(f("coalesce", json!([null, "", "x"])), json!("x"));
        assert_eq!(f("lookup", json!([{"a": 1}, "b", 7])), json!(7));
        assert_eq!(f("sum", json!([[1, 2.5]])), json!(3.5));
    }

    #[test]
    fn string_functions() {
        assert_eq!(f("substr", json!(["hello", 1, 3])), json!("ell"));
        assert_eq!(f("substr", json!(["hello", -3, -1])), json!("llo"));
        assert_eq!(f("substr", json!(["hi", 5, 1])), json!(""));
        assert_eq!(f("replace", json!(["a-b-c", "-", "+"])), json!("a+b+c"));
        assert_eq!(
            f("replace", json!(["v1.2.3", "/v(\\d+).*/", "$1"])),
            json!("1")
        );
        assert_eq!(
            f("title", json!(["hello big world"])),
            json!("Hello Big World")
        );
        assert_eq!(
            f(
                "regex",
                json!(["(?P<major>\\d+)\\.(?P<minor>\\d+)", "v1.22"])
            ),
            json!({"major": "1", "minor": "22"})
        );
        assert_eq!(f("regexall", json!(["\\d", "a1b2"])), json!(["1", "2"]));
        assert_eq!(f("base64encode", json!(["hello!?"])), json!("aGVsbG8hPw=="));
        assert_eq!(f("base64decode", json!(["aGVsbG8hPw=="])), json!("hello!?"));
        assert_eq!(
            f("jsondecode", json!(["{\"a\": [1.0, 2.5]}"])),
            json!({"a": [1, 2.5]})
        );
        assert_eq!(f("split", json!([",", "a,b"])), json!(["a", "b"]));
        assert_eq!(f("chomp", json!(["x\r\n\n"])), json!("x"));
        assert_eq!(f("indent", json!([2, "a\nb"])), json!("a\n  b"));
        assert_eq!(call("nope", vec![]), Err(FnError::Unknown));
    }
}
