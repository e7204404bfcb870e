//! The functions a template can call: Go's builtins (`printf`, `eq`, `len`, …) and the
//! consul-template helpers Nomad job files use (`env`, `toUpper`, `split`, `toJSON`,
//! `nomadService`, …). Functions that read Consul, Vault or Nomad variables are recognised
//! and refused with a message saying why.

use super::exec::{Options, Value};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Every function a template may call (plus `and`/`or`, which the executor evaluates lazily).
const SUPPORTED: &[&str] = &[
    "and",
    "or",
    "not",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "len",
    "index",
    "print",
    "printf",
    "println",
    "env",
    "envOrDefault",
    "mustEnv",
    "toUpper",
    "toLower",
    "trimSpace",
    "trim",
    "trimPrefix",
    "trimSuffix",
    "replaceAll",
    "regexReplaceAll",
    "regexMatch",
    "split",
    "join",
    "contains",
    "in",
    "parseInt",
    "parseFloat",
    "parseBool",
    "parseJSON",
    "base64Encode",
    "base64Decode",
    "base64URLEncode",
    "base64URLDecode",
    "toJSON",
    "toJSONPretty",
    "add",
    "subtract",
    "multiply",
    "divide",
    "modulo",
    "nomadService",
];

/// Functions Nomad's templates know that Caravan does not provide, and why.
fn unsupported(name: &str) -> Option<&'static str> {
    Some(match name {
        "key" | "keyExists" | "keyOrDefault" | "ls" | "safeLs" | "tree" | "safeTree" => {
            "it reads Consul's KV store, which Caravan does not use"
        }
        "service" | "services" | "connect" | "caLeaf" | "caRoots" | "datacenters" | "node"
        | "nodes" | "partitions" | "peerings" | "exportedServices" => {
            "it reads Consul's catalog, which Caravan does not use; use nomadService"
        }
        "secret" | "secrets" | "pkiCert" | "pkiSign" => {
            "it reads Vault, which Caravan does not integrate with"
        }
        "nomadVar" | "nomadVarList" | "nomadVarListSafe" | "nomadVarExists" => {
            "Nomad variables are not available to templates yet"
        }
        "nomadServices" => "listing every service is not available to templates yet",
        "file"
        | "plugin"
        | "writeToFile"
        | "executeTemplate"
        | "sockaddr"
        | "timestamp"
        | "loop"
        | "byKey"
        | "byTag"
        | "byMeta"
        | "explode"
        | "explodeMap"
        | "containsAll"
        | "containsAny"
        | "containsNone"
        | "containsNotAll"
        | "toYAML"
        | "toTOML"
        | "parseYAML"
        | "parseUint"
        | "sha256Hex"
        | "md5sum"
        | "hmacSHA256Hex"
        | "toTitle"
        | "splitToMap"
        | "toUnescapedJSON"
        | "toUnescapedJSONPretty"
        | "mergeMap"
        | "mergeMapWithOverride"
        | "maximum"
        | "minimum"
        | "indent"
        | "spew_dump"
        | "spew_printf"
        | "spew_sdump"
        | "spew_sprintf"
        | "html"
        | "js"
        | "urlquery"
        | "call"
        | "slice" => "Caravan's templates do not implement it",
        n if n.starts_with("sprig_") => "Caravan's templates do not implement sprig functions",
        _ => return None,
    })
}

/// Whether `name` can be called; otherwise the message for the template's author.
pub fn check_defined(name: &str) -> Result<(), String> {
    if SUPPORTED.contains(&name) {
        return Ok(());
    }
    match unsupported(name) {
        Some(why) => Err(format!("function {name:?} is not supported: {why}")),
        None => Err(format!("function {name:?} not defined")),
    }
}

fn arity(name: &str, args: &[Value], want: usize) -> Result<(), String> {
    if args.len() == want {
        Ok(())
    } else {
        Err(format!(
            "wrong number of args for {name}: want {want} got {}",
            args.len()
        ))
    }
}

fn string(v: &Value) -> Result<&str, String> {
    match v {
        Value::Str(s) => Ok(s),
        other => Err(format!(
            "wrong type for value; expected string; got {}",
            other.type_name()
        )),
    }
}

fn strings(v: &Value) -> Result<Vec<&str>, String> {
    match v {
        Value::List(items) => items.iter().map(string).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(format!(
            "wrong type for value; expected []string; got {}",
            other.type_name()
        )),
    }
}

