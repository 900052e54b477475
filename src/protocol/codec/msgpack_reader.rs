//! The inbound msgpack reader: frame bytes straight to a normalised `serde_json::Value`, in
//! one pass over the slice (markers decoded by `rmp`), without an
//! intermediate `rmpv::Value` tree. The normalisation rules are those of [`super`]'s docs.
//!
//! The happy path allocates only the output (no path strings). A normalisation failure
//! carries its JSON-pointer path, assembled segment by segment while unwinding. Errors keep
//! the precedence of a parse-then-convert decoder: a malformed stream, then trailing bytes,
//! then the first normalisation failure in document order. The walk stops at the first
//! failure, so on that (rare) path the whole frame is re-scanned, iteratively, for the two
//! errors that would outrank it.

use rmp::Marker;
use serde_json::{Map, Number, Value};

use super::{DecodeError, DecodedValue, Limits, Located, LocatedKind, normalise_float, token_len};

/// Decodes one msgpack frame (see the module docs), noting whether it carried JS `undefined`
/// in its `d4 00 00` form.
pub(super) fn read_frame(bytes: &[u8], limits: &Limits) -> Result<DecodedValue, DecodeError> {
    let mut reader = Reader::new(bytes, limits.max_depth);
    match reader.value(1) {
        Ok(value) => {
            reader.finish()?;
            Ok(DecodedValue {
                value: value.ok_or(DecodeError::NotAnObject)?,
                js_undefined: reader.saw_js_undefined,
            })
        }
        Err(Failure::Malformed(error)) => Err(error),
        Err(Failure::Located(located)) => {
            check_well_formed(bytes)?;
            Err(located.into_error(limits))
        }
    }
}

/// Decodes one user value that this crate encoded itself ([`crate::user_value`]): the whole
/// of `bytes`, exactly as written (floats stay floats; ingress normalised the value before it
/// was encoded, if it came in). Its nesting was bounded when it arrived, so no depth limit
/// applies here.
pub(super) fn read_user_value(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut reader = Reader::new(bytes, usize::MAX).with_floats(Floats::Keep);
    match reader.value(1) {
        Ok(Some(value)) => {
            reader.finish()?;
            Ok(value)
        }
        Ok(None) => Err(DecodeError::Msgpack(
            "a user value is JS undefined".to_owned(),
        )),
        Err(Failure::Malformed(error)) => Err(error),
        Err(Failure::Located(located)) => Err(located.into_error(&Limits::default())),
    }
}

/// Why the walk stopped.
enum Failure {
    /// The bytes are not msgpack (truncated, or a length past the end).
    Malformed(DecodeError),
    /// Well-formed msgpack that the normalisation rules refuse.
    Located(Located),
}

impl Failure {
    /// Prefixes a located failure with the segment of the container entry it occurred in.
    fn at(self, segment: impl ToString) -> Self {
        match self {
            Self::Located(located) => Self::Located(located.at(segment)),
            malformed => malformed,
        }
    }
}

impl From<Located> for Failure {
    fn from(located: Located) -> Self {
        Self::Located(located)
    }
}

impl From<DecodeError> for Failure {
    fn from(error: DecodeError) -> Self {
        Self::Malformed(error)
    }
}

/// What a reader does with a float.
#[derive(Debug, Clone, Copy)]
pub(super) enum Floats {
    /// As ingress does (integral floats become integers; see [`normalise_float`]).
    Normalise,
    /// Keeps it a float: bytes this crate wrote, which read back exactly as written.
    Keep,
}

/// A cursor over the frame (also the tape scanner's, [`super::tape`]).
pub(super) struct Reader<'a> {
    input: &'a [u8],
    total: usize,
    max_depth: usize,
    floats: Floats,
    /// Whether a value was JS `undefined` written as fixext1 (`d4 00 00`), the form only the
    /// 2026-01 client sends.
    saw_js_undefined: bool,
}

impl<'a> Reader<'a> {
    pub(super) fn new(input: &'a [u8], max_depth: usize) -> Self {
        Self {
            input,
            total: input.len(),
            max_depth,
            floats: Floats::Normalise,
            saw_js_undefined: false,
        }
    }

    /// The reader with `floats` as its rule for floats.
    pub(super) fn with_floats(self, floats: Floats) -> Self {
        Self { floats, ..self }
    }

