//! The msgpack fast path's document tape: one pass over a frame records every value as a
//! [`Slot`] in document order, strings borrowed from the frame, already normalised the way
//! [`super::decode_value`] normalises (JS `undefined` members absent and array items `null`,
//! integral floats as integers, `bin` as an array of byte values).
//!
//! The schema validator reads the tape through [`schema`] and the typed decode through [`de`],
//! so a message is validated and typed without building a `serde_json::Value` for its
//! envelope. An LWW record's value does not become one either: the typed decode hands it over
//! re-encoded from the tape ([`TapeNode::write_msgpack`], [`crate::user_value`]); other user
//! data still becomes a `Value`. Stored LWW rows are read the same way
//! ([`Tape::scan_stored`], which keeps floats as written).
//!
//! The tape is an optimisation, never a second opinion: whatever it is unsure of (malformed or
//! refused input, duplicate map keys) makes [`Tape::scan`] decline, and the caller falls back
//! to the general decoder, which then reports or decodes the frame exactly as before.

mod de;
mod schema;

pub(crate) use schema::TapeJson;

use serde_json::{Number, Value};

use super::msgpack_reader::{Floats, Reader, Token};
use super::msgpack_writer::{MsgpackWriter, WriteError};

/// One value of a scanned frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Slot<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(&'a str),
    /// `len` items follow; the array's slots end just before slot `end`.
    Array {
        len: u32,
        end: u32,
    },
    /// `len` members follow, each a `Str` key slot then the value's slots; they end just
    /// before slot `end`.
    Map {
        len: u32,
        end: u32,
    },
}

/// A scanned msgpack frame whose top-level value is a map.
#[derive(Debug)]
pub(crate) struct Tape<'a> {
    slots: Vec<Slot<'a>>,
    js_undefined: bool,
}

/// The fast path declines the frame: the general decoder decides about it.
#[derive(Debug)]
pub(crate) struct Decline;

impl<'a> Tape<'a> {
    /// Scans `bytes`, or declines when the frame is not a well-formed, acceptable msgpack map
    /// within `max_depth` levels (the message map is level 1) or has a map with a repeated key.
    pub(crate) fn scan(bytes: &'a [u8], max_depth: usize) -> Result<Self, Decline> {
        Self::scan_with(bytes, max_depth, Floats::Normalise)
    }

    /// [`Tape::scan`] for bytes this crate stored: floats stay floats, so a stored value reads
    /// back exactly as it was written (ingress already normalised whatever came in).
    pub(crate) fn scan_stored(bytes: &'a [u8], max_depth: usize) -> Result<Self, Decline> {
        Self::scan_with(bytes, max_depth, Floats::Keep)
    }

    fn scan_with(bytes: &'a [u8], max_depth: usize, floats: Floats) -> Result<Self, Decline> {
        if u32::try_from(bytes.len()).is_err() {
            return Err(Decline);
        }
        let mut scanner = Scanner {
            reader: Reader::new(bytes, max_depth).with_floats(floats),
            // A typical message spends a few bytes per value.
            slots: Vec::with_capacity(bytes.len() / 6 + 4),
            keys: Vec::new(),
            max_depth,
            js_undefined: false,
        };
        let present = scanner.value(1)?;
        if !present || scanner.reader.finish().is_err() {
            return Err(Decline);
        }
        if !matches!(scanner.slots.first(), Some(Slot::Map { .. })) {
            return Err(Decline);
        }
        Ok(Self {
            slots: scanner.slots,
            js_undefined: scanner.js_undefined,
        })
    }

    /// The message map.
    pub(crate) fn root(&self) -> TapeNode<'_> {
        TapeNode::At {
            slots: &self.slots,
            index: 0,
        }
    }

    /// True when some value was JS `undefined` in its fixext1 form (`d4 00 00`), which only
    /// the 2026-01 client sends.
    pub(crate) fn saw_js_undefined(&self) -> bool {
        self.js_undefined
    }
}

/// A value on a tape, or a lone string (a property name the validator checks on its own).
#[derive(Debug, Clone, Copy)]
pub(crate) enum TapeNode<'a> {
    At { slots: &'a [Slot<'a>], index: usize },
    Name(&'a str),
}