fn strs<'a, const N: usize>(name: &str, args: &'a [Value]) -> Result<[&'a str; N], String> {
    arity(name, args, N)?;
    let mut out = [""; N];
    for (slot, v) in out.iter_mut().zip(args) {
        *slot = string(v)?;
    }
    Ok(out)
}

fn s(v: impl Into<String>) -> Value {
    Value::Str(v.into())
}

/// Calls `name` with its evaluated arguments (a piped value comes last).
pub fn call(name: &str, args: Vec<Value>, opts: &Options<'_>) -> Result<Value, String> {
    let called = |e: String| format!("error calling {name}: {e}");
    match name {
        "not" => {
            arity(name, &args, 1)?;
            Ok(Value::Bool(!args[0].is_true()))
        }
        "eq" => {
            if args.len() < 2 {
                return Err(called("missing argument for comparison".into()));
            }
            for other in &args[1..] {
                if basic_eq(&args[0], other).map_err(called)? {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        "ne" => {
            arity(name, &args, 2)?;
            Ok(Value::Bool(!basic_eq(&args[0], &args[1]).map_err(called)?))
        }
        "lt" | "le" | "gt" | "ge" => {
            arity(name, &args, 2)?;
            let ord = compare(&args[0], &args[1]).map_err(called)?;
            use std::cmp::Ordering::*;
            Ok(Value::Bool(match name {
                "lt" => ord == Less,
                "le" => ord != Greater,
                "gt" => ord == Greater,
                _ => ord != Less,
            }))
        }
        "len" => {
            arity(name, &args, 1)?;
            let n = match &args[0] {
                Value::Str(s) => s.len(),
                Value::List(l) => l.len(),
                Value::Map(m) => m.len(),
                other => return Err(called(format!("len of type {}", other.type_name()))),
            };
            Ok(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
        }
        "index" => {
            let Some((item, keys)) = args.split_first() else {
                return Err("wrong number of args for index: want at least 1 got 0".into());
            };
            let mut v = item.clone();
            for k in keys {
                v = match (v, k) {
                    (Value::List(l), Value::Int(i)) => {
                        let at = usize::try_from(*i).ok().filter(|i| *i < l.len());
                        match at {
                            Some(at) => l[at].clone(),
                            None => return Err(called(format!("index out of range: {i}"))),
                        }
                    }
                    (Value::Map(m), Value::Str(key)) => m.get(key).cloned().unwrap_or(Value::Nil),
                    (Value::Nil, _) => return Err(called("index of untyped nil".into())),
                    (v, k) => {
                        return Err(called(format!(
                            "cannot index {} with {}",
                            v.type_name(),
                            k.type_name()
                        )));
                    }
                };
            }
            Ok(v)
        }
        "print" => Ok(s(sprint(&args))),
        "println" => {
            let parts: Vec<String> = args.iter().map(format_value).collect();
            Ok(s(parts.join(" ") + "\n"))
        }
        "printf" => {
            let Some((fmt, rest)) = args.split_first() else {
                return Err("wrong number of args for printf: want at least 1 got 0".into());
            };
            Ok(s(sprintf(string(fmt)?, rest)))
        }
        "env" => {
            let [key] = strs(name, &args)?;
            Ok(s(opts.lookup.env(key).unwrap_or_default()))
        }
        "envOrDefault" => {
            let [key, default] = strs(name, &args)?;
            Ok(s(opts
                .lookup
                .env(key)
                .unwrap_or_else(|| default.to_owned())))
        }
        "mustEnv" => {
            let [key] = strs(name, &args)?;
            match opts.lookup.env(key).filter(|v| !v.is_empty()) {
                Some(v) => Ok(s(v)),
                None => Err(called(format!(
                    "required environment variable {key} is empty"
                ))),
            }
        }
        "toUpper" => Ok(s(strs::<1>(name, &args)?[0].to_uppercase())),
        "toLower" => Ok(s(strs::<1>(name, &args)?[0].to_lowercase())),
        "trimSpace" => Ok(s(strs::<1>(name, &args)?[0].trim())),
        "trim" => {
            let [cut, v] = strs(name, &args)?;
            Ok(s(v.trim_matches(|c| cut.contains(c))))
        }
        "trimPrefix" => {
            let [p, v] = strs(name, &args)?;
            Ok(s(v.strip_prefix(p).unwrap_or(v)))
        }
        "trimSuffix" => {
            let [p, v] = strs(name, &args)?;
            Ok(s(v.strip_suffix(p).unwrap_or(v)))
        }
        "replaceAll" => {
            let [from, to, v] = strs(name, &args)?;
            Ok(s(v.replace(from, to)))
        }
        "regexReplaceAll" => {
            let [re, with, v] = strs(name, &args)?;
            let re = regex::Regex::new(re).map_err(|e| called(e.to_string()))?;
            // Go's `$1`/`${name}` expansion is the regex crate's too.
            Ok(s(re.replace_all(v, with).into_owned()))
        }
        "regexMatch" => {
            let [re, v] = strs(name, &args)?;
            let re = regex::Regex::new(re).map_err(|e| called(e.to_string()))?;
            Ok(Value::Bool(re.is_match(v)))
        }
        "split" => {
            let [sep, v] = strs(name, &args)?;
            let v = v.trim();
            if v.is_empty() {
                return Ok(Value::List(Vec::new()));
            }
            let parts: Vec<Value> = if sep.is_empty() {
                v.chars().map(|c| s(c.to_string())).collect()
            } else {
                v.split(sep).map(s).collect()
            };
            Ok(Value::List(parts))
        }
        "join" => {
            arity(name, &args, 2)?;
            let sep = string(&args[0])?;
            Ok(s(strings(&args[1])?.join(sep)))
        }
        "in" | "contains" => {
            arity(name, &args, 2)?;
            let (list, item) = if name == "in" {
                (&args[0], &args[1])
            } else {
                (&args[1], &args[0])
            };
            match list {
                Value::List(l) => Ok(Value::Bool(
                    l.iter().any(|x| basic_eq(x, item).unwrap_or(false)),
                )),
                Value::Str(hay) => Ok(Value::Bool(hay.contains(string(item)?))),
                Value::Map(m) => Ok(Value::Bool(m.contains_key(string(item)?))),
                other => Err(called(format!("cannot look inside {}", other.type_name()))),
            }
        }
        "parseInt" => {
            let [v] = strs(name, &args)?;
            if v.is_empty() {
                return Ok(Value::Int(0));
            }
            v.parse::<i64>().map(Value::Int).map_err(|_| {
                called(format!(
                    "parseInt: strconv.ParseInt: parsing {v:?}: invalid syntax"
                ))
            })
        }
        "parseFloat" => {
            let [v] = strs(name, &args)?;
            if v.is_empty() {
                return Ok(Value::Float(0.0));
            }
            v.parse::<f64>().map(Value::Float).map_err(|_| {
                called(format!(
                    "parseFloat: strconv.ParseFloat: parsing {v:?}: invalid syntax"
                ))
            })
        }
        "parseBool" => {
            let [v] = strs(name, &args)?;
            match v {
                "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Value::Bool(false)),
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Value::Bool(true)),
                _ => Err(called(format!(
                    "parseBool: strconv.ParseBool: parsing {v:?}: invalid syntax"
                ))),
            }
        }
        "parseJSON" => {
            let [v] = strs(name, &args)?;
            if v.is_empty() {
                return Ok(Value::Map(BTreeMap::new()));
            }
            let json: serde_json::Value =
                serde_json::from_str(v).map_err(|e| called(e.to_string()))?;
            Ok(from_json(json))
        }
        "base64Encode" => Ok(s(
            base64::engine::general_purpose::STANDARD.encode(strs::<1>(name, &args)?[0])
        )),
        "base64URLEncode" => Ok(s(
            base64::engine::general_purpose::URL_SAFE.encode(strs::<1>(name, &args)?[0])
        )),
        "base64Decode" | "base64URLDecode" => {
            let [v] = strs(name, &args)?;
            let engine = if name == "base64Decode" {
                &base64::engine::general_purpose::STANDARD
            } else {
                &base64::engine::general_purpose::URL_SAFE
            };
            let bytes = engine.decode(v).map_err(|e| called(e.to_string()))?;
            String::from_utf8(bytes)
                .map(Value::Str)
                .map_err(|_| called("decoded data is not UTF-8 text".into()))
        }
        "toJSON" => {
            arity(name, &args, 1)?;
            let mut out = String::new();
            write_json(&mut out, &args[0], None, 0);
            Ok(s(out))
        }
        "toJSONPretty" => {
            arity(name, &args, 1)?;
            let mut out = String::new();
            write_json(&mut out, &args[0], Some("  "), 0);
            Ok(s(out))
        }
        "add" | "subtract" | "multiply" | "divide" | "modulo" => {
            arity(name, &args, 2)?;
            // consul-template's argument order: `{{ 5 | subtract 2 }}` is 5 - 2.
            arith(name, &args[1], &args[0]).map_err(called)
        }
        "nomadService" => {
            if args.len() != 1 {
                return Err(called(format!(
                    "expected one argument (\"[tag.]name\"), got {}; sharding with a count and key is not supported",
                    args.len()
                )));
            }
            let query = string(&args[0])?;
            Ok(Value::List(
                opts.lookup.nomad_service(query).map_err(called)?,
            ))
        }
        other => Err(format!("function {other:?} not defined")),
    }
}

fn arith(name: &str, a: &Value, b: &Value) -> Result<Value, String> {
    let unknown = |v: &Value| {
        format!(
            "{name}: unknown type for {} ({})",
            v.go_string(),
            v.type_name()
        )
    };
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => {
            let r = match name {
                "add" => x.checked_add(*y),
                "subtract" => x.checked_sub(*y),
                "multiply" => x.checked_mul(*y),
                "divide" | "modulo" if *y == 0 => {
                    return Err(format!("{name}: division by zero"));
                }
                "divide" => x.checked_div(*y),
                _ => x.checked_rem(*y),
            };
            r.map(Value::Int)
                .ok_or_else(|| format!("{name}: integer overflow"))
        }
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            let f = |v: &Value| match v {
                Value::Int(i) => *i as f64,
                Value::Float(f) => *f,
                _ => 0.0,
            };
            let (x, y) = (f(a), f(b));
            Ok(Value::Float(match name {
                "add" => x + y,
                "subtract" => x - y,
                "multiply" => x * y,
                "divide" if y == 0.0 => return Err(format!("{name}: division by zero")),
                "divide" => x / y,
                _ => return Err(format!("{name}: modulo needs whole numbers")),
            }))
        }
        (Value::Int(_) | Value::Float(_), other) | (other, _) => Err(unknown(other)),
    }
}

fn basic_eq(a: &Value, b: &Value) -> Result<bool, String> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(x == y),
        (Value::Float(x), Value::Float(y)) => Ok(x == y),
        (Value::Str(x), Value::Str(y)) => Ok(x == y),
        (Value::Bool(x), Value::Bool(y)) => Ok(x == y),
        (Value::Nil, Value::Nil) => Ok(true),
        (Value::List(_) | Value::Map(_) | Value::Object(_), _)
        | (_, Value::List(_) | Value::Map(_) | Value::Object(_)) => {
            Err("non-comparable type".into())
        }
        _ => Err("incompatible types for comparison".into()),
    }
}

