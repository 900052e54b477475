//! Inbound decoding and outbound encoding of frames (PROTOCOL.md §1.2, §1.4, §1.6, §6.5).
//!
//! Inbound, in three separately callable steps:
//! 1. [`decode_value`]: msgpack (or JSON) bytes → `serde_json::Value`, normalised: msgpack
//!    ext-0 (JS `undefined`) is absent (its map key is dropped; inside arrays it becomes
//!    `null`), integral floats within ±2⁵³ become integers (so float64 `millis` fits `u64`
//!    fields), non-finite floats and non-string map keys are errors naming the JSON-pointer
//!    path, `bin` becomes an array of byte values, and frame size and nesting depth are
//!    limited. A binary frame starting with `{` is read as JSON, like the 2026-01 server's
//!    fallback (a msgpack message is a map and never starts with that byte).
//!    msgpack is read in one pass, straight into the JSON value (`codec/msgpack_reader.rs`).
//! 2. [`crate::protocol::validate()`]: the generated JSON Schema of the message's `type`.
//! 3. [`decode_typed`]: `serde_json::from_value` into that type (unknown fields ignored).
//!
//! Outbound: [`encode_msgpack`] writes named maps, omits absent optionals, never writes
//! ext-0, and writes integers outside `[-2³¹, 2³²)` as float64 — what msgpackr does, and what
//! the 2026-01 client needs because it breaks on 64-bit integers. [`encode_json`] writes JSON
//! text. [`encode_batch`] / [`decode_batch_data`] handle the §1.6 `BATCH` envelope.

use rmp::Marker;
use serde_json::{Number, Value};

use super::misc::Batch;
use super::validate::{Violation, is_valid_tape, known_type, validate};
use super::{Bytes, Message};
use tape::{Shape, Tape};

mod msgpack_reader;
pub mod msgpack_writer;
pub(crate) mod tape;

/// One WebSocket frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Binary(&'a [u8]),
    Text(&'a str),
}

/// Ingress limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum nesting of maps and arrays; the message map itself is level 1.
    pub max_depth: usize,
    /// Maximum frame payload size in bytes.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_frame_bytes: 2 * 1024 * 1024,
        }
    }
}

/// Why an inbound frame could not be turned into a [`Message`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    #[error("nesting deeper than {max} levels at {path:?}")]
    TooDeep { path: String, max: usize },
    #[error("non-finite number at {path:?}")]
    NonFiniteNumber { path: String },
    #[error("map key at {path:?} is not a string")]
    NonStringKey { path: String },
    #[error("string at {path:?} is not valid UTF-8")]
    InvalidUtf8 { path: String },
    #[error("unsupported msgpack extension type {ext_type} at {path:?}")]
    UnsupportedExt { path: String, ext_type: i8 },
    #[error("malformed msgpack: {0}")]
    Msgpack(String),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("message is not a map")]
    NotAnObject,
    #[error("message has no string `type`")]
    MissingType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("{type_name} message violates its schema ({} violation(s))", violations.len())]
    Invalid {
        type_name: String,
        violations: Vec<Violation>,
    },
    #[error("{type_name} message does not match its type: {message}")]
    Typed { type_name: String, message: String },
    #[error("malformed BATCH data: {0}")]
    Batch(String),
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("msgpack encoding failed: {0}")]
    Msgpack(String),
    #[error("JSON encoding failed: {0}")]
    Json(String),
    #[error("BATCH too large: {0}")]
    BatchTooLarge(String),
}

/// Decodes, validates and types one frame with the default [`Limits`].
pub fn decode(frame: Frame<'_>) -> Result<Message, DecodeError> {
    decode_with(frame, &Limits::default())
}

/// Decodes, validates and types one frame.
pub fn decode_with(frame: Frame<'_>, limits: &Limits) -> Result<Message, DecodeError> {
    if let Frame::Binary(bytes) = frame
        && let Some(fast) = decode_msgpack_fast(bytes, limits, true)
    {
        return Ok(fast.message);
    }
    let value = decode_value(frame, limits)?;
    let type_name = static_type_of(&value)?;
    validate(type_name, &value).map_err(|violations| DecodeError::Invalid {
        type_name: type_name.to_owned(),
        violations,
    })?;
    decode_typed(value)
}

