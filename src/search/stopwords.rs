//! The fixed English stop-word list the tokenizer drops before stemming.
//!
//! Membership mirrors the list TopGun 2026-01 uses (`packages/core/src/fts/Tokenizer.ts`, which
//! advertises 174 words but holds 172 distinct ones), so both implementations index and query
//! the same terms. Kept sorted so lookup is a binary search with no start-up cost.

/// The stop words, lowercase, sorted in byte order, without duplicates.
const STOP_WORDS: [&str; 172] = [
    "a",
    "about",
    "above",
    "across",
    "after",
    "again",
    "against",
    "all",
    "along",
    "also",
    "although",
    "am",
    "among",
    "an",
    "and",
    "any",
    "are",
    "around",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "behind",
    "being",
    "below",
    "beneath",
    "beside",
    "between",
    "beyond",
    "both",
    "but",
    "by",
    "can",
    "could",
    "d",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "either",
    "ever",
    "every",
    "except",
    "few",
    "for",
    "from",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "inside",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "ll",
    "m",
    "many",
    "may",
    "me",
    "might",
    "more",
    "most",
    "much",
    "must",
    "my",
    "myself",
    "near",
    "neither",
    "no",
    "none",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "onto",
    "or",
    "other",
    "ought",
    "our",
    "ours",
    "ourselves",
    "out",
    "outside",
    "over",
    "own",
    "past",
    "re",
    "s",
    "same",
    "several",
    "shall",
    "she",
    "should",
    "since",
    "so",
    "some",
    "such",
    "t",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "throughout",
    "to",
    "too",
    "toward",
    "towards",
    "under",
    "underneath",
    "unless",
    "until",
    "up",
    "upon",
    "ve",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "whether",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "within",
    "without",
    "would",
    "yet",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// Whether `word` (already lowercased) is an English stop word.
pub fn is_stop_word(word: &str) -> bool {
    STOP_WORDS.binary_search(&word).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_strictly_sorted_so_binary_search_is_valid() {
        assert!(STOP_WORDS.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn list_is_lowercase() {
        assert!(
            STOP_WORDS
                .iter()
                .all(|w| w.chars().all(|c| c.is_ascii_lowercase()))
        );
    }

    #[test]
    fn recognises_members_at_both_ends_and_in_the_middle() {
        for word in ["a", "yourselves", "the", "when", "because", "ll"] {
            assert!(is_stop_word(word), "{word} should be a stop word");
        }
    }

    #[test]
    fn rejects_content_words_and_uppercase() {
        for word in ["search", "run", "topgun", "The", "", "whenever"] {
            assert!(!is_stop_word(word), "{word} should not be a stop word");
        }
    }
}