fn compare(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
        (Value::Float(x), Value::Float(y)) => x
            .partial_cmp(y)
            .ok_or_else(|| "cannot order NaN".to_owned()),
        (Value::Str(x), Value::Str(y)) => Ok(x.cmp(y)),
        (
            Value::Int(_) | Value::Float(_) | Value::Str(_),
            Value::Int(_) | Value::Float(_) | Value::Str(_),
        ) => Err("incompatible types for comparison".into()),
        _ => Err("invalid type for comparison".into()),
    }
}

fn from_json(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(b),
        // Go decodes every JSON number as a float64.
        serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(a) => Value::List(a.into_iter().map(from_json).collect()),
        serde_json::Value::Object(o) => {
            Value::Map(o.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Go's fmt, as far as templates need it.

/// `%v`.
pub fn format_value(v: &Value) -> String {
    match v {
        Value::Nil => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => go_float(*f),
        Value::Str(s) => s.clone(),
        Value::List(l) => {
            let parts: Vec<String> = l.iter().map(format_value).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Map(m) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}:{}", format_value(v)))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
        Value::Object(o) => {
            let parts: Vec<String> = o.fields.iter().map(|(_, v)| format_value(v)).collect();
            format!("&{{{}}}", parts.join(" "))
        }
    }
}

/// A float as Go's `%v` prints it: shortest digits, exponent form outside 1e-4 ≤ |f| < 1e6
/// (so a large number from `parseJSON` prints as `1.23456789e+08`, as in Nomad).
fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let sci = format!("{f:e}");
    let exp: i32 = sci
        .split_once('e')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    if !(-4..6).contains(&exp) {
        go_exp(&sci)
    } else {
        format!("{f}")
    }
}

/// Rust's `1.5e7` as Go writes it: `1.5e+07`.
fn go_exp(rust: &str) -> String {
    let Some((mant, exp)) = rust.split_once('e') else {
        return rust.to_owned();
    };
    let (sign, digits) = match exp.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exp),
    };
    format!("{mant}e{sign}{digits:0>2}")
}