/// What a [`TapeNode`] holds.
pub(crate) enum Shape<'a> {
    Null,
    Bool(bool),
    Number(&'a Number),
    Str(&'a str),
    Array(Children<'a>),
    Map(Children<'a>),
}

impl<'a> TapeNode<'a> {
    pub(crate) fn shape(&self) -> Shape<'a> {
        let (slots, index) = match *self {
            TapeNode::Name(name) => return Shape::Str(name),
            TapeNode::At { slots, index } => (slots, index),
        };
        match slots.get(index) {
            None | Some(Slot::Null) => Shape::Null,
            Some(Slot::Bool(value)) => Shape::Bool(*value),
            Some(Slot::Number(number)) => Shape::Number(number),
            Some(Slot::Str(text)) => Shape::Str(text),
            Some(Slot::Array { len, end }) => Shape::Array(Children {
                slots,
                next: index + 1,
                end: *end as usize,
                len: *len as usize,
            }),
            Some(Slot::Map { len, end }) => Shape::Map(Children {
                slots,
                next: index + 1,
                end: *end as usize,
                len: *len as usize,
            }),
        }
    }

    /// The member `key` of a map node.
    pub(crate) fn get(&self, key: &str) -> Option<TapeNode<'a>> {
        match self.shape() {
            Shape::Map(members) => members
                .into_members()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| value),
            _ => None,
        }
    }

    /// Appends the node's MessagePack: byte for byte what [`MsgpackWriter::value`] writes for
    /// [`TapeNode::to_value`], without building the value.
    pub(crate) fn write_msgpack(self, out: &mut MsgpackWriter) -> Result<(), WriteError> {
        match self.shape() {
            Shape::Null => out.nil(),
            Shape::Bool(value) => out.bool(value),
            Shape::Number(number) => out.number(number),
            Shape::Str(text) => out.str(text)?,
            Shape::Array(items) => {
                out.array_len(items.len())?;
                for item in items {
                    item.write_msgpack(out)?;
                }
            }
            Shape::Map(members) => {
                out.map_len(members.len())?;
                for (name, value) in members.into_members() {
                    out.str(name)?;
                    value.write_msgpack(out)?;
                }
            }
        }
        Ok(())
    }

    /// The node as a `serde_json::Value` (for error reports and other cold paths).
    pub(crate) fn to_value(self) -> Value {
        match self.shape() {
            Shape::Null => Value::Null,
            Shape::Bool(value) => Value::Bool(value),
            Shape::Number(number) => Value::Number(number.clone()),
            Shape::Str(text) => Value::String(text.to_owned()),
            Shape::Array(items) => Value::Array(items.map(|item| item.to_value()).collect()),
            Shape::Map(members) => Value::Object(
                members
                    .into_members()
                    .map(|(name, value)| (name.to_owned(), value.to_value()))
                    .collect(),
            ),
        }
    }
}

/// The items of an array node (as nodes), or the members of a map node (through
/// [`Children::into_members`]).
#[derive(Debug, Clone)]
pub(crate) struct Children<'a> {
    slots: &'a [Slot<'a>],
    next: usize,
    end: usize,
    len: usize,
}

impl<'a> Children<'a> {
    /// How many items or members there are.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The members of a map node.
    pub(crate) fn into_members(self) -> Members<'a> {
        Members(self)
    }

    /// The slot after the value that starts at `index`.
    fn after(&self, index: usize) -> usize {
        match self.slots.get(index) {
            Some(Slot::Array { end, .. } | Slot::Map { end, .. }) => *end as usize,
            _ => index + 1,
        }
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = TapeNode<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let index = self.next;
        self.next = self.after(index);
        Some(TapeNode::At {
            slots: self.slots,
            index,
        })
    }
}

