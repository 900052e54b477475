//! The string hash every TopGun client uses (FNV-1a over UTF-16 code units), the MurmurHash3
//! finalizer used by the 2026-08 Merkle combine, and key → partition routing
//! (PROTOCOL.md §4.5, §4.6).
//!
//! These must agree bit-for-bit with the browser clients, so they hash UTF-16 code units
//! (what JavaScript's `charCodeAt` yields), not UTF-8 bytes.

/// Number of partitions a key space is split into (PROTOCOL.md §4.6).
pub const PARTITION_COUNT: u32 = 271;

const FNV_OFFSET_BASIS: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// 32-bit FNV-1a over the UTF-16 code units of `s` (surrogate pairs hash as two units),
/// identical to the clients' `hashString`.
pub fn fnv1a_utf16(s: &str) -> u32 {
    let mut hasher = Fnv1aUtf16::default();
    hasher.write(s);
    hasher.finish()
}

/// [`fnv1a_utf16`] fed piece by piece, so text made of parts (the write path hashes a key
/// and a timestamp per op) is hashed without building the string first.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1aUtf16(u32);

impl Default for Fnv1aUtf16 {
    fn default() -> Self {
        Self(FNV_OFFSET_BASIS)
    }
}

impl Fnv1aUtf16 {
    /// Hashes the UTF-16 code units of `s` after everything written so far.
    pub fn write(&mut self, s: &str) {
        // Most keys and every timestamp are ASCII, whose bytes are its UTF-16 code units;
        // walking bytes is several times cheaper than decoding UTF-8.
        self.0 = if s.is_ascii() {
            s.bytes().fold(self.0, |h, byte| step(h, u16::from(byte)))
        } else {
            s.encode_utf16().fold(self.0, step)
        };
    }

    /// Hashes the decimal digits of `n`, as `write(&n.to_string())` would, without the
    /// formatting machinery (the write path hashes two numbers per op).
    pub fn write_decimal(&mut self, n: u64) {
        let mut buf = [0u8; 20];
        self.0 = decimal_digits(n, &mut buf)
            .iter()
            .fold(self.0, |h, digit| step(h, u16::from(*digit)));
    }

    /// The hash of everything written.
    pub fn finish(self) -> u32 {
        self.0
    }
}

/// The decimal digits of `n` (what `n.to_string()` holds), written at the end of `buf` (u64::MAX
/// has 20 digits): for the hot paths that hash or encode numbers as text, where `core::fmt`
/// would cost more than the rest of the work.
pub(crate) fn decimal_digits(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    while start > 0 {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[start..]
}

/// One FNV-1a round over a UTF-16 code unit.
fn step(hash: u32, unit: u16) -> u32 {
    (hash ^ u32::from(unit)).wrapping_mul(FNV_PRIME)
}

/// The MurmurHash3 32-bit finalizer. It is a bijection with `fmix32(0) == 0`, which is why
/// emptied Merkle nodes stay neutral under the 2026-08 combine.
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The partition that owns `key`. The map name deliberately does not take part, so all maps
/// route a given key to the same partition, as the clients do.
pub fn partition_id(key: &str) -> u32 {
    fnv1a_utf16(key) % PARTITION_COUNT
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv1a_matches_protocol_vectors() {
        assert_eq!(fnv1a_utf16("hello"), 1_335_831_723);
        assert_eq!(fnv1a_utf16("hello"), 0x4f9f_2cab);
        assert_eq!(fnv1a_utf16("key1"), 927_623_783);
        assert_eq!(fnv1a_utf16(""), 2_166_136_261);
        assert_eq!(fnv1a_utf16("key1:100:0:test"), 3_988_528_110);
        assert_eq!(fnv1a_utf16("ключ"), 866_290_361);
        assert_eq!(fnv1a_utf16("user-1"), 0xf553_7974);
        assert_eq!(fnv1a_utf16("user-1:1700000000000:0:node-1"), 4_066_377_064);
    }

    #[test]
    fn decimal_digits_are_the_number_as_text() {
        for n in [0, 7, 10, 99, 1_700_000_000_000, u64::MAX] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal_digits(n, &mut buf), n.to_string().as_bytes());
        }
    }

    #[test]
    fn astral_characters_hash_as_two_surrogate_units() {
        // U+1F600 is the surrogate pair D83D DE00 in UTF-16.
        let by_units = [0xd83d_u32, 0xde00]
            .iter()
            .fold(FNV_OFFSET_BASIS, |h, u| (h ^ u).wrapping_mul(FNV_PRIME));
        assert_eq!(fnv1a_utf16("\u{1F600}"), by_units);
    }

    #[test]
    fn partition_matches_protocol_vectors() {
        assert_eq!(partition_id("user-1"), 120);
        assert_eq!(partition_id("hello"), 95);
        assert_eq!(partition_id("key1"), 268);
    }

    #[test]
    fn fmix32_matches_protocol_leaf_vector() {
        assert_eq!(fmix32(0), 0);
        assert_eq!(fmix32(4_066_377_064), 4_119_326_984);
        let fmix4 = (0..4).fold(4_066_377_064, |h, _| fmix32(h));
        assert_eq!(fmix4, 752_903_945);
    }

    /// FNV-1a over `encode_utf16`, written out: what the ASCII fast path must agree with.
    fn reference_fnv1a_utf16(s: &str) -> u32 {
        s.encode_utf16().fold(FNV_OFFSET_BASIS, |h, unit| {
            (h ^ u32::from(unit)).wrapping_mul(FNV_PRIME)
        })
    }

    proptest! {
        #[test]
        fn hash_equals_the_reference_over_utf16_units(text in ".*", ascii in "[ -~]*") {
            prop_assert_eq!(fnv1a_utf16(&text), reference_fnv1a_utf16(&text));
            prop_assert_eq!(fnv1a_utf16(&ascii), reference_fnv1a_utf16(&ascii));
        }

        #[test]
        fn decimal_hashes_as_its_digits(prefix in ".*", n: u64) {
            let mut hasher = Fnv1aUtf16::default();
            hasher.write(&prefix);
            hasher.write_decimal(n);
            prop_assert_eq!(hasher.finish(), reference_fnv1a_utf16(&format!("{prefix}{n}")));
        }

        #[test]
        fn streamed_hash_equals_whole_string_hash(parts in prop::collection::vec(".*", 0..5)) {
            let mut hasher = Fnv1aUtf16::default();
            for part in &parts {
                hasher.write(part);
            }
            prop_assert_eq!(hasher.finish(), fnv1a_utf16(&parts.concat()));
        }

        #[test]
        fn partition_is_always_in_range(key in ".*") {
            prop_assert!(partition_id(&key) < PARTITION_COUNT);
        }

        #[test]
        fn fmix32_is_injective_on_pairs(a: u32, b: u32) {
            prop_assert_eq!(fmix32(a) == fmix32(b), a == b);
        }
    }
}