/// Decodes a map this crate encoded (a stored row) through the fast path's tape, so the LWW
/// values in it stay encoded ([`crate::user_value`]); `None` when the tape declines it.
pub(crate) fn decode_encoded_map<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let tape = Tape::scan_stored(bytes, Limits::default().max_depth).ok()?;
    T::deserialize(tape.root()).ok()
}

/// Decodes the MessagePack of a [`crate::user_value::UserValue`].
pub(crate) fn decode_user_value(bytes: &[u8]) -> Result<Value, DecodeError> {
    msgpack_reader::read_user_value(bytes)
}

/// A message the msgpack fast path decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct FastDecoded {
    pub message: Message,
    /// As [`DecodedValue::js_undefined`].
    pub js_undefined: bool,
}

/// The msgpack fast path: the three steps in one, for a msgpack frame, without building a
/// `serde_json::Value` for the message envelope (`codec/tape.rs`): the frame is scanned
/// into a tape, the tape validated against the schema of its `type` (unless `validate` is
/// off, for benchmarks only), and typed straight from the tape. It only ever succeeds where
/// the three steps would succeed with the same message; `None` means "take the general
/// path", which then decodes the frame or says precisely why it cannot.
pub fn decode_msgpack_fast(bytes: &[u8], limits: &Limits, validate: bool) -> Option<FastDecoded> {
    if bytes.len() > limits.max_frame_bytes || bytes.first() == Some(&b'{') {
        return None;
    }
    let tape = Tape::scan(bytes, limits.max_depth).ok()?;
    let root = tape.root();
    let type_name = match root.get("type")?.shape() {
        Shape::Str(name) => known_type(name)?,
        _ => return None,
    };
    if validate && !is_valid_tape(type_name, root) {
        return None;
    }
    let message = Message::from_deserializer_of_type(type_name, root)?.ok()?;
    Some(FastDecoded {
        message,
        js_undefined: tape.saw_js_undefined(),
    })
}

/// Step 1: frame → normalised JSON value (see the module docs).
pub fn decode_value(frame: Frame<'_>, limits: &Limits) -> Result<Value, DecodeError> {
    decode_value_noting_undefined(frame, limits).map(|decoded| decoded.value)
}

/// A normalised frame value, and whether the frame carried JS `undefined`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedValue {
    pub value: Value,
    /// True when some value of a msgpack frame was ext-0 in its fixext1 form (`d4 00 00`),
    /// which only the 2026-01 client sends; always false for JSON.
    pub js_undefined: bool,
}

/// Step 1, also noting JS `undefined` in the same pass over the frame.
pub fn decode_value_noting_undefined(
    frame: Frame<'_>,
    limits: &Limits,
) -> Result<DecodedValue, DecodeError> {
    let size = match frame {
        Frame::Binary(bytes) => bytes.len(),
        Frame::Text(text) => text.len(),
    };
    if size > limits.max_frame_bytes {
        return Err(DecodeError::FrameTooLarge {
            size,
            max: limits.max_frame_bytes,
        });
    }
    match frame {
        Frame::Binary(bytes) if bytes.first() == Some(&b'{') => {
            let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
            json_to_value(text, limits)
        }
        Frame::Binary(bytes) => msgpack_reader::read_frame(bytes, limits),
        Frame::Text(text) => json_to_value(text, limits),
    }
}

/// Step 3: a (validated) JSON value → the typed message named by its `type`.
pub fn decode_typed(value: Value) -> Result<Message, DecodeError> {
    let type_name = static_type_of(&value)?;
    match Message::from_value_of_type(type_name, value) {
        Some(Ok(message)) => Ok(message),
        Some(Err(e)) => Err(DecodeError::Typed {
            type_name: type_name.to_owned(),
            message: e.to_string(),
        }),
        None => Err(DecodeError::UnknownType(type_name.to_owned())),
    }
}

/// The `type` of a message value, as the static name of a known type.
fn static_type_of(value: &Value) -> Result<&'static str, DecodeError> {
    let Value::Object(map) = value else {
        return Err(DecodeError::NotAnObject);
    };
    let Some(Value::String(type_name)) = map.get("type") else {
        return Err(DecodeError::MissingType);
    };
    known_type(type_name).ok_or_else(|| DecodeError::UnknownType(type_name.clone()))
}

/// A normalisation failure with its location, collected innermost-first while unwinding.
struct Located {
    kind: LocatedKind,
    reversed_path: Vec<String>,
}

enum LocatedKind {
    TooDeep,
    NonFinite,
    NonStringKey,
    InvalidUtf8,
    UnsupportedExt(i8),
}