/// The members of a map node: name and value.
#[derive(Debug, Clone)]
pub(crate) struct Members<'a>(Children<'a>);

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, TapeNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let children = &mut self.0;
        if children.next >= children.end {
            return None;
        }
        let name = match children.slots.get(children.next) {
            Some(Slot::Str(name)) => *name,
            _ => return None,
        };
        let index = children.next + 1;
        children.next = children.after(index);
        Some((
            name,
            TapeNode::At {
                slots: children.slots,
                index,
            },
        ))
    }
}

/// Builds a tape.
struct Scanner<'a> {
    reader: Reader<'a>,
    slots: Vec<Slot<'a>>,
    /// The names of the maps being scanned that are not known texts, innermost map last (for
    /// the repeated-key check).
    keys: Vec<&'a str>,
    max_depth: usize,
    js_undefined: bool,
}

/// Pairwise comparison is cheaper than sorting up to about this many keys.
const PAIRWISE_KEYS: usize = 16;

impl<'a> Scanner<'a> {
    /// Records one value; false when it is JS `undefined` (nothing recorded).
    fn value(&mut self, depth: usize) -> Result<bool, Decline> {
        let slot = match self.token()? {
            Token::Null => Slot::Null,
            Token::Bool(value) => Slot::Bool(value),
            Token::Integer(number) => Slot::Number(number),
            Token::Float(number) => match self.reader.float(number) {
                Ok(Value::Number(number)) => Slot::Number(number),
                _ => return Err(Decline),
            },
            Token::Str(bytes) => Slot::Str(utf8(bytes)?),
            Token::Bin(bytes) => {
                let start = self.open();
                self.slots
                    .extend(bytes.iter().map(|byte| Slot::Number((*byte).into())));
                self.close(start, Slot::Array { len: 0, end: 0 }, bytes.len())?;
                return Ok(true);
            }
            Token::Array(len) => {
                self.array(len, depth)?;
                return Ok(true);
            }
            Token::Map(len) => {
                self.map(len, depth)?;
                return Ok(true);
            }
            Token::Ext(ext) if ext.is_js_undefined() => {
                self.js_undefined |= ext.fixext1;
                return Ok(false);
            }
            Token::Ext(_) => return Err(Decline),
        };
        self.slots.push(slot);
        Ok(true)
    }

