//! Compiles the two pattern operators, `regex` and `like`, into linear-time [`Regex`]es.
//!
//! `regex` operands are JavaScript `RegExp` sources (no flags: unanchored, case-sensitive,
//! non-Unicode mode). The `regex` crate never backtracks, so a hostile pattern cannot stall
//! the server; its compiled size is bounded by [`QueryLimits`]. JS syntax is translated where
//! the meaning is clear:
//! - `.` excludes `\n \r U+2028 U+2029`; `\d \w \D \W` are ASCII-only; `\b \B` are ASCII word
//!   boundaries; `[^]` matches anything and `[]` nothing; `\cX`, `\0`, `\xhh`, `\uhhhh`
//!   (surrogate pairs combined) become code points; `\` before any other letter is that letter
//!   and before punctuation that punctuation; `{` and `}` that do not form a quantifier are
//!   literal; `[`, `&`, `~` inside a class are literal.
//!
//! Rejected with a clear error instead: lookahead/lookbehind, backreferences (`\1`, `\k<…>`),
//! octal escapes, `\p{…}` (needs the `u` flag), lone surrogate escapes and any `(?` group
//! other than `(?:` and `(?<name>`.
//!
//! `like` follows TopGun: a case-insensitive full match in which `%` is any run of characters
//! and `_` any single character (both excluding line terminators, as JS `.` does); every other
//! character is literal and there is no escape character.

use regex::{Regex, RegexBuilder};

use super::error::{QueryError, QueryLimits};

/// JS `.` without the `s` flag.
const JS_DOT: &str = r"[^\n\r\x{2028}\x{2029}]";
const ASCII_DIGIT: &str = "[0-9]";
const NOT_ASCII_DIGIT: &str = "[^0-9]";
const ASCII_WORD: &str = "[0-9A-Za-z_]";
const NOT_ASCII_WORD: &str = "[^0-9A-Za-z_]";

/// Compiles a JS `RegExp` source for the `regex` operator on `attribute`.
pub fn compile_regex(
    source: &str,
    attribute: &str,
    limits: &QueryLimits,
) -> Result<Regex, QueryError> {
    check_length(source, attribute, limits)?;
    let translated = translate(source).map_err(|reason| QueryError::UnsupportedRegex {
        attribute: attribute.to_owned(),
        reason,
    })?;
    build(&translated, false, attribute, limits)
}

/// Compiles a `like` pattern on `attribute`.
pub fn compile_like(
    pattern: &str,
    attribute: &str,
    limits: &QueryLimits,
) -> Result<Regex, QueryError> {
    check_length(pattern, attribute, limits)?;
    let mut translated = String::from(r"\A(?:");
    for c in pattern.chars() {
        match c {
            '%' => {
                translated.push_str(JS_DOT);
                translated.push('*');
            }
            '_' => translated.push_str(JS_DOT),
            other => translated.push_str(&regex::escape(other.encode_utf8(&mut [0; 4]))),
        }
    }
    translated.push_str(r")\z");
    build(&translated, true, attribute, limits)
}

fn check_length(pattern: &str, attribute: &str, limits: &QueryLimits) -> Result<(), QueryError> {
    let len = pattern.chars().count();
    if len > limits.max_pattern_len {
        return Err(QueryError::PatternTooLong {
            attribute: attribute.to_owned(),
            len,
            max: limits.max_pattern_len,
        });
    }
    Ok(())
}

fn build(
    pattern: &str,
    case_insensitive: bool,
    attribute: &str,
    limits: &QueryLimits,
) -> Result<Regex, QueryError> {
    RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(limits.regex_size_limit)
        .dfa_size_limit(limits.regex_dfa_size_limit)
        .build()
        .map_err(|err| QueryError::InvalidRegex {
            attribute: attribute.to_owned(),
            reason: err.to_string(),
        })
}

/// Rewrites a JS regex source into `regex` crate syntax, or explains why it cannot.
fn translate(source: &str) -> Result<String, String> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len() + 16);
    let mut in_class = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            i = translate_escape(&chars, i, in_class, &mut out)?;
            continue;
        }
        if in_class {
            match c {
                ']' => in_class = false,
                // Literal in a JS class, but nesting / set operators in the regex crate.
                '[' | '&' | '~' => out.push('\\'),
                _ => {}
            }
            out.push(c);
            i += 1;
            continue;
        }
        i = match c {
            '[' => open_class(&chars, i, &mut out, &mut in_class),
            '(' => open_group(&chars, i, &mut out)?,
            '.' => {
                out.push_str(JS_DOT);
                i + 1
            }
            '{' => match quantifier_len(&chars[i..]) {
                Some(len) => {
                    out.extend(&chars[i..i + len]);
                    i + len
                }
                None => {
                    out.push_str(r"\{");
                    i + 1
                }
            },
            '}' | ']' => {
                out.push('\\');
                out.push(c);
                i + 1
            }
            _ => {
                out.push(c);
                i + 1
            }
        };
    }
    Ok(out)
}

