//! Value access and comparison rules shared by filtering and sorting (PROTOCOL.md §4.7).
//!
//! Owns three things:
//! - [`FieldPath`]: how an attribute name finds a value inside a record. A path first tries the
//!   attribute as one literal top-level key (what TopGun 2026-01 does, so `"a.b"` still finds a
//!   key literally named `a.b`); only when that key is absent is it split on `.` and walked
//!   through nested objects and arrays (by decimal index, as JS `data["0"]` indexes an array —
//!   relevant for OR-map values, which are arrays of live values).
//! - JS operator semantics for filters: [`strict_equals`] (`===`) and [`relational`]
//!   (`< <= > >=`).
//! - [`compare_values`]: the sort order, a *total* order modelled on TopGun's `compareValues`.
//!
//! Deliberate, documented deviations from JavaScript:
//! - Numbers are compared exactly (integers beyond 2^53 do not collapse onto each other).
//! - Relational operators only compare two numbers, two strings (by UTF-16 code units) or two
//!   booleans (`false < true`); any other pairing (mixed types, `null`, absent, arrays, objects)
//!   is `false`, where JS would coerce.
//! - Sorting needs a total order, so mixed types are ranked instead of compared via
//!   `String(a).localeCompare(String(b))`: absent/`null` < booleans < numbers < ISO-8601 date
//!   strings < other strings < arrays < objects. Strings compare by UTF-16 code units, not
//!   `localeCompare`. Date strings compare as instants (a date-time without an offset is read
//!   as UTC), ties broken by code units.

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// A compiled attribute path (see the module docs for the lookup rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    raw: String,
    segments: Vec<String>,
}

impl FieldPath {
    /// A path for an attribute name as sent on the wire.
    pub fn new(attribute: &str) -> Self {
        Self {
            raw: attribute.to_owned(),
            segments: attribute.split('.').map(str::to_owned).collect(),
        }
    }

    /// The value at this path in `record`, or `None` when absent.
    pub fn resolve<'a>(&self, record: &'a Value) -> Option<&'a Value> {
        if let Some(direct) = record.as_object().and_then(|map| map.get(&self.raw)) {
            return Some(direct);
        }
        self.segments
            .iter()
            .try_fold(record, |current, segment| step(current, segment))
    }
}

fn step<'a>(value: &'a Value, segment: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

/// JS `===` between a record field (possibly absent) and an operand.
///
/// Arrays and objects are never strictly equal to anything: in JS they would have to be the
/// same reference, and an operand decoded from the wire never is.
pub fn strict_equals(field: Option<&Value>, operand: &Value) -> bool {
    match (field, operand) {
        (Some(Value::Null), Value::Null) => true,
        (Some(Value::Bool(a)), Value::Bool(b)) => a == b,
        (Some(Value::Number(a)), Value::Number(b)) => compare_numbers(a, b) == Ordering::Equal,
        (Some(Value::String(a)), Value::String(b)) => a == b,
        _ => false,
    }
}

/// A relational operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Relation {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Relation::Gt => ordering == Ordering::Greater,
            Relation::Gte => ordering != Ordering::Less,
            Relation::Lt => ordering == Ordering::Less,
            Relation::Lte => ordering != Ordering::Greater,
        }
    }
}

/// `field <relation> operand` with the restricted JS semantics described in the module docs.
pub fn relational(field: Option<&Value>, relation: Relation, operand: &Value) -> bool {
    let ordering = match (field, operand) {
        (Some(Value::Number(a)), Value::Number(b)) => compare_numbers(a, b),
        (Some(Value::String(a)), Value::String(b)) => compare_code_units(a, b),
        (Some(Value::Bool(a)), Value::Bool(b)) => a.cmp(b),
        _ => return false,
    };
    relation.holds(ordering)
}

