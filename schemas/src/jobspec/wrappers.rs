//! Deserialization helpers for the jobspec's block shapes.
//!
//! HCL writes an unlabelled block as a list of objects (one per occurrence) and a labelled block
//! as an object keyed by label; YAML users write either a single object, a list, or a map. These
//! wrappers accept all of them while keeping serde's path tracking intact (they hand the inner
//! map or sequence straight to the inner type instead of buffering), so errors still point at the
//! right line.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// A block that may appear any number of times: one object, or a list of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a block (an object) or a list of blocks")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| OneOrMany(vec![t]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(t) = seq.next_element()? {
                    out.push(t);
                }
                Ok(OneOrMany(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(OneOrMany(Vec::new()))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for OneOrMany<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("OneOrMany_{}", T::schema_name()).into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let item = g.subschema_for::<T>();
        json_schema!({ "anyOf": [item, { "type": "array", "items": item }] })
    }
}

/// A block that may appear at most once: an object, or (as HCL produces) a list of one.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Single<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Single<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Single<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a block (an object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Single)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first: T = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &"exactly one block"))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("this block may appear only once"));
                }
                Ok(Single(first))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Single<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("Single_{}", T::schema_name()).into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let item = g.subschema_for::<T>();
        json_schema!({ "anyOf": [item, { "type": "array", "items": item, "minItems": 1, "maxItems": 1 }] })
    }
}

/// A block type whose instances carry a label (`group "web"`, `task "server"`, `port "http"`).
pub trait HasLabel {
    fn label(&self) -> Option<&str>;
    fn set_label(&mut self, label: String);
}

/// Labelled blocks: an object keyed by label (HCL, and YAML `group: {web: {...}}`), or a list of
/// objects each carrying `name` (YAML `group: [{name: web, ...}]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Labelled<T>(pub Vec<T>);

impl<T> Default for Labelled<T> {
    fn default() -> Self {
        Labelled(Vec::new())
    }
}

impl<'de, T: DeserializeOwned + HasLabel + Default> Deserialize<'de> for Labelled<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: DeserializeOwned + HasLabel + Default> Visitor<'de> for V<T> {
            type Value = Labelled<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object keyed by name, or a list of objects each with a `name`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<T> = Vec::new();
                while let Some(label) = map.next_key::<String>()? {
                    let mut item: Option<T> = map.next_value()?;
                    let item = item.get_or_insert_with(T::default);
                    if let Some(inner) = item.label()
                        && inner != label
                    {
                        return Err(de::Error::custom(format!(
                            "block labelled {label:?} also says name = {inner:?}; keep one"
                        )));
                    }
                    if out.iter().any(|o| o.label() == Some(label.as_str())) {
                        return Err(de::Error::custom(format!("duplicate name {label:?}")));
                    }
                    item.set_label(label);
                    out.push(std::mem::take(item));
                }
                Ok(Labelled(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<T> = Vec::new();
                while let Some(item) = seq.next_element::<T>()? {
                    match item.label() {
                        None | Some("") => {
                            return Err(de::Error::custom(format!(
                                "item {} of the list has no `name`",
                                out.len()
                            )));
                        }
                        Some(l) if out.iter().any(|o| o.label() == Some(l)) => {
                            return Err(de::Error::custom(format!("duplicate name {l:?}")));
                        }
                        Some(_) => out.push(item),
                    }
                }
                Ok(Labelled(out))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Labelled<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("Labelled_{}", T::schema_name()).into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let item = g.subschema_for::<T>();
        json_schema!({
            "anyOf": [
                { "type": "object", "additionalProperties": { "anyOf": [item, { "type": "null" }] } },
                { "type": "array", "items": item }
            ]
        })
    }
}

/// A scalar written where a string is meant (`meta { version = 2 }`): kept as its text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or bool")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Text {
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number", "boolean"] })
    }
}