/// Handles `[` outside a class; JS gives `[]` and `[^]` meanings the regex crate lacks.
fn open_class(chars: &[char], i: usize, out: &mut String, in_class: &mut bool) -> usize {
    let negated = chars.get(i + 1) == Some(&'^');
    let body = i + 1 + usize::from(negated);
    if chars.get(body) == Some(&']') {
        out.push_str(if negated { r"[\s\S]" } else { r"[^\s\S]" });
        return body + 1;
    }
    out.push_str(if negated { "[^" } else { "[" });
    *in_class = true;
    body
}

fn open_group(chars: &[char], i: usize, out: &mut String) -> Result<usize, String> {
    if chars.get(i + 1) != Some(&'?') {
        out.push('(');
        return Ok(i + 1);
    }
    match (chars.get(i + 2), chars.get(i + 3)) {
        (Some(':'), _) => {
            out.push_str("(?:");
            Ok(i + 3)
        }
        (Some('=' | '!'), _) => Err("lookahead assertions `(?=` / `(?!` are not supported".into()),
        (Some('<'), Some('=' | '!')) => {
            Err("lookbehind assertions `(?<=` / `(?<!` are not supported".into())
        }
        (Some('<'), _) => {
            out.push_str("(?<");
            Ok(i + 3)
        }
        _ => Err("only `(?:` and `(?<name>` groups are JavaScript syntax".into()),
    }
}

/// Length of a `{n}`, `{n,}` or `{n,m}` quantifier at the start of `chars`, if it is one.
fn quantifier_len(chars: &[char]) -> Option<usize> {
    let mut at = 1;
    let leading = count_digits(&chars[at..]);
    if leading == 0 {
        return None;
    }
    at += leading;
    if chars.get(at) == Some(&',') {
        at += 1 + count_digits(&chars[at + 1..]);
    }
    (chars.get(at) == Some(&'}')).then_some(at + 1)
}

fn count_digits(chars: &[char]) -> usize {
    chars.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// Translates the escape starting at `chars[i] == '\\'`; returns the index after it.
fn translate_escape(
    chars: &[char],
    i: usize,
    in_class: bool,
    out: &mut String,
) -> Result<usize, String> {
    let Some(&next) = chars.get(i + 1) else {
        return Err("pattern ends with a lone backslash".into());
    };
    match next {
        'd' => out.push_str(ASCII_DIGIT),
        'D' => out.push_str(NOT_ASCII_DIGIT),
        'w' => out.push_str(ASCII_WORD),
        'W' => out.push_str(NOT_ASCII_WORD),
        's' | 'S' | 'f' | 'n' | 'r' | 't' | 'v' => {
            out.push('\\');
            out.push(next);
        }
        'b' if in_class => out.push_str(r"\x08"),
        'b' => out.push_str(r"(?-u:\b)"),
        'B' if !in_class => out.push_str(r"(?-u:\B)"),
        'c' => {
            let letter = chars
                .get(i + 2)
                .filter(|c| c.is_ascii_alphabetic())
                .ok_or("`\\c` must be followed by a letter")?;
            push_code_point(out, u32::from(*letter) % 32);
            return Ok(i + 3);
        }
        '0' if !chars.get(i + 2).is_some_and(char::is_ascii_digit) => out.push_str(r"\x00"),
        '0'..='9' => return Err("backreferences and octal escapes are not supported".into()),
        'k' => return Err("named backreferences `\\k<…>` are not supported".into()),
        'p' | 'P' => {
            return Err(
                "`\\p{…}` property escapes need the JS `u` flag, which query regexes cannot set"
                    .into(),
            );
        }
        'x' => {
            if let Some(code) = hex_at(chars, i + 2, 2) {
                push_code_point(out, code);
                return Ok(i + 4);
            }
            out.push('x');
        }
        'u' => return translate_unicode_escape(chars, i, out),
        letter if letter.is_ascii_alphanumeric() => out.push(letter),
        other => out.push_str(&regex::escape(other.encode_utf8(&mut [0; 4]))),
    }
    Ok(i + 2)
}

/// `\uhhhh`, combining a surrogate pair written as two escapes into one code point.
fn translate_unicode_escape(chars: &[char], i: usize, out: &mut String) -> Result<usize, String> {
    let Some(unit) = hex_at(chars, i + 2, 4) else {
        out.push('u');
        return Ok(i + 2);
    };
    if !(0xD800..=0xDFFF).contains(&unit) {
        push_code_point(out, unit);
        return Ok(i + 6);
    }
    let low = (chars.get(i + 6) == Some(&'\\') && chars.get(i + 7) == Some(&'u'))
        .then(|| hex_at(chars, i + 8, 4))
        .flatten()
        .filter(|low| (0xDC00..=0xDFFF).contains(low));
    match low {
        Some(low) if unit < 0xDC00 => {
            push_code_point(out, 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00));
            Ok(i + 12)
        }
        _ => Err("lone surrogate escapes are not supported".into()),
    }
}

