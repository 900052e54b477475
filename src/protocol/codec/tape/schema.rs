//! The tape as a JSON representation for `jsonschema`: the validator walks the frame's slots
//! directly, answering exactly as it would for the `serde_json::Value` the general decoder
//! builds from the same frame (the codec's tests compare the two on every message shape).

use std::borrow::Cow;

use jsonschema::JsonType;
use jsonschema::json::{Array, Json, Node, NodeIdentity, Object, cmp};
use serde_json::{Number, Value};

use super::{Children, Members, Shape, TapeNode};

/// The tape representation.
pub(crate) struct TapeJson;

impl Json for TapeJson {
    type Node<'a> = TapeNode<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();

    const ACYCLIC: bool = true;
    // A lookup scans the members, so one pass over them beats even two lookups.
    const KEYS_PER_LOOKUP: usize = 16;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(TapeNode<'_>) -> T) -> T {
        f(TapeNode::Name(string))
    }
}

impl<'a> Node<'a, TapeJson> for TapeNode<'a> {
    type Object = Members<'a>;
    type Array = Children<'a>;
    type Number = Number;

    fn as_object(&self) -> Option<Members<'a>> {
        match self.shape() {
            Shape::Map(members) => Some(members.into_members()),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<Children<'a>> {
        match self.shape() {
            Shape::Array(items) => Some(items),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self.shape() {
            Shape::Str(text) => Some(Cow::Borrowed(text)),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<Number> {
        match self.shape() {
            Shape::Number(number) => Some(number.clone()),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.shape() {
            Shape::Bool(value) => Some(value),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.shape(), Shape::Null)
    }

    fn json_type(&self) -> JsonType {
        match self.shape() {
            Shape::Null => JsonType::Null,
            Shape::Bool(_) => JsonType::Boolean,
            Shape::Number(_) => JsonType::Number,
            Shape::Str(_) => JsonType::String,
            Shape::Array(_) => JsonType::Array,
            Shape::Map(_) => JsonType::Object,
        }
    }

    fn string_length_within(&self, min: u64, max: u64) -> Option<bool> {
        let Shape::Str(text) = self.shape() else {
            return None;
        };
        // A code point takes one to four bytes: the byte length often settles it.
        let bytes = text.len() as u64;
        if bytes < min || bytes.div_ceil(4) > max {
            return Some(false);
        }
        if min <= bytes.div_ceil(4) && bytes <= max {
            return Some(true);
        }
        Some((min..=max).contains(&(text.chars().count() as u64)))
    }

    fn equals_value(&self, expected: &Value) -> bool {
        // `const` / `enum` checks on the message `type` and on enum fields compare strings;
        // only containers and numbers need the general comparison.
        match self.shape() {
            Shape::Str(text) => matches!(expected, Value::String(other) if other == text),
            Shape::Bool(value) => matches!(expected, Value::Bool(other) if *other == value),
            Shape::Null => expected.is_null(),
            _ => cmp::equal(&self.to_value(), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(TapeNode::to_value(*self))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        match *self {
            TapeNode::At { slots, index } => slots
                .get(index)
                .map(|slot| NodeIdentity::new(std::ptr::from_ref(slot) as usize)),
            TapeNode::Name(_) => None,
        }
    }
}

impl<'a> Object<'a, TapeJson> for Members<'a> {
    type Node = TapeNode<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, key: &Box<str>) -> Option<TapeNode<'a>> {
        self.clone()
            .find(|(name, _)| *name == key.as_ref())
            .map(|(_, value)| value)
    }

    fn members(&self) -> Members<'a> {
        self.clone()
    }
}

impl<'a> Array<'a, TapeJson> for Children<'a> {
    type Node = TapeNode<'a>;
    type ElementsIter = Children<'a>;

    fn len(&self) -> usize {
        Children::len(self)
    }

    fn elements(&self) -> Children<'a> {
        self.clone()
    }
}