/// `fmt.Sprint`: spaces between operands when neither is a string.
fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 && !matches!(a, Value::Str(_)) && !matches!(args[i - 1], Value::Str(_)) {
            out.push(' ');
        }
        out.push_str(&format_value(a));
    }
    out
}

fn bad_verb(verb: char, v: &Value) -> String {
    match v {
        Value::Nil => format!("%!{verb}(<nil>)"),
        v => format!("%!{verb}({}={})", v.type_name(), format_value(v)),
    }
}

/// `fmt.Sprintf` for the verbs templates use: `%s %d %v %q %f %e %g %x %X %o %b %t %c %%`,
/// with flags `-+ 0#`, width and precision.
pub fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut next = 0usize;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut minus, mut plus, mut zero, mut space) = (false, false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => minus = true,
                '+' => plus = true,
                '0' => zero = true,
                ' ' => space = true,
                '#' => {}
                _ => break,
            }
            chars.next();
        }
        let mut width = None::<usize>;
        while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            width = Some(
                width
                    .unwrap_or(0)
                    .saturating_mul(10)
                    .saturating_add(d as usize)
                    .min(1 << 16),
            );
            chars.next();
        }
        let mut prec = None::<usize>;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                p = p.saturating_mul(10).saturating_add(d as usize).min(1 << 16);
                chars.next();
            }
            prec = Some(p);
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next += 1;
        let numeric = matches!(arg, Value::Int(_) | Value::Float(_));
        let body = match (verb, arg) {
            ('v', v) => format_value(v),
            ('s', Value::Str(s)) => match prec {
                Some(p) => s.chars().take(p).collect(),
                None => s.clone(),
            },
            ('s', v @ (Value::List(_) | Value::Map(_) | Value::Object(_))) => format_value(v),
            ('q', Value::Str(s)) => go_quote(s),
            ('q', Value::Int(i)) => u32::try_from(*i)
                .ok()
                .and_then(char::from_u32)
                .map_or_else(|| bad_verb(verb, arg), |c| format!("{c:?}")),
            ('d', Value::Int(i)) => signed(i.to_string(), plus, space),
            ('b', Value::Int(i)) => format!("{i:b}"),
            ('o', Value::Int(i)) => format!("{i:o}"),
            ('x', Value::Int(i)) => hex(*i, false),
            ('X', Value::Int(i)) => hex(*i, true),
            ('x', Value::Str(s)) => s.bytes().map(|b| format!("{b:02x}")).collect(),
            ('X', Value::Str(s)) => s.bytes().map(|b| format!("{b:02X}")).collect(),
            ('c', Value::Int(i)) => u32::try_from(*i)
                .ok()
                .and_then(char::from_u32)
                .map_or_else(|| "\u{FFFD}".to_owned(), String::from),
            ('t', Value::Bool(b)) => b.to_string(),
            ('f' | 'F', Value::Float(f)) => {
                signed(format!("{:.*}", prec.unwrap_or(6), f), plus, space)
            }
            ('e', Value::Float(f)) => signed(
                go_exp(&format!("{:.*e}", prec.unwrap_or(6), f)),
                plus,
                space,
            ),
            ('g', Value::Float(f)) => signed(go_float(*f), plus, space),
            _ => bad_verb(verb, arg),
        };
        out.push_str(&pad(body, width, minus, zero && numeric));
    }
    if next < args.len() {
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|a| match a {
                Value::Nil => "<nil>".to_owned(),
                a => format!("{}={}", a.type_name(), format_value(a)),
            })
            .collect();
        let _ = write!(out, "%!(EXTRA {})", extra.join(", "));
    }
    out
}