fn hex_at(chars: &[char], start: usize, len: usize) -> Option<u32> {
    let digits = chars.get(start..start + len)?;
    digits
        .iter()
        .try_fold(0_u32, |acc, c| c.to_digit(16).map(|d| acc * 16 + d))
}

fn push_code_point(out: &mut String, code: u32) {
    out.push_str(&format!(r"\x{{{code:X}}}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regex(source: &str) -> Regex {
        compile_regex(source, "f", &QueryLimits::default()).unwrap()
    }

    fn regex_err(source: &str) -> QueryError {
        compile_regex(source, "f", &QueryLimits::default()).unwrap_err()
    }

    fn like(pattern: &str) -> Regex {
        compile_like(pattern, "f", &QueryLimits::default()).unwrap()
    }

    #[test]
    fn regex_is_unanchored_and_case_sensitive() {
        let re = regex("b+c");
        assert!(re.is_match("abbcd"));
        assert!(!re.is_match("ABBC"));
    }

    #[test]
    fn class_shorthands_are_ascii_only() {
        assert!(regex(r"^\d+$").is_match("123"));
        assert!(!regex(r"^\d$").is_match("٣"));
        assert!(!regex(r"^\w$").is_match("é"));
        assert!(regex(r"^\W$").is_match("é"));
        assert!(regex(r"^[\dx]+$").is_match("1x2"));
        assert!(regex(r"^[^\D]$").is_match("7"));
        assert!(regex(r"\bcat\b").is_match("a cat!"));
        assert!(!regex(r"\Bcat").is_match("a cat"));
    }

    #[test]
    fn dot_excludes_js_line_terminators() {
        assert!(regex("^a.c$").is_match("abc"));
        assert!(!regex("^a.c$").is_match("a\rc"));
        assert!(!regex("^a.c$").is_match("a\u{2028}c"));
    }

    #[test]
    fn js_only_classes_and_literals_translate() {
        assert!(regex("^[^]$").is_match("\n"));
        assert!(!regex("a[]").is_match("a"));
        assert!(regex("^[[&~]+$").is_match("[&~"));
        assert!(regex("^a{x}$").is_match("a{x}"));
        assert!(regex("^a{2}$").is_match("aa"));
        assert!(regex("^a{1,}b{0,1}$").is_match("aaab"));
        assert!(regex(r"^\a\/\<$").is_match("a/<"));
        assert!(regex(r"^\x41\u00e9\cJ\0$").is_match("Aé\n\0"));
        assert!(regex(r"^\uD83D\uDE00$").is_match("😀"));
        assert!(regex(r"^[\b]$").is_match("\u{8}"));
        assert!(regex("^(?<word>ab)+$").is_match("abab"));
        assert!(regex(r"^\xZ$").is_match("xZ"));
    }

    #[test]
    fn unsupported_js_syntax_is_rejected_with_reason() {
        for source in [
            "a(?=b)",
            "a(?!b)",
            "(?<=a)b",
            "(?<!a)b",
            r"(a)\1",
            r"(?<n>a)\k<n>",
            r"\p{L}",
            "(?i)a",
            r"\uD83D",
            r"\c1",
            "a\\",
        ] {
            assert!(
                matches!(regex_err(source), QueryError::UnsupportedRegex { .. }),
                "{source} should be rejected"
            );
        }
    }

    #[test]
    fn syntax_errors_and_oversized_patterns_are_rejected() {
        assert!(matches!(regex_err("a("), QueryError::InvalidRegex { .. }));
        let long = "a".repeat(QueryLimits::default().max_pattern_len + 1);
        assert!(matches!(
            regex_err(&long),
            QueryError::PatternTooLong { .. }
        ));
        let tiny = QueryLimits {
            regex_size_limit: 1_000,
            ..QueryLimits::default()
        };
        let err = compile_regex(r"\w{100}\w{100}", "f", &tiny).unwrap_err();
        assert!(matches!(err, QueryError::InvalidRegex { .. }), "{err}");
    }

    #[test]
    fn like_is_a_case_insensitive_full_match() {
        assert!(like("ab%").is_match("ABCDEF"));
        assert!(!like("ab%").is_match("xabc"));
        assert!(like("a_c").is_match("aXc"));
        assert!(!like("a_c").is_match("aXXc"));
        assert!(!like("a%").is_match("a\nb"));
        assert!(like("%").is_match(""));
    }

    #[test]
    fn like_treats_everything_else_literally() {
        assert!(like("a.b*c").is_match("a.b*c"));
        assert!(!like("a.b").is_match("axb"));
        assert!(like(r"(x)+[y]\%").is_match(r"(x)+[y]\anything"));
        assert!(like("$^|?{}").is_match("$^|?{}"));
    }

    #[test]
    fn like_pattern_length_is_limited() {
        let long = "%".repeat(QueryLimits::default().max_pattern_len + 1);
        let err = compile_like(&long, "f", &QueryLimits::default()).unwrap_err();
        assert!(matches!(err, QueryError::PatternTooLong { .. }));
    }
}
