//! The tape as a serde `Deserializer`: the typed decode of a validated message, visiting
//! values the way `serde_json::from_value` visits the general decoder's `Value`, so a type
//! decodes to the same thing either way. Strings are handed out borrowed from the frame.

use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::forward_to_deserialize_any;

use super::{Children, Members, Shape, TapeNode};
use crate::protocol::codec::msgpack_writer::with_scratch;
use crate::user_value::{MSGPACK_NEWTYPE, hand_over_encoded};

/// Why a tape did not fit the type asked for (the general decoder then reports it).
#[derive(Debug)]
pub(crate) struct TapeError(String);

impl fmt::Display for TapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TapeError {}

impl de::Error for TapeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        TapeError(message.to_string())
    }
}

impl<'de> de::Deserializer<'de> for TapeNode<'de> {
    type Error = TapeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TapeError> {
        match self.shape() {
            Shape::Null => visitor.visit_unit(),
            Shape::Bool(value) => visitor.visit_bool(value),
            Shape::Number(number) => {
                if let Some(value) = number.as_u64() {
                    visitor.visit_u64(value)
                } else if let Some(value) = number.as_i64() {
                    visitor.visit_i64(value)
                } else {
                    visitor.visit_f64(number.as_f64().unwrap_or(f64::NAN))
                }
            }
            Shape::Str(text) => visitor.visit_borrowed_str(text),
            Shape::Array(items) => visit_seq(items, visitor),
            Shape::Map(members) => visit_map(members.into_members(), visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TapeError> {
        match self.shape() {
            Shape::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TapeError> {
        if name == MSGPACK_NEWTYPE {
            return with_scratch(|scratch| {
                self.write_msgpack(scratch)
                    .map_err(|e| TapeError(e.to_string()))?;
                hand_over_encoded(|| visitor.visit_bytes(scratch.as_mut_vec()))
            });
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TapeError> {
        // Like `serde_json::Value`: a string names a unit variant, a one-member map names a
        // variant and holds its content.
        match self.shape() {
            Shape::Str(variant) => visitor.visit_enum(Variant {
                name: variant,
                content: None,
            }),
            Shape::Map(members) => {
                let mut members = members.into_members();
                match (members.next(), members.next()) {
                    (Some((variant, content)), None) => visitor.visit_enum(Variant {
                        name: variant,
                        content: Some(content),
                    }),
                    _ => Err(de::Error::invalid_value(
                        de::Unexpected::Map,
                        &"map with a single key",
                    )),
                }
            }
            _ => Err(de::Error::invalid_type(
                de::Unexpected::Other("non-string, non-map value"),
                &"string or map",
            )),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TapeError> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

fn visit_seq<'de, V: Visitor<'de>>(
    items: Children<'de>,
    visitor: V,
) -> Result<V::Value, TapeError> {
    let len = items.len();
    let mut access = Items {
        items,
        remaining: len,
    };
    let value = visitor.visit_seq(&mut access)?;
    if access.remaining == 0 {
        Ok(value)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in array"))
    }
}

fn visit_map<'de, V: Visitor<'de>>(
    members: Members<'de>,
    visitor: V,
) -> Result<V::Value, TapeError> {
    let len = members.0.len();
    let mut access = Entries {
        members,
        value: None,
        remaining: len,
    };
    let value = visitor.visit_map(&mut access)?;
    if access.remaining == 0 {
        Ok(value)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in map"))
    }
}

struct Items<'de> {
    items: Children<'de>,
    remaining: usize,
}

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = TapeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TapeError> {
        match self.items.next() {
            Some(item) => {
                self.remaining = self.remaining.saturating_sub(1);
                seed.deserialize(item).map(Some)
            }
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.remaining)
    }
}

struct Entries<'de> {
    members: Members<'de>,
    value: Option<TapeNode<'de>>,
    remaining: usize,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = TapeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TapeError> {
        match self.members.next() {
            Some((name, value)) => {
                self.remaining = self.remaining.saturating_sub(1);
                self.value = Some(value);
                // Straight to the field visitor: a key is always a string.
                seed.deserialize(de::value::BorrowedStrDeserializer::<TapeError>::new(name))
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TapeError> {
        match self.value.take() {
            Some(value) => seed.deserialize(value),
            None => Err(de::Error::custom("map value requested before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.remaining)
    }
}

/// An enum variant named by a string or by a one-member map.
struct Variant<'de> {
    name: &'de str,
    content: Option<TapeNode<'de>>,
}

impl<'de> EnumAccess<'de> for Variant<'de> {
    type Error = TapeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), TapeError> {
        let name = de::value::BorrowedStrDeserializer::<TapeError>::new(self.name);
        seed.deserialize(name).map(|variant| (variant, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'de> {
    type Error = TapeError;

    fn unit_variant(self) -> Result<(), TapeError> {
        match self.content {
            None => Ok(()),
            Some(content) => de::Deserialize::deserialize(content),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, TapeError> {
        match self.content {
            Some(content) => seed.deserialize(content),
            None => Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"newtype variant",
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TapeError> {
        match self.content.map(|content| content.shape()) {
            Some(Shape::Array(items)) => visit_seq(items, visitor),
            _ => Err(de::Error::invalid_type(
                de::Unexpected::Other("non-array content"),
                &"tuple variant",
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TapeError> {
        match self.content.map(|content| content.shape()) {
            Some(Shape::Map(members)) => visit_map(members.into_members(), visitor),
            Some(Shape::Array(items)) => visit_seq(items, visitor),
            _ => Err(de::Error::invalid_type(
                de::Unexpected::Other("non-map content"),
                &"struct variant",
            )),
        }
    }
}