fn signed(s: String, plus: bool, space: bool) -> String {
    if s.starts_with('-') {
        s
    } else if plus {
        format!("+{s}")
    } else if space {
        format!(" {s}")
    } else {
        s
    }
}

fn hex(i: i64, upper: bool) -> String {
    let digits = if upper {
        format!("{:X}", i.unsigned_abs())
    } else {
        format!("{:x}", i.unsigned_abs())
    };
    if i < 0 { format!("-{digits}") } else { digits }
}

fn pad(body: String, width: Option<usize>, left: bool, zero: bool) -> String {
    let Some(w) = width else { return body };
    let len = body.chars().count();
    if len >= w {
        return body;
    }
    let fill = w - len;
    if left {
        format!("{body}{}", " ".repeat(fill))
    } else if zero {
        let (sign, digits) = match body.strip_prefix(['-', '+']) {
            Some(d) => (&body[..1], d),
            None => ("", body.as_str()),
        };
        format!("{sign}{}{digits}", "0".repeat(fill))
    } else {
        format!("{}{body}", " ".repeat(fill))
    }
}

/// Go's `%q` for strings.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// JSON as Go's `encoding/json` writes it: sorted map keys, HTML-safe escapes, integral
/// floats without a fraction.
fn write_json(out: &mut String, v: &Value, indent: Option<&str>, level: usize) {
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v {
        Value::Nil => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&json_float(*f)),
        Value::Str(s) => json_string(out, s),
        Value::List(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, level + 1);
                write_json(out, item, indent, level + 1);
            }
            newline(out, level);
            out.push(']');
        }
        Value::Map(_) | Value::Object(_) => {
            let entries: Vec<(&str, &Value)> = match v {
                Value::Map(m) => m.iter().map(|(k, v)| (k.as_str(), v)).collect(),
                Value::Object(o) => o.fields.iter().map(|(k, v)| (*k, v)).collect(),
                _ => Vec::new(),
            };
            if entries.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, level + 1);
                json_string(out, k);
                out.push(':');
                if indent.is_some() {
                    out.push(' ');
                }
                write_json(out, item, indent, level + 1);
            }
            newline(out, level);
            out.push('}');
        }
    }
}

