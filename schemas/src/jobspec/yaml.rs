//! The YAML (and JSON) front-end: text → one [`Tree`] per document, with the line and column of
//! every value, read through serde-saphyr's `Spanned`.

use super::error::SpecError;
use super::tree::{Pos, Seg, SourceMap, Tree};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// A YAML node with the position of each child.
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Node, D2::Error> {
                Node::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
                Ok(Node::UInt(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    out.push(item);
                }
                Ok(Node::Seq(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut out: Vec<(String, Spanned<Node>)> = Vec::new();
                while let Some(Key(k)) = map.next_key::<Key>()? {
                    let v = map.next_value::<Spanned<Node>>()?;
                    if out.iter().any(|(existing, _)| *existing == k) {
                        return Err(de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    out.push((k, v));
                }
                Ok(Node::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping key: YAML allows any scalar; a jobspec uses it as text.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

fn pos_of<T>(s: &Spanned<T>) -> Option<Pos> {
    let line = u32::try_from(s.referenced.line()).ok()?;
    let column = u32::try_from(s.referenced.column()).ok()?;
    (line > 0).then_some(Pos { line, column })
}

fn flatten(node: Spanned<Node>, path: &mut Vec<Seg>, map: &mut SourceMap) -> serde_json::Value {
    use serde_json::Value;
    if let Some(pos) = pos_of(&node) {
        map.insert(path.clone(), pos);
    }
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::from(i),
        Node::UInt(u) => Value::from(u),
        Node::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Node::Str(s) => Value::String(s),
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    path.push(Seg::Index(i));
                    let v = flatten(item, path, map);
                    path.pop();
                    v
                })
                .collect(),
        ),
        Node::Map(entries) => {
            let mut obj = serde_json::Map::new();
            for (k, v) in entries {
                path.push(Seg::Key(k.clone()));
                let value = flatten(v, path, map);
                path.pop();
                obj.insert(k, value);
            }
            Value::Object(obj)
        }
    }
}

/// Parses every document of a YAML (or JSON) text. Empty documents are skipped.
pub fn parse_documents(src: &str) -> Result<Vec<Tree>, SpecError> {
    let docs: Vec<Option<Spanned<Node>>> = serde_saphyr::from_multiple(src).map_err(|e| {
        let pos = e.location().and_then(|l| {
            Some(Pos {
                line: u32::try_from(l.line()).ok()?,
                column: u32::try_from(l.column()).ok()?,
            })
        });
        SpecError::syntax(pos.filter(|p| p.line > 0), first_line(&e.to_string()))
    })?;
    Ok(docs
        .into_iter()
        .flatten()
        .filter(|d| !matches!(d.value, Node::Null))
        .map(|doc| {
            let mut source_map = SourceMap::default();
            let value = flatten(doc, &mut Vec::new(), &mut source_map);
            Tree { value, source_map }
        })
        .collect())
}

/// serde-saphyr's messages may carry a rendered snippet after the first line; the location is
/// reported separately, so keep the message itself.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_positions_of_nested_values() {
        let src = "a:\n  b: [1, 2]\n  c:\n    d: x\n---\ne: 1\n";
        let docs = parse_documents(src).unwrap();
        assert_eq!(docs.len(), 2);
        let k = |s: &str| Seg::Key(s.into());
        let m = &docs[0].source_map;
        assert_eq!(m.lookup(&[k("a"), k("c"), k("d")]).map(|p| p.line), Some(4));
        assert_eq!(
            m.lookup(&[k("a"), k("b"), Seg::Index(1)]).map(|p| p.line),
            Some(2)
        );
        assert_eq!(docs[0].value["a"]["b"][1], 2);
        assert_eq!(docs[1].value["e"], 1);
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = parse_documents("a:\n  b: [1, 2\n  c: 3\n").unwrap_err();
        match err {
            SpecError::Syntax(p) => assert!(p.at.pos.is_some(), "{p}"),
            other => panic!("expected a syntax error, got {other}"),
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        assert!(parse_documents("a: 1\na: 2\n").is_err());
    }
}
