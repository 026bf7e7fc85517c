//! Byte-level mutations (AFL's havoc, in small): flips, interesting values, inserts, deletes,
//! duplications, splices with another corpus entry, the target's dictionary words, and numbers
//! swapped for extreme ones (where parsers size their allocations).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'0', b'"', b'\\'];
const NUMBERS: [&[u8]; 8] = [
    b"0",
    b"-1",
    b"4294967295",
    b"18446744073709551615",
    b"1e308",
    b"NaN",
    b"99999999999999999999999",
    b"65536",
];

/// One to eight mutations of `input` (at most `max_len` bytes).
pub fn mutate(
    rng: &mut ChaCha8Rng,
    input: &[u8],
    other: &[u8],
    dictionary: &[&[u8]],
    max_len: usize,
) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=8) {
        mutate_once(rng, &mut out, other, dictionary);
    }
    out.truncate(max_len);
    out
}

fn mutate_once(rng: &mut ChaCha8Rng, out: &mut Vec<u8>, other: &[u8], dictionary: &[&[u8]]) {
    let len = out.len();
    let pos = |rng: &mut ChaCha8Rng, n: usize| if n == 0 { 0 } else { rng.random_range(0..n) };
    match rng.random_range(0..9) {
        0 if len > 0 => {
            let i = pos(rng, len);
            out[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = pos(rng, len);
            out[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
        }
        2 => {
            let i = pos(rng, len + 1);
            let n = rng.random_range(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            out.splice(i..i, bytes);
        }
        3 if len > 0 => {
            let i = pos(rng, len);
            let n = rng.random_range(1..=(len - i).min(64));
            out.drain(i..i + n);
        }
        4 if len > 0 => {
            // Duplicate a range, sometimes many times (nesting, repetition).
            let i = pos(rng, len);
            let n = rng.random_range(1..=(len - i).min(64));
            let piece = out[i..i + n].to_vec();
            let times = if rng.random_bool(0.2) {
                rng.random_range(2..200)
            } else {
                1
            };
            let at = pos(rng, len + 1);
            out.splice(at..at, piece.repeat(times));
        }
        5 if !other.is_empty() => {
            let i = pos(rng, len + 1);
            let j = pos(rng, other.len());
            let n = rng.random_range(1..=(other.len() - j).min(256));
            out.splice(i..i, other[j..j + n].iter().copied());
        }
        6 if !dictionary.is_empty() => {
            let word = dictionary[rng.random_range(0..dictionary.len())];
            let i = pos(rng, len + 1);
            out.splice(i..i, word.iter().copied());
        }
        7 => {
            // Replace a run of digits by an extreme number.
            if let Some(start) = (0..len)
                .map(|k| (k + pos(rng, len)) % len.max(1))
                .find(|&k| out[k].is_ascii_digit())
            {
                let end = (start..len).find(|&k| !out[k].is_ascii_digit()).unwrap_or(len);
                let n = NUMBERS[rng.random_range(0..NUMBERS.len())];
                out.splice(start..end, n.iter().copied());
            }
        }
        _ if len >= 4 => {
            // Overwrite a little-endian word with an extreme value (binary headers).
            let i = pos(rng, len - 3);
            let v: u32 = [0, 1, u32::MAX, u32::MAX / 2, 0x8000_0000, 255][rng.random_range(0..6)];
            out[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        _ => out.push(rng.random()),
    }
}
