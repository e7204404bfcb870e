//! Helpers over the JSON values the evaluator computes with: numbers that stay integers while
//! they can, HCL's automatic string/number/bool conversions, equality, and display.

use serde_json::{Map, Number, Value};

/// The longest string an expression may build (16 MiB): a guard against templates and
/// functions that double a string again and again.
pub(super) const MAX_STRING: usize = 16 << 20;

/// A number taken out of a [`Value`]: integer arithmetic is kept exact while it fits in an `i64`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    pub(super) fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    /// The number as an integer, when it is one.
    pub(super) fn as_int(self) -> Option<i64> {
        match self {
            Num::Int(i) => Some(i),
            Num::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e18 => {
                Some(f as i64)
            }
            Num::Float(_) => None,
        }
    }
}

/// The number in `v`, converting a numeric string as HCL does.
pub(super) fn num_of(v: &Value) -> Option<Num> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(Num::Int(i))
            } else {
                n.as_f64().map(Num::Float)
            }
        }
        Value::String(s) => parse_num(s),
        _ => None,
    }
}

/// Parses a decimal number as HCL writes them.
pub(super) fn parse_num(s: &str) -> Option<Num> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(i) = s.parse::<i64>() {
        return Some(Num::Int(i));
    }
    // Reject what Rust accepts but HCL does not ("inf", "nan", "1.", ".5" are fine in Rust).
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() => Some(Num::Float(f)),
        _ => None,
    }
}

/// A JSON value for a number: an integer when the number is integral and fits.
pub(super) fn num_value(n: Num) -> Result<Value, String> {
    match n {
        Num::Int(i) => Ok(Value::from(i)),
        Num::Float(f) => float_value(f),
    }
}

pub(super) fn float_value(f: f64) -> Result<Value, String> {
    if !f.is_finite() {
        return Err("the result is not a finite number".into());
    }
    if f.fract() == 0.0 && f.abs() < 9.0e18 {
        return Ok(Value::from(f as i64));
    }
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| "the result is not a finite number".into())
}

/// A JSON number from one of hcl-edit's numbers.
pub(super) fn from_hcl_number(n: &hcl_edit::Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::from(i)
    } else if let Some(u) = n.as_u64() {
        Value::from(u)
    } else {
        n.as_f64()
            .and_then(|f| float_value(f).ok())
            .unwrap_or(Value::Null)
    }
}

/// How a type is named in messages.
pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// A number as HCL prints it.
pub(super) fn format_number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            Some(f) => f.to_string(),
            None => n.to_string(),
        }
    }
}

/// The string form of a primitive value, as used by interpolation and `tostring`.
pub(super) fn to_str(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(format_number(n)),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Err("a null value cannot be used as a string".into()),
        Value::Array(_) => {
            Err("a list cannot be used as a string (try join() or jsonencode())".into())
        }
        Value::Object(_) => Err("an object cannot be used as a string (try jsonencode())".into()),
    }
}

/// A boolean, converting the strings "true" and "false" as HCL does.
pub(super) fn to_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        other => Err(format!("a bool is required, found {}", describe(other))),
    }
}

/// A short description of a value for messages: its type, and the value itself if small.
pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() <= 40 => format!("string {s:?}"),
        Value::Number(n) => format!("number {}", format_number(n)),
        Value::Bool(b) => format!("bool {b}"),
        other => type_name(other).to_string(),
    }
}

/// HCL equality: numbers compare by value whatever their representation.
pub(super) fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => match (num_of(a), num_of(b)) {
            (Some(Num::Int(x)), Some(Num::Int(y))) => x == y,
            (Some(x), Some(y)) => x.as_f64() == y.as_f64(),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// An object key from a value: strings, numbers and bools are accepted, as in HCL.
pub(super) fn to_key(v: &Value) -> Result<String, String> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => to_str(v),
        other => Err(format!(
            "an object key must be a string, found {}",
            describe(other)
        )),
    }
}

/// An empty JSON object.
pub(super) fn object() -> Value {
    Value::Object(Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_stay_integers_when_integral() {
        assert_eq!(float_value(4.0).unwrap(), json!(4));
        assert_eq!(float_value(2.5).unwrap(), json!(2.5));
        assert!(float_value(f64::INFINITY).is_err());
        assert_eq!(parse_num(" 42 "), Some(Num::Int(42)));
        assert_eq!(parse_num("1e3"), Some(Num::Float(1000.0)));
        assert_eq!(parse_num("inf"), None);
        assert_eq!(parse_num("nan"), None);
        assert!(equal(&json!(1), &json!(1.0)));
        assert!(equal(&json!({"a": [1]}), &json!({"a": [1.0]})));
        assert_eq!(to_str(&json!(1.5)).unwrap(), "1.5");
    }
}