/// Compares two strings by UTF-16 code units, as JS `<` does.
///
/// UTF-8 byte order is code point order, and that is UTF-16 order for every pair of
/// characters below U+E000 (UTF-16 puts supplementary characters, as surrogates, before
/// U+E000..U+FFFF). So the first differing byte decides unless a character there starts at
/// or above U+E000 (lead byte 0xEE); only then are the code units compared.
pub fn compare_code_units(a: &str, b: &str) -> Ordering {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let Some(at) = x.iter().zip(y).position(|(p, q)| p != q) else {
        return x.len().cmp(&y.len());
    };
    // The characters that differ start at the last non-continuation byte up to `at`; before
    // `at` both strings hold the same bytes.
    let start = (0..=at)
        .rev()
        .find(|&i| x.get(i).is_some_and(|byte| byte & 0xC0 != 0x80))
        .unwrap_or(0);
    let below_e000 = |bytes: &[u8]| bytes.get(start).is_some_and(|lead| *lead < 0xEE);
    match (x.get(at), y.get(at)) {
        (Some(p), Some(q)) if below_e000(x) && below_e000(y) => p.cmp(q),
        _ => a.encode_utf16().cmp(b.encode_utf16()),
    }
}

/// Compares two JSON numbers exactly, whatever mix of integer and float they are.
pub fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    match (exact(a), exact(b)) {
        (Exact::Int(x), Exact::Int(y)) => x.cmp(&y),
        (Exact::Float(x), Exact::Float(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (Exact::Int(x), Exact::Float(y)) => compare_int_float(x, y),
        (Exact::Float(x), Exact::Int(y)) => compare_int_float(y, x).reverse(),
    }
}

enum Exact {
    Int(i128),
    Float(f64),
}

fn exact(n: &Number) -> Exact {
    if let Some(i) = n.as_i64() {
        Exact::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Exact::Int(i128::from(u))
    } else {
        Exact::Float(n.as_f64().unwrap_or(0.0))
    }
}

fn compare_int_float(int: i128, float: f64) -> Ordering {
    let floor = float.floor();
    // The saturating cast is exact for every integral f64 in i128 range; beyond it the
    // saturated bound still orders correctly against any JSON integer (at most 64 bits).
    let floor_int = floor as i128;
    match int.cmp(&floor_int) {
        Ordering::Equal if float > floor => Ordering::Less,
        other => other,
    }
}

/// The sort order: a total order over optional JSON values (see the module docs).
pub fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let (rank_a, rank_b) = (rank(a), rank(b));
    if rank_a != rank_b {
        return rank_a.cmp(&rank_b);
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => compare_numbers(x, y),
        (Some(Value::String(x)), Some(Value::String(y))) => compare_strings(x, y),
        (Some(x @ (Value::Array(_) | Value::Object(_))), Some(y)) => {
            compare_code_units(&x.to_string(), &y.to_string())
        }
        _ => Ordering::Equal,
    }
}

fn rank(value: Option<&Value>) -> u8 {
    match value {
        None | Some(Value::Null) => 0,
        Some(Value::Bool(_)) => 1,
        Some(Value::Number(_)) => 2,
        Some(Value::String(s)) if iso_date_millis(s).is_some() => 3,
        Some(Value::String(_)) => 4,
        Some(Value::Array(_)) => 5,
        Some(Value::Object(_)) => 6,
    }
}

fn compare_strings(a: &str, b: &str) -> Ordering {
    match (iso_date_millis(a), iso_date_millis(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| compare_code_units(a, b)),
        _ => compare_code_units(a, b),
    }
}

/// Milliseconds since the epoch for an ISO-8601 date or date-time string
/// (`YYYY-MM-DD[THH:MM[:SS[.fff…]]][Z|±HH:MM|±HHMM]`), or `None` for anything else.
pub fn iso_date_millis(s: &str) -> Option<i64> {
    let bytes = s.as_bytes();
    let year = digits(bytes, 0, 4)?;
    expect_byte(bytes, 4, b'-')?;
    let month = digits(bytes, 5, 2)?;
    expect_byte(bytes, 7, b'-')?;
    let day = digits(bytes, 8, 2)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let date_millis = days * 86_400_000;
    if bytes.len() == 10 {
        return Some(date_millis);
    }
    expect_byte(bytes, 10, b'T')?;
    let (time_millis, rest) = parse_time(bytes, 11)?;
    let offset_millis = parse_offset(&bytes[rest..])?;
    Some(date_millis + time_millis - offset_millis)
}