    /// A float token's value under the reader's [`Floats`] rule.
    pub(super) fn float(&self, number: f64) -> Result<Value, Located> {
        match self.floats {
            Floats::Normalise => normalise_float(number),
            Floats::Keep => Number::from_f64(number)
                .map(Value::Number)
                .ok_or(Located::new(LocatedKind::NonFinite)),
        }
    }

    fn truncated(&self, what: &str) -> DecodeError {
        DecodeError::Msgpack(format!(
            "unexpected end of input at byte {} while reading {what}",
            self.total - self.input.len()
        ))
    }

    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.input.len()))
        }
    }

    fn marker(&mut self) -> Result<Marker, DecodeError> {
        let Some((first, rest)) = self.input.split_first() else {
            return Err(self.truncated("a marker"));
        };
        self.input = rest;
        Ok(Marker::from_u8(*first))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.input.len() {
            return Err(self.truncated(&format!("{len} bytes of data")));
        }
        let (head, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(head)
    }

    /// The `N` bytes of a big-endian number that follows a marker.
    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let Some((head, rest)) = self.input.split_first_chunk::<N>() else {
            return Err(self.truncated("a length or number"));
        };
        self.input = rest;
        Ok(*head)
    }

    /// The length a sized marker announces: items of an array, entries of a map, bytes of a
    /// str, bin or ext body (the ext type byte not included). Zero for other markers.
    fn length(&mut self, marker: Marker) -> Result<usize, DecodeError> {
        Ok(match marker {
            Marker::FixStr(n) | Marker::FixArray(n) | Marker::FixMap(n) => usize::from(n),
            Marker::Str8 | Marker::Bin8 | Marker::Ext8 => {
                usize::from(u8::from_be_bytes(self.be()?))
            }
            Marker::Str16 | Marker::Bin16 | Marker::Array16 | Marker::Map16 | Marker::Ext16 => {
                usize::from(u16::from_be_bytes(self.be()?))
            }
            Marker::Str32 | Marker::Bin32 | Marker::Array32 | Marker::Map32 | Marker::Ext32 => {
                u32::from_be_bytes(self.be()?) as usize
            }
            Marker::FixExt1 => 1,
            Marker::FixExt2 => 2,
            Marker::FixExt4 => 4,
            Marker::FixExt8 => 8,
            Marker::FixExt16 => 16,
            _ => 0,
        })
    }

    /// [`Reader::token`] for the markers frames are mostly made of, decoded straight from
    /// the byte: `None`, with nothing consumed, for every other marker and for a truncated
    /// one, which `token` then reads or reports. The tape scanner's hot path.
    #[inline(always)]
    pub(super) fn common_token(&mut self) -> Option<Token<'a>> {
        let (&marker, rest) = self.input.split_first()?;
        let (token, rest) = match marker {
            0x00..=0x7f => (Token::Integer(marker.into()), rest),
            0x80..=0x8f => (Token::Map(usize::from(marker & 0x0f)), rest),
            0x90..=0x9f => (Token::Array(usize::from(marker & 0x0f)), rest),
            0xa0..=0xbf => {
                let (text, rest) = rest.split_at_checked(usize::from(marker & 0x1f))?;
                (Token::Str(text), rest)
            }
            0xc0 => (Token::Null, rest),
            0xc2 => (Token::Bool(false), rest),
            0xc3 => (Token::Bool(true), rest),
            0xcb => {
                let (bytes, rest) = rest.split_first_chunk::<8>()?;
                (Token::Float(f64::from_be_bytes(*bytes)), rest)
            }
            0xcc => {
                let (&byte, rest) = rest.split_first()?;
                (Token::Integer(byte.into()), rest)
            }
            0xcd => {
                let (bytes, rest) = rest.split_first_chunk::<2>()?;
                (Token::Integer(u16::from_be_bytes(*bytes).into()), rest)
            }
            0xce => {
                let (bytes, rest) = rest.split_first_chunk::<4>()?;
                (Token::Integer(u32::from_be_bytes(*bytes).into()), rest)
            }
            0xcf => {
                let (bytes, rest) = rest.split_first_chunk::<8>()?;
                (Token::Integer(u64::from_be_bytes(*bytes).into()), rest)
            }
            0xd9 => {
                let (&len, rest) = rest.split_first()?;
                let (text, rest) = rest.split_at_checked(usize::from(len))?;
                (Token::Str(text), rest)
            }
            0xe0..=0xff => (Token::Integer(i8::from_be_bytes([marker]).into()), rest),
            _ => return None,
        };
        self.input = rest;
        Some(token)
    }

    /// Reads one token: a scalar with its payload, or a container's header.
    pub(super) fn token(&mut self) -> Result<Token<'a>, DecodeError> {
        let marker = self.marker()?;
        Ok(match marker {
            // msgpack never uses 0xc1; it has always decoded as nil here, so it still does.
            Marker::Null | Marker::Reserved => Token::Null,
            Marker::True => Token::Bool(true),
            Marker::False => Token::Bool(false),
            Marker::FixPos(n) => Token::Integer(n.into()),
            Marker::FixNeg(n) => Token::Integer(n.into()),
            Marker::U8 => Token::Integer(u8::from_be_bytes(self.be()?).into()),
            Marker::U16 => Token::Integer(u16::from_be_bytes(self.be()?).into()),
            Marker::U32 => Token::Integer(u32::from_be_bytes(self.be()?).into()),
            Marker::U64 => Token::Integer(u64::from_be_bytes(self.be()?).into()),
            Marker::I8 => Token::Integer(i8::from_be_bytes(self.be()?).into()),
            Marker::I16 => Token::Integer(i16::from_be_bytes(self.be()?).into()),
            Marker::I32 => Token::Integer(i32::from_be_bytes(self.be()?).into()),
            Marker::I64 => Token::Integer(i64::from_be_bytes(self.be()?).into()),
            Marker::F32 => Token::Float(f64::from(f32::from_be_bytes(self.be()?))),
            Marker::F64 => Token::Float(f64::from_be_bytes(self.be()?)),
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                let len = self.length(marker)?;
                Token::Str(self.take(len)?)
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let len = self.length(marker)?;
                Token::Bin(self.take(len)?)
            }
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                Token::Array(self.length(marker)?)
            }
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => Token::Map(self.length(marker)?),
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => {
                let len = self.length(marker)?;
                let ext_type = i8::from_be_bytes(self.be()?);
                Token::Ext(Ext {
                    ext_type,
                    data: self.take(len)?,
                    fixext1: marker == Marker::FixExt1,
                })
            }
        })
    }

    /// Reads one value at nesting `depth`; `None` is JS `undefined` (ext-0), i.e. absent.
    fn value(&mut self, depth: usize) -> Result<Option<Value>, Failure> {
        let value = match self.token()? {
            Token::Null => Value::Null,
            Token::Bool(value) => Value::Bool(value),
            Token::Integer(number) => Value::Number(number),
            Token::Float(number) => self.float(number)?,
            Token::Str(bytes) => Value::String(utf8(bytes)?.to_owned()),
            Token::Bin(bytes) => Value::Array(bytes.iter().map(|b| Value::from(*b)).collect()),
            Token::Array(len) => self.array(len, depth)?,
            Token::Map(len) => self.map(len, depth)?,
            Token::Ext(ext) if ext.is_js_undefined() => {
                self.saw_js_undefined |= ext.fixext1;
                return Ok(None);
            }
            Token::Ext(ext) => {
                return Err(Located::new(LocatedKind::UnsupportedExt(ext.ext_type)).into());
            }
        };
        Ok(Some(value))
    }

    fn check_depth(&self, depth: usize) -> Result<(), Failure> {
        if depth > self.max_depth {
            return Err(Located::new(LocatedKind::TooDeep).into());
        }
        Ok(())
    }

    fn array(&mut self, len: usize, depth: usize) -> Result<Value, Failure> {
        self.check_depth(depth)?;
        // Every item takes at least one byte, so a lying length cannot over-allocate.
        let mut items = Vec::with_capacity(len.min(self.input.len()));
        for index in 0..len {
            match self.value(depth + 1) {
                Ok(item) => items.push(item.unwrap_or(Value::Null)),
                Err(failure) => return Err(failure.at(index)),
            }
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, len: usize, depth: usize) -> Result<Value, Failure> {
        self.check_depth(depth)?;
        // Every entry takes at least two bytes.
        let mut entries = Map::with_capacity(len.min(self.input.len() / 2));
        for _ in 0..len {
            let key = self.key()?;
            match self.value(depth + 1) {
                Ok(Some(item)) => {
                    entries.insert(key, item);
                }
                Ok(None) => {}
                Err(failure) => return Err(failure.at(key)),
            }
        }
        Ok(Value::Object(entries))
    }

    /// A map key; a key that is not a string (or not UTF-8) fails at the map's own path.
    fn key(&mut self) -> Result<String, Failure> {
        let marker = self.marker()?;
        match marker {
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                let len = self.length(marker)?;
                Ok(utf8(self.take(len)?)?.to_owned())
            }
            _ => Err(Located::new(LocatedKind::NonStringKey).into()),
        }
    }
}

