//! Streaming text never breaks a character and concatenates to the full decode.

use herd_text::{IncrementalDecoder, SpecialTokens};
use rand::{Rng, SeedableRng};

use crate::{hf, meta};

const ALPHABET: &[&str] = &[
    "a",
    "Z",
    " ",
    "\n",
    "é",
    "ß",
    "ж",
    "ع",
    "हि",
    "ไทย",
    "Tiếng",
    "日本",
    "한",
    "😀",
    "👍🏽",
    "👨‍👩‍👧",
    "🇫🇷",
    "\u{301}",
    "<|eot|>",
    "\t",
    "∑",
    "€",
];

#[test]
fn stream_concatenates_to_the_full_decode_and_is_always_valid() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for tokenizer in [meta(), hf()] {
        for _ in 0..200 {
            let len = rng.random_range(0..40);
            let text: String = (0..len)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                .collect();
            let ids = tokenizer.encode(&text, SpecialTokens::AsText).unwrap();
            let mut decoder = IncrementalDecoder::new();
            let mut streamed = String::new();
            for &id in &ids {
                // Each piece is a `String`: valid UTF-8 by construction, never a broken char.
                streamed.push_str(&decoder.push(tokenizer, id).unwrap());
            }
            streamed.push_str(&decoder.finish());
            assert_eq!(streamed, text);
            assert_eq!(streamed, tokenizer.decode(&ids).unwrap());
        }
    }
}

#[test]
fn partial_characters_are_held_then_released() {
    let mut d = IncrementalDecoder::new();
    let smile = "😀".as_bytes(); // 4 bytes
    assert_eq!(d.push_bytes(&smile[..1]), "");
    assert_eq!(d.push_bytes(&smile[1..3]), "");
    assert_eq!(d.push_bytes(&smile[3..]), "😀");
    // Invalid bytes become U+FFFD, as a lossy full decode does.
    assert_eq!(d.push_bytes(b"a\xffb"), "a\u{fffd}b");
    assert_eq!(d.push_bytes(&smile[..2]), "");
    assert_eq!(d.finish(), "\u{fffd}");
}