impl Located {
    fn new(kind: LocatedKind) -> Self {
        Self {
            kind,
            reversed_path: Vec::new(),
        }
    }

    fn at(mut self, segment: impl ToString) -> Self {
        self.reversed_path.push(segment.to_string());
        self
    }

    fn into_error(self, limits: &Limits) -> DecodeError {
        let path: String = self
            .reversed_path
            .iter()
            .rev()
            .map(|segment| format!("/{}", segment.replace('~', "~0").replace('/', "~1")))
            .collect();
        match self.kind {
            LocatedKind::TooDeep => DecodeError::TooDeep {
                path,
                max: limits.max_depth,
            },
            LocatedKind::NonFinite => DecodeError::NonFiniteNumber { path },
            LocatedKind::NonStringKey => DecodeError::NonStringKey { path },
            LocatedKind::InvalidUtf8 => DecodeError::InvalidUtf8 { path },
            LocatedKind::UnsupportedExt(ext_type) => DecodeError::UnsupportedExt { path, ext_type },
        }
    }
}

/// Largest magnitude at which every integer is exactly representable as f64.
const MAX_SAFE_FLOAT_INT: f64 = 9_007_199_254_740_992.0;

/// A finite float as a JSON number, integral values within ±2⁵³ as integers.
fn normalise_float(f: f64) -> Result<Value, Located> {
    if !f.is_finite() {
        return Err(Located::new(LocatedKind::NonFinite));
    }
    if f.fract() == 0.0 && f.abs() <= MAX_SAFE_FLOAT_INT {
        // Exact: the value is integral and within the f64-exact integer range.
        return Ok(if f < 0.0 {
            Value::from(f as i64)
        } else {
            Value::from(f as u64)
        });
    }
    Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
}

fn check_depth(depth: usize, limits: &Limits) -> Result<(), Located> {
    if depth > limits.max_depth {
        return Err(Located::new(LocatedKind::TooDeep));
    }
    Ok(())
}

fn json_to_value(text: &str, limits: &Limits) -> Result<DecodedValue, DecodeError> {
    let mut value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    normalise_json(&mut value, 1, limits).map_err(|e| e.into_error(limits))?;
    Ok(DecodedValue {
        value,
        js_undefined: false,
    })
}