    /// The next token, through the reader's fast path where it can.
    #[inline(always)]
    fn token(&mut self) -> Result<Token<'a>, Decline> {
        match self.reader.common_token() {
            Some(token) => Ok(token),
            None => self.reader.token().map_err(|_| Decline),
        }
    }

    fn array(&mut self, len: usize, depth: usize) -> Result<(), Decline> {
        self.check_depth(depth)?;
        let start = self.open();
        for _ in 0..len {
            if !self.value(depth + 1)? {
                self.slots.push(Slot::Null);
            }
        }
        self.close(start, Slot::Array { len: 0, end: 0 }, len)
    }

    fn map(&mut self, len: usize, depth: usize) -> Result<(), Decline> {
        self.check_depth(depth)?;
        let start = self.open();
        // Repeats among known names are caught by a bit each; other names are compared.
        let mut known_present = 0u32;
        let first_other = self.keys.len();
        let mut present = 0;
        for _ in 0..len {
            let Token::Str(key) = self.token()? else {
                return Err(Decline);
            };
            let known = known_index(key);
            let key = match known {
                Some(index) => KNOWN_TEXTS[index],
                None => std::str::from_utf8(key).map_err(|_| Decline)?,
            };
            let key_slot = self.slots.len();
            self.slots.push(Slot::Str(key));
            if !self.value(depth + 1)? {
                // An `undefined` member is absent.
                self.slots.truncate(key_slot);
                continue;
            }
            present += 1;
            match known {
                Some(index) if known_present & (1 << index) != 0 => return Err(Decline),
                Some(index) => known_present |= 1 << index,
                None => self.keys.push(key),
            }
        }
        if has_repeats(&self.keys[first_other..]) {
            return Err(Decline);
        }
        self.keys.truncate(first_other);
        self.close(start, Slot::Map { len: 0, end: 0 }, present)
    }

    /// Reserves the slot of a container whose items follow.
    fn open(&mut self) -> usize {
        self.slots.push(Slot::Null);
        self.slots.len() - 1
    }

    /// Fills in the container slot at `start` now that its items are recorded.
    fn close(&mut self, start: usize, kind: Slot<'a>, len: usize) -> Result<(), Decline> {
        let len = u32::try_from(len).map_err(|_| Decline)?;
        let end = u32::try_from(self.slots.len()).map_err(|_| Decline)?;
        let filled = match kind {
            Slot::Array { .. } => Slot::Array { len, end },
            _ => Slot::Map { len, end },
        };
        match self.slots.get_mut(start) {
            Some(slot) => {
                *slot = filled;
                Ok(())
            }
            None => Err(Decline),
        }
    }

    fn check_depth(&self, depth: usize) -> Result<(), Decline> {
        if depth > self.max_depth {
            return Err(Decline);
        }
        Ok(())
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, Decline> {
    match known_index(bytes) {
        Some(index) => Ok(KNOWN_TEXTS[index]),
        None => std::str::from_utf8(bytes).map_err(|_| Decline),
    }
}

/// The write path's field names and enum values, which are most of the strings in a frame:
/// matching one is cheaper than validating it as UTF-8 (a short string's validation costs
/// as much as a long one's set-up), and a map's repeated known names are caught by one bit
/// each. At most 32, for that bit.
const KNOWN_TEXTS: [&str; 24] = [
    "id",
    "ops",
    "key",
    "tag",
    "PUT",
    "type",
    "value",
    "ttlMs",
    "orTag",
    "opType",
    "record",
    "millis",
    "nodeId",
    "REMOVE",
    "OR_ADD",
    "payload",
    "mapName",
    "counter",
    "timeout",
    "orRecord",
    "OP_BATCH",
    "timestamp",
    "OR_REMOVE",
    "writeConcern",
];

/// The index of `bytes` in [`KNOWN_TEXTS`]. Length and first byte single out the one
/// candidate, so a string that is none of them (a key, an id, a value) costs a lookup, not
/// a search.
fn known_index(bytes: &[u8]) -> Option<usize> {
    let index = match (bytes.len(), bytes.first()?) {
        (2, b'i') => 0,
        (3, b'o') => 1,
        (3, b'k') => 2,
        (3, b't') => 3,
        (3, b'P') => 4,
        (4, b't') => 5,
        (5, b'v') => 6,
        (5, b't') => 7,
        (5, b'o') => 8,
        (6, b'o') => 9,
        (6, b'r') => 10,
        (6, b'm') => 11,
        (6, b'n') => 12,
        (6, b'R') => 13,
        (6, b'O') => 14,
        (7, b'p') => 15,
        (7, b'm') => 16,
        (7, b'c') => 17,
        (7, b't') => 18,
        (8, b'o') => 19,
        (8, b'O') => 20,
        (9, b't') => 21,
        (9, b'O') => 22,
        (12, b'w') => 23,
        _ => return None,
    };
    (KNOWN_TEXTS.get(index)?.as_bytes() == bytes).then_some(index)
}

/// True when some key occurs twice (the general decoder keeps the last value at the first
/// position; the fast path leaves that rare case to it).
fn has_repeats(keys: &[&str]) -> bool {
    if keys.len() <= PAIRWISE_KEYS {
        return keys
            .iter()
            .enumerate()
            .any(|(i, key)| keys[i + 1..].contains(key));
    }
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|pair| pair[0] == pair[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_texts_read_as_themselves_and_others_are_validated() {
        for (index, name) in KNOWN_TEXTS.iter().enumerate() {
            assert_eq!(known_index(name.as_bytes()), Some(index), "{name}");
            assert_eq!(utf8(name.as_bytes()).ok(), Some(*name));
        }
        // Same length and first byte as a known text, or neither.
        for other in [
            &b"mapname"[..],
            b"ix",
            b"kex",
            b"opTypo",
            b"",
            b"x",
            b"writeConcerns",
        ] {
            assert_eq!(known_index(other), None, "{other:?}");
        }
        assert_eq!(utf8("clé".as_bytes()).ok(), Some("clé"));
        assert!(utf8(b"\xff\xfe").is_err());
    }
}
