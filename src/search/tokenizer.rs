//! Text → search terms: lowercase, Unicode word split, length bounds, stop words, Porter stem.
//!
//! The same function tokenizes documents and queries, so a query term matches a document term
//! exactly when both come from words with the same stem.

use std::sync::LazyLock;

use rust_stemmers::{Algorithm, Stemmer};

use super::stopwords::is_stop_word;

/// Shortest token kept, in characters (Unicode scalar values, not bytes).
pub const MIN_TOKEN_CHARS: usize = 2;
/// Longest token kept, in characters; longer runs are usually hashes or identifiers.
pub const MAX_TOKEN_CHARS: usize = 40;

/// The stemmer holds no per-word state, so one shared instance serves every caller.
static ENGLISH_STEMMER: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::English));

/// Splits `text` into normalized terms, in order of appearance, duplicates kept
/// (term frequency matters to BM25).
///
/// Words are maximal runs of Unicode alphanumeric characters. A word is dropped when it is
/// shorter than [`MIN_TOKEN_CHARS`] or a stop word (both judged before stemming, as TopGun
/// does), and its stem is dropped when it falls outside
/// [`MIN_TOKEN_CHARS`]..=[`MAX_TOKEN_CHARS`].
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter_map(normalize_word)
        .collect()
}

/// Turns one lowercase word into its term, or `None` when it carries no search value.
fn normalize_word(word: &str) -> Option<String> {
    if word.chars().count() < MIN_TOKEN_CHARS || is_stop_word(word) {
        return None;
    }
    let stem = ENGLISH_STEMMER.stem(word);
    let length = stem.chars().count();
    (MIN_TOKEN_CHARS..=MAX_TOKEN_CHARS)
        .contains(&length)
        .then(|| stem.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(text: &str) -> Vec<String> {
        tokenize(text)
    }

    #[test]
    fn drops_stop_words_and_stems_the_rest() {
        assert_eq!(
            terms("The quick brown foxes are running over the lazy dogs"),
            ["quick", "brown", "fox", "run", "lazi", "dog"]
        );
    }

    #[test]
    fn running_stems_to_run() {
        assert_eq!(terms("running"), ["run"]);
        assert_eq!(terms("runs"), ["run"]);
    }

    #[test]
    fn lowercases_before_stop_word_check() {
        assert_eq!(terms("THE And BECAUSE"), Vec::<String>::new());
        assert_eq!(terms("Search SEARCHING"), ["search", "search"]);
    }

    #[test]
    fn splits_on_any_non_alphanumeric_character() {
        assert_eq!(
            terms("hello-world,foo_bar/baz!!qux"),
            ["hello", "world", "foo", "bar", "baz", "qux"]
        );
    }

    #[test]
    fn keeps_duplicates_in_order() {
        assert_eq!(terms("cat dog cat"), ["cat", "dog", "cat"]);
    }

    #[test]
    fn drops_single_characters_and_keeps_two() {
        assert_eq!(terms("x y zz 7 42"), ["zz", "42"]);
    }

    #[test]
    fn enforces_the_forty_character_upper_bound() {
        let forty = "q".repeat(40);
        let forty_one = "q".repeat(41);
        assert_eq!(terms(&format!("{forty} {forty_one}")), [forty]);
    }

    #[test]
    fn counts_length_in_characters_not_bytes() {
        // 40 two-byte characters: 80 bytes, but within the 40-character bound.
        let forty_accented = "é".repeat(40);
        assert_eq!(terms(&forty_accented), [forty_accented]);
        assert_eq!(terms(&"é".repeat(41)), Vec::<String>::new());
        // Two characters, six bytes.
        assert_eq!(terms("東京"), ["東京"]);
    }

    #[test]
    fn treats_unicode_letters_and_digits_as_word_characters() {
        assert_eq!(terms("Über—café 東京 ٣٤"), ["über", "café", "東京", "٣٤"]);
    }

    #[test]
    fn unicode_punctuation_separates_words() {
        assert_eq!(terms("«bonjour»…monde"), ["bonjour", "mond"]);
    }

    #[test]
    fn empty_and_punctuation_only_input_yield_nothing() {
        assert_eq!(terms(""), Vec::<String>::new());
        assert_eq!(terms("  ,.;:!? -- "), Vec::<String>::new());
    }
}