/// Applies the msgpack normalisation rules that JSON can need: integral floats and depth.
fn normalise_json(value: &mut Value, depth: usize, limits: &Limits) -> Result<(), Located> {
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                *value = normalise_float(f)?;
            }
        }
        Value::Array(items) => {
            check_depth(depth, limits)?;
            for (index, item) in items.iter_mut().enumerate() {
                normalise_json(item, depth + 1, limits).map_err(|e| e.at(index))?;
            }
        }
        Value::Object(map) => {
            check_depth(depth, limits)?;
            for (key, item) in map.iter_mut() {
                normalise_json(item, depth + 1, limits).map_err(|e| e.at(key))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Encodes a message as one msgpack frame (see the module docs for the rules).
pub fn encode_msgpack(message: &Message) -> Result<Vec<u8>, EncodeError> {
    let named =
        rmp_serde::to_vec_named(message).map_err(|e| EncodeError::Msgpack(e.to_string()))?;
    widen_large_integers(&named)
}

/// Encodes a message as JSON text.
pub fn encode_json(message: &Message) -> Result<String, EncodeError> {
    serde_json::to_string(message).map_err(|e| EncodeError::Json(e.to_string()))
}

/// Copies a msgpack stream, rewriting 64-bit integers outside `[-2³¹, 2³²)` as float64 and
/// the others in their smallest integer form.
fn widen_large_integers(input: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let truncated = || EncodeError::Msgpack("truncated msgpack stream".to_owned());
    let mut out = Vec::with_capacity(input.len() + 16);
    let mut pos = 0;
    while pos < input.len() {
        let marker = Marker::from_u8(input[pos]);
        let body = input.get(pos + 1..).ok_or_else(truncated)?;
        match marker {
            Marker::U64 | Marker::I64 => {
                let raw: [u8; 8] = body
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(truncated)?;
                let wide = if marker == Marker::U64 {
                    i128::from(u64::from_be_bytes(raw))
                } else {
                    i128::from(i64::from_be_bytes(raw))
                };
                write_integer(&mut out, wide)?;
                pos += 9;
            }
            _ => {
                let len = token_len(marker, body).ok_or_else(truncated)?;
                let token = input.get(pos..pos + len).ok_or_else(truncated)?;
                out.extend_from_slice(token);
                pos += len;
            }
        }
    }
    Ok(out)
}

/// Writes an integer as msgpackr would: 32-bit forms inside `[-2³¹, 2³²)`, else float64.
pub(crate) fn write_integer(out: &mut Vec<u8>, value: i128) -> Result<(), EncodeError> {
    let io = |e: rmp::encode::ValueWriteError| EncodeError::Msgpack(e.to_string());
    if let Ok(u) = u32::try_from(value) {
        rmp::encode::write_uint(out, u64::from(u)).map_err(io)?;
    } else if let Ok(s) = i32::try_from(value) {
        rmp::encode::write_sint(out, i64::from(s)).map_err(io)?;
    } else {
        // Large integers are approximated exactly as JS numbers would hold them.
        rmp::encode::write_f64(out, value as f64).map_err(io)?;
    }
    Ok(())
}

/// Byte length of the token starting with `marker` (header plus any inline payload; the
/// items of arrays and maps are separate tokens). `None` when `body` is too short.
fn token_len(marker: Marker, body: &[u8]) -> Option<usize> {
    let be = |n: usize| -> Option<usize> {
        let bytes = body.get(..n)?;
        Some(
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
        )
    };
    Some(match marker {
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => 1,
        Marker::FixMap(_) | Marker::FixArray(_) => 1,
        Marker::U8 | Marker::I8 => 2,
        Marker::U16 | Marker::I16 | Marker::Array16 | Marker::Map16 => 3,
        Marker::U32 | Marker::I32 | Marker::F32 | Marker::Array32 | Marker::Map32 => 5,
        Marker::U64 | Marker::I64 | Marker::F64 => 9,
        Marker::FixStr(n) => 1 + usize::from(n),
        Marker::Str8 | Marker::Bin8 => 2 + be(1)?,
        Marker::Str16 | Marker::Bin16 => 3 + be(2)?,
        Marker::Str32 | Marker::Bin32 => 5 + be(4)?,
        Marker::FixExt1 => 3,
        Marker::FixExt2 => 4,
        Marker::FixExt4 => 6,
        Marker::FixExt8 => 10,
        Marker::FixExt16 => 18,
        Marker::Ext8 => 3 + be(1)?,
        Marker::Ext16 => 4 + be(2)?,
        Marker::Ext32 => 6 + be(4)?,
        Marker::Reserved => return None,
    })
}

/// Wraps already-encoded messages in one `BATCH` frame (§1.6): `data` = u32 LE count, then
/// per message u32 LE length + bytes.
pub fn encode_batch(messages: &[Vec<u8>]) -> Result<Vec<u8>, EncodeError> {
    let too_large = |what: &str| EncodeError::BatchTooLarge(what.to_owned());
    let count = u32::try_from(messages.len()).map_err(|_| too_large("too many messages"))?;
    let total: usize = messages.iter().map(|m| m.len() + 4).sum();
    let mut data = Vec::with_capacity(4 + total);
    data.extend_from_slice(&count.to_le_bytes());
    for message in messages {
        let len = u32::try_from(message.len()).map_err(|_| too_large("message over 4 GiB"))?;
        data.extend_from_slice(&len.to_le_bytes());
        data.extend_from_slice(message);
    }
    encode_msgpack(&Message::Batch(Batch {
        count,
        data: Bytes(data),
    }))
}

/// Splits the `data` of a `BATCH` into its encoded messages.
pub fn decode_batch_data(data: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let read_u32 = |at: usize| -> Result<u32, DecodeError> {
        data.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| DecodeError::Batch(format!("truncated length at byte {at}")))
    };
    let count = read_u32(0)? as usize;
    let mut pos = 4;
    let mut out = Vec::with_capacity(count.min(data.len() / 4));
    for index in 0..count {
        let len = read_u32(pos)? as usize;
        pos += 4;
        let message = data.get(pos..pos + len).ok_or_else(|| {
            DecodeError::Batch(format!("message {index} of {len} bytes is truncated"))
        })?;
        out.push(message);
        pos += len;
    }
    if pos != data.len() {
        return Err(DecodeError::Batch(format!(
            "{} trailing bytes",
            data.len() - pos
        )));
    }
    Ok(out)
}