/// Parses `HH:MM[:SS[.fff…]]` at `start`; returns the time of day in ms and where it ended.
fn parse_time(bytes: &[u8], start: usize) -> Option<(i64, usize)> {
    let hour = digits(bytes, start, 2)?;
    expect_byte(bytes, start + 2, b':')?;
    let minute = digits(bytes, start + 3, 2)?;
    if hour > 23 || minute > 59 {
        return None;
    }
    let mut millis = (hour * 60 + minute) * 60_000;
    let mut at = start + 5;
    if bytes.get(at) == Some(&b':') {
        let second = digits(bytes, at + 1, 2)?;
        if second > 59 {
            return None;
        }
        millis += second * 1000;
        at += 3;
        if bytes.get(at) == Some(&b'.') {
            let fraction_len = bytes[at + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if fraction_len == 0 {
                return None;
            }
            // JS Date keeps milliseconds only; further digits are truncated.
            let kept = fraction_len.min(3);
            let fraction = digits(bytes, at + 1, kept)?;
            millis += fraction * 10_i64.pow(3 - kept as u32);
            at += 1 + fraction_len;
        }
    }
    Some((millis, at))
}

/// Parses an optional `Z`, `±HH:MM` or `±HHMM` suffix that must end the string.
fn parse_offset(rest: &[u8]) -> Option<i64> {
    match rest {
        [] | [b'Z'] => Some(0),
        [sign @ (b'+' | b'-'), tail @ ..] => {
            let (hours, minutes) = match tail.len() {
                5 if tail[2] == b':' => (digits(tail, 0, 2)?, digits(tail, 3, 2)?),
                4 => (digits(tail, 0, 2)?, digits(tail, 2, 2)?),
                _ => return None,
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = (hours * 60 + minutes) * 60_000;
            Some(if *sign == b'-' { -magnitude } else { magnitude })
        }
        _ => None,
    }
}

fn digits(bytes: &[u8], start: usize, len: usize) -> Option<i64> {
    let slice = bytes.get(start..start + len)?;
    slice.iter().try_fold(0_i64, |acc, b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

fn expect_byte(bytes: &[u8], at: usize, expected: u8) -> Option<()> {
    (bytes.get(at) == Some(&expected)).then_some(())
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn path_prefers_literal_key_then_walks_nested() {
        let record = json!({"a.b": 1, "a": {"b": 2, "c": [10, 20]}, "x": {"y": 3}});
        assert_eq!(FieldPath::new("a.b").resolve(&record), Some(&json!(1)));
        assert_eq!(FieldPath::new("x.y").resolve(&record), Some(&json!(3)));
        assert_eq!(FieldPath::new("a.c.1").resolve(&record), Some(&json!(20)));
        assert_eq!(FieldPath::new("a.c.9").resolve(&record), None);
        assert_eq!(FieldPath::new("x.y.z").resolve(&record), None);
        assert_eq!(FieldPath::new("missing").resolve(&record), None);
        assert_eq!(
            FieldPath::new("1").resolve(&json!(["a", "b"])),
            Some(&json!("b"))
        );
    }

    #[test]
    fn strict_equality_follows_js() {
        assert!(strict_equals(Some(&json!(1)), &json!(1.0)));
        assert!(strict_equals(Some(&json!("a")), &json!("a")));
        assert!(strict_equals(Some(&json!(null)), &json!(null)));
        assert!(!strict_equals(None, &json!(null)));
        assert!(!strict_equals(Some(&json!("1")), &json!(1)));
        assert!(!strict_equals(Some(&json!([1])), &json!([1])));
        assert!(!strict_equals(Some(&json!({"a": 1})), &json!({"a": 1})));
    }

    #[test]
    fn relational_compares_same_types_only() {
        assert!(relational(Some(&json!(2)), Relation::Gt, &json!(1.5)));
        assert!(relational(Some(&json!(2)), Relation::Gte, &json!(2.0)));
        assert!(!relational(Some(&json!(2)), Relation::Lt, &json!(2)));
        assert!(relational(Some(&json!("B")), Relation::Lt, &json!("a")));
        assert!(relational(Some(&json!(true)), Relation::Gt, &json!(false)));
        assert!(!relational(Some(&json!("2")), Relation::Gt, &json!(1)));
        assert!(!relational(None, Relation::Lt, &json!(1)));
        assert!(!relational(Some(&json!(null)), Relation::Lte, &json!(0)));
    }

    #[test]
    fn numbers_compare_exactly_across_representations() {
        let big = json!(9_007_199_254_740_993_u64);
        let float = json!(9_007_199_254_740_992.0);
        assert_eq!(compare_values(Some(&big), Some(&float)), Ordering::Greater);
        assert_eq!(
            compare_values(Some(&json!(-1)), Some(&json!(-0.5))),
            Ordering::Less
        );
        assert_eq!(
            compare_values(Some(&json!(3)), Some(&json!(2.5))),
            Ordering::Greater
        );
        assert_eq!(
            compare_values(Some(&json!(u64::MAX)), Some(&json!(1e300))),
            Ordering::Less
        );
    }

    #[test]
    fn strings_compare_by_utf16_code_units() {
        // U+FF61 sorts after U+1F600 in UTF-8 but before it in UTF-16 (surrogate 0xD83D).
        assert_eq!(
            compare_code_units("\u{FF61}", "\u{1F600}"),
            Ordering::Greater
        );
        assert_eq!(compare_code_units("Z", "a"), Ordering::Less);
    }

    #[test]
    fn iso_dates_parse_to_instants() {
        assert_eq!(iso_date_millis("1970-01-01"), Some(0));
        assert_eq!(
            iso_date_millis("2000-03-01T00:00:00Z"),
            Some(951_868_800_000)
        );
        assert_eq!(
            iso_date_millis("2000-03-01T01:00:00.5+01:00"),
            Some(951_868_800_500)
        );
        assert_eq!(
            iso_date_millis("2000-03-01T01:00+0100"),
            Some(951_868_800_000)
        );
        assert_eq!(iso_date_millis("2000-13-01"), None);
        assert_eq!(iso_date_millis("2000-03-01T"), None);
        assert_eq!(iso_date_millis("hello"), None);
    }

    #[test]
    fn dates_sort_as_instants_not_text() {
        let later = json!("2020-01-01T00:30:00+00:00");
        let earlier = json!("2020-01-01T01:00:00+01:00");
        assert_eq!(
            compare_values(Some(&later), Some(&earlier)),
            Ordering::Greater
        );
    }

    #[test]
    fn mixed_types_rank_in_documented_order() {
        let ordered = [
            json!(null),
            json!(false),
            json!(true),
            json!(-5),
            json!(7),
            json!("2020-01-01"),
            json!("apple"),
            json!([1]),
            json!({"a": 1}),
        ];
        assert_eq!(compare_values(None, Some(&ordered[0])), Ordering::Equal);
        for pair in ordered.windows(2) {
            assert_eq!(
                compare_values(Some(&pair[0]), Some(&pair[1])),
                Ordering::Less
            );
        }
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e20f64..1e20).prop_map(Value::from),
            "[a-c]{0,3}".prop_map(Value::from),
            (0u32..3, 0i64..30)
                .prop_map(|(h, m)| json!(format!("2020-01-01T0{h}:{m:02}:00+01:00"))),
            proptest::collection::vec(0i64..3, 0..2).prop_map(|v| json!(v)),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        let char = prop_oneof![
            any::<char>(),
            Just('a'),
            Just('\u{D7FF}'),
            Just('\u{E000}'),
            Just('\u{FFFF}'),
            Just('\u{10000}'),
            Just('\u{1F600}'),
        ];
        proptest::collection::vec(char, 0..5).prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn code_unit_order_is_utf16_order(a in text(), b in text()) {
            prop_assert_eq!(compare_code_units(&a, &b), a.encode_utf16().cmp(b.encode_utf16()));
            let shared = format!("k{a}");
            prop_assert_eq!(
                compare_code_units(&shared, &format!("k{b}")),
                a.encode_utf16().cmp(b.encode_utf16())
            );
        }
    }

    proptest! {
        #[test]
        fn compare_values_is_a_total_order(a in arb_value(), b in arb_value(), c in arb_value()) {
            let ab = compare_values(Some(&a), Some(&b));
            prop_assert_eq!(ab, compare_values(Some(&b), Some(&a)).reverse());
            let bc = compare_values(Some(&b), Some(&c));
            if ab != Ordering::Greater && bc != Ordering::Greater {
                prop_assert_ne!(compare_values(Some(&a), Some(&c)), Ordering::Greater);
            }
        }
    }
}