fn json_float(f: f64) -> String {
    if !f.is_finite() {
        return "null".into();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Go: 1e-07, with the exponent's leading zero dropped.
        let s = go_exp(&format!("{f:e}"));
        return s.replace("e-0", "e-").replace("e+0", "e+");
    }
    format!("{f}")
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printf_follows_go() {
        let v = |s: &str| Value::Str(s.into());
        for (fmt, args, want) in [
            ("%s:%d", vec![v("a"), Value::Int(5)], "a:5"),
            (
                "%v %v",
                vec![Value::Bool(true), Value::Float(1.5)],
                "true 1.5",
            ),
            (
                "%05d|%-4s|%4s",
                vec![Value::Int(-42), v("ab"), v("cd")],
                "-0042|ab  |  cd",
            ),
            (
                "%.2f %x %q",
                vec![Value::Float(1.23456), Value::Int(255), v("a\"b")],
                "1.23 ff \"a\\\"b\"",
            ),
            ("%d", vec![v("x")], "%!d(string=x)"),
            ("%s %s", vec![v("x")], "x %!s(MISSING)"),
            ("%s", vec![v("x"), Value::Int(1)], "x%!(EXTRA int=1)"),
            ("100%%", vec![], "100%"),
        ] {
            assert_eq!(sprintf(fmt, &args), want, "{fmt}");
        }
    }

    #[test]
    fn floats_print_as_go_prints_them() {
        for (f, want) in [
            (1.0, "1"),
            (1.5, "1.5"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (123456789.0, "1.23456789e+08"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
        ] {
            assert_eq!(go_float(f), want, "{f}");
        }
    }

    #[test]
    fn json_is_go_shaped() {
        let mut m = BTreeMap::new();
        m.insert("b".to_owned(), Value::Float(2.0));
        m.insert("a".to_owned(), Value::Str("<x&y>".into()));
        m.insert("c".to_owned(), Value::List(vec![Value::Int(1), Value::Nil]));
        let mut out = String::new();
        write_json(&mut out, &Value::Map(m.clone()), None, 0);
        assert_eq!(out, r#"{"a":"\u003cx\u0026y\u003e","b":2,"c":[1,null]}"#);
        let mut pretty = String::new();
        write_json(&mut pretty, &Value::Map(m), Some("  "), 0);
        assert_eq!(
            pretty,
            "{\n  \"a\": \"\\u003cx\\u0026y\\u003e\",\n  \"b\": 2,\n  \"c\": [\n    1,\n    null\n  ]\n}"
        );
    }
}