/// One msgpack token: a scalar with its payload, or the header of a container whose items
/// follow.
#[derive(Debug)]
pub(super) enum Token<'a> {
    Null,
    Bool(bool),
    Integer(Number),
    /// Not normalised yet.
    Float(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(usize),
    Map(usize),
    Ext(Ext<'a>),
}

/// An ext value.
#[derive(Debug)]
pub(super) struct Ext<'a> {
    pub(super) ext_type: i8,
    pub(super) data: &'a [u8],
    /// Written in the `d4` form of an ext of one byte.
    pub(super) fixext1: bool,
}

impl Ext<'_> {
    /// JS `undefined`: ext type 0 with the single byte 0.
    pub(super) fn is_js_undefined(&self) -> bool {
        self.ext_type == 0 && self.data == [0]
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, Failure> {
    std::str::from_utf8(bytes).map_err(|_| Located::new(LocatedKind::InvalidUtf8).into())
}

/// Scans the whole frame for a malformed stream or trailing bytes, without building values
/// and without recursion (so a hostile nesting depth cannot exhaust the stack).
fn check_well_formed(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut reader = Reader::new(bytes, 0);
    let mut pending: usize = 1;
    while pending > 0 {
        pending -= 1;
        let marker = reader.marker()?;
        match marker {
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                pending = pending.saturating_add(reader.length(marker)?);
            }
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                pending = pending.saturating_add(reader.length(marker)?.saturating_mul(2));
            }
            Marker::Reserved => {}
            _ => {
                let len =
                    token_len(marker, reader.input).ok_or_else(|| reader.truncated("a length"))?;
                reader.take(len.saturating_sub(1))?;
            }
        }
    }
    reader.finish()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rmpv::Value as Mp;
    use serde_json::json;

    use super::*;

    fn read(bytes: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
        read_frame(bytes, limits).map(|decoded| decoded.value)
    }

    fn encode(value: &Mp) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, value).unwrap();
        out
    }

    fn map(entries: Vec<(&str, Mp)>) -> Mp {
        Mp::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    fn nested_arrays(levels: usize) -> Mp {
        (1..levels).fold(Mp::Array(vec![]), |inner, _| Mp::Array(vec![inner]))
    }

    /// The previous decoder (rmpv tree, then conversion), kept as the oracle.
    fn oracle(bytes: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
        let mut reader = bytes;
        let raw = rmpv::decode::read_value(&mut reader)
            .map_err(|e| DecodeError::Msgpack(e.to_string()))?;
        if !reader.is_empty() {
            return Err(DecodeError::TrailingBytes(reader.len()));
        }
        match oracle_convert(raw, 1, limits) {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(DecodeError::NotAnObject),
            Err(located) => Err(located.into_error(limits)),
        }
    }

    fn oracle_convert(raw: Mp, depth: usize, limits: &Limits) -> Result<Option<Value>, Located> {
        let too_deep = || Located::new(LocatedKind::TooDeep);
        Ok(Some(match raw {
            Mp::Nil => Value::Null,
            Mp::Boolean(b) => Value::Bool(b),
            Mp::Integer(i) => match (i.as_u64(), i.as_i64()) {
                (Some(u), _) => Value::from(u),
                (None, Some(s)) => Value::from(s),
                (None, None) => Value::Null,
            },
            Mp::F32(f) => normalise_float(f64::from(f))?,
            Mp::F64(f) => normalise_float(f)?,
            Mp::String(s) => Value::String(
                s.into_str()
                    .ok_or_else(|| Located::new(LocatedKind::InvalidUtf8))?,
            ),
            Mp::Binary(bytes) => Value::Array(bytes.into_iter().map(Value::from).collect()),
            Mp::Ext(0, data) if data == [0] => return Ok(None),
            Mp::Ext(t, _) => return Err(Located::new(LocatedKind::UnsupportedExt(t))),
            Mp::Array(items) => {
                if depth > limits.max_depth {
                    return Err(too_deep());
                }
                let mut out = Vec::new();
                for (index, item) in items.into_iter().enumerate() {
                    let item = oracle_convert(item, depth + 1, limits).map_err(|e| e.at(index))?;
                    out.push(item.unwrap_or(Value::Null));
                }
                Value::Array(out)
            }
            Mp::Map(entries) => {
                if depth > limits.max_depth {
                    return Err(too_deep());
                }
                let mut out = Map::new();
                for (key, item) in entries {
                    let key = match key {
                        Mp::String(s) => s
                            .into_str()
                            .ok_or_else(|| Located::new(LocatedKind::InvalidUtf8))?,
                        _ => return Err(Located::new(LocatedKind::NonStringKey)),
                    };
                    match oracle_convert(item, depth + 1, limits) {
                        Ok(Some(item)) => {
                            out.insert(key, item);
                        }
                        Ok(None) => {}
                        Err(e) => return Err(e.at(key)),
                    }
                }
                Value::Object(out)
            }
        }))
    }

    /// Malformed-stream messages differ between the decoders; everything else must match.
    fn same_outcome(
        ours: &Result<Value, DecodeError>,
        theirs: &Result<Value, DecodeError>,
    ) -> bool {
        match (ours, theirs) {
            (Err(DecodeError::Msgpack(_)), Err(DecodeError::Msgpack(_))) => true,
            _ => ours == theirs,
        }
    }

    /// A msgpack str holding arbitrary (often invalid UTF-8) bytes.
    fn raw_string(bytes: &[u8]) -> Mp {
        let mut encoded = vec![0xa0 | bytes.len() as u8];
        encoded.extend_from_slice(bytes);
        rmpv::decode::read_value(&mut encoded.as_slice()).unwrap()
    }

    fn leaf() -> impl Strategy<Value = Mp> {
        prop_oneof![
            Just(Mp::Nil),
            any::<bool>().prop_map(Mp::Boolean),
            any::<u64>().prop_map(Mp::from),
            any::<i64>().prop_map(Mp::from),
            any::<f32>().prop_map(Mp::F32),
            any::<f64>().prop_map(Mp::F64),
            (-2_000_000_000_000_000i64..2_000_000_000_000_000).prop_map(|i| Mp::F64(i as f64)),
            ".{0,12}".prop_map(Mp::from),
            proptest::collection::vec(any::<u8>(), 0..6).prop_map(|b| raw_string(&b)),
            proptest::collection::vec(any::<u8>(), 0..6).prop_map(Mp::Binary),
            Just(Mp::Ext(0, vec![0])),
            (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..5))
                .prop_map(|(t, d)| Mp::Ext(t, d)),
        ]
    }

    fn tree() -> impl Strategy<Value = Mp> {
        leaf().prop_recursive(5, 48, 6, |inner| {
            let key = prop_oneof![
                8 => "[a-z/~]{0,4}".prop_map(Mp::from),
                1 => any::<i32>().prop_map(Mp::from),
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Mp::Array),
                proptest::collection::vec((key, inner), 0..6).prop_map(Mp::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn matches_the_previous_decoder(value in tree(), max_depth in 1usize..7) {
            let limits = Limits { max_depth, max_frame_bytes: usize::MAX };
            let bytes = encode(&value);
            let ours = read(&bytes, &limits);
            let theirs = oracle(&bytes, &limits);
            prop_assert!(same_outcome(&ours, &theirs), "{ours:?} vs {theirs:?}");
        }

        #[test]
        fn matches_the_previous_decoder_on_damaged_frames(
            value in tree(),
            cut in any::<proptest::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let limits = Limits { max_depth: 4, max_frame_bytes: usize::MAX };
            let mut bytes = encode(&value);
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend_from_slice(&extra);
            let ours = read(&bytes, &limits);
            let theirs = oracle(&bytes, &limits);
            prop_assert!(same_outcome(&ours, &theirs), "{ours:?} vs {theirs:?}");
        }

        #[test]
        fn the_common_token_fast_path_reads_what_token_reads(
            marker in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut bytes = vec![marker];
            bytes.extend_from_slice(&body);
            let mut fast = Reader::new(&bytes, 8);
            let mut general = Reader::new(&bytes, 8);
            match fast.common_token() {
                Some(token) => {
                    let expected = general.token().map(|token| format!("{token:?}"));
                    prop_assert_eq!(Ok(format!("{token:?}")), expected);
                    prop_assert_eq!(fast.input, general.input);
                }
                None => prop_assert_eq!(fast.input, &bytes[..]),
            }
        }
    }

    #[test]
    fn the_full_default_depth_is_usable_and_one_more_level_is_located() {
        let limits = Limits::default();
        let ok = encode(&map(vec![("a", nested_arrays(63))]));
        assert!(read(&ok, &limits).is_ok());
        let deep = encode(&map(vec![("a", nested_arrays(64))]));
        let path = format!("/a{}", "/0".repeat(63));
        assert_eq!(
            read(&deep, &limits),
            Err(DecodeError::TooDeep { path, max: 64 })
        );
    }

    #[test]
    fn hostile_nesting_is_refused_without_recursing_into_it() {
        let mut bytes = vec![0x91; 1_000_000];
        bytes.push(0x90);
        assert!(matches!(
            read(&bytes, &Limits::default()),
            Err(DecodeError::TooDeep { .. })
        ));
        bytes.pop();
        assert!(matches!(
            read(&bytes, &Limits::default()),
            Err(DecodeError::Msgpack(_))
        ));
    }

    #[test]
    fn a_malformed_tail_outranks_an_earlier_normalisation_failure() {
        let limits = Limits::default();
        let mut bytes = encode(&map(vec![("a", Mp::F64(f64::NAN)), ("b", "x".into())]));
        bytes.pop();
        assert!(matches!(
            read(&bytes, &limits),
            Err(DecodeError::Msgpack(_))
        ));
        bytes.extend_from_slice(b"x\xc0");
        assert_eq!(read(&bytes, &limits), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn lying_lengths_fail_without_allocating_them() {
        let limits = Limits::default();
        for header in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdf, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(matches!(
                read(header, &limits),
                Err(DecodeError::Msgpack(_))
            ));
        }
    }

    #[test]
    fn reserved_marker_reads_as_null_and_float_millis_as_integers() {
        let mut bytes = encode(&map(vec![
            ("m", Mp::F64(1_795_698_229_131.0)),
            ("r", Mp::Nil),
        ]));
        let last = bytes.len() - 1;
        bytes[last] = 0xc1;
        assert_eq!(
            read(&bytes, &Limits::default()),
            Ok(json!({"m": 1_795_698_229_131u64, "r": null}))
        );
    }

    #[test]
    fn js_undefined_is_noted_only_in_its_fixext1_form() {
        let limits = Limits::default();
        let noted = |bytes: &[u8]| read_frame(bytes, &limits).map(|d| d.js_undefined);
        // {"a": undefined, "b": [undefined]}: both read as absent or null, and noted.
        let both = [
            0x82, 0xa1, b'a', 0xd4, 0x00, 0x00, 0xa1, b'b', 0x91, 0xd4, 0x00, 0x00,
        ];
        assert_eq!(read(&both, &limits), Ok(json!({"b": [null]})));
        assert_eq!(noted(&both), Ok(true));
        // The same undefined as ext8 is read alike but is not the 2026-01 client's form.
        assert_eq!(
            noted(&[0x81, 0xa1, b'a', 0xc7, 0x01, 0x00, 0x00]),
            Ok(false)
        );
        // The three bytes as string content are data.
        assert_eq!(
            noted(&[0x81, 0xa1, b's', 0xa3, 0xd4, 0x00, 0x00]),
            Err(DecodeError::InvalidUtf8 {
                path: "/s".to_owned()
            })
        );
        assert_eq!(
            noted(&[0x81, 0xa1, b'b', 0xc4, 0x03, 0xd4, 0x00, 0x00]),
            Ok(false)
        );
    }
}
