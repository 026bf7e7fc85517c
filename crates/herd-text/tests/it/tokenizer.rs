//! Encoding equals the reference ids exactly, for both formats, on every committed case
//! (12 languages, code, numbers, whitespace runs, emoji, very long inputs, special-token text).

use herd_text::SpecialTokens::{AsText, Parse};
use serde::Deserialize;

use crate::{fixtures, hf, meta};

#[derive(Deserialize)]
struct Case {
    id: u64,
    category: String,
    language: Option<String>,
    text: Option<String>,
    text_recipe: Option<Vec<Piece>>,
    meta_ids: Vec<u32>,
    meta_ids_allow_special: Vec<u32>,
    hf_ids: Vec<u32>,
    hf_decoded: Option<String>,
}

#[derive(Deserialize)]
struct Piece {
    repeat: String,
    times: usize,
}

impl Case {
    fn text(&self) -> String {
        match (&self.text, &self.text_recipe) {
            (Some(t), _) => t.clone(),
            (None, Some(r)) => r.iter().map(|p| p.repeat.repeat(p.times)).collect(),
            (None, None) => panic!("case {} has no text", self.id),
        }
    }
}

fn cases() -> Vec<Case> {
    std::fs::read_to_string(fixtures().join("tokenizer/cases.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn case_file_covers_all_twelve_languages() {
    let cases = cases();
    assert!(cases.len() >= 300, "{} cases", cases.len());
    let mut languages: Vec<String> = cases.iter().filter_map(|c| c.language.clone()).collect();
    languages.sort();
    languages.dedup();
    assert_eq!(languages.len(), 12, "{languages:?}");
}

#[test]
fn tokenizer_model_encodes_exactly_like_meta() {
    let meta = meta();
    for case in cases() {
        let text = case.text();
        assert_eq!(
            meta.encode(&text, AsText).unwrap(),
            case.meta_ids,
            "case {} ({})",
            case.id,
            case.category
        );
        assert_eq!(
            meta.encode(&text, Parse).unwrap(),
            case.meta_ids_allow_special,
            "case {} allow-special",
            case.id
        );
        assert_eq!(
            meta.decode(&case.meta_ids).unwrap(),
            text,
            "case {} round trip",
            case.id
        );
    }
}

#[test]
fn tokenizer_json_encodes_exactly_like_transformers() {
    let hf = hf();
    for case in cases() {
        let text = case.text();
        assert_eq!(
            hf.encode(&text, Parse).unwrap(),
            case.hf_ids,
            "case {} ({})",
            case.id,
            case.category
        );
        if let Some(decoded) = &case.hf_decoded {
            assert_eq!(
                &hf.decode(&case.hf_ids).unwrap(),
                decoded,
                "case {} decode",
                case.id
            );
        }
    }
}

#[test]
fn both_formats_agree_where_the_references_agree() {
    // Special-token text as text (herd's safe default) gives Meta's default ids with either
    // file, except where Meta cuts very long runs (LLAMA4.md §9.9: a known difference).
    let (meta, hf) = (meta(), hf());
    let mut compared = 0;
    for case in cases().iter().filter(|c| c.category != "long") {
        let text = case.text();
        assert_eq!(
            hf.encode(&text, AsText).unwrap(),
            case.meta_ids,
            "case {} ({})",
            case.id,
            case.category
        );
        assert_eq!(meta.encode(&text, AsText).unwrap(), case.meta_ids);
        compared += 1;
    }
    assert!(compared > 300);
}

#[test]
fn known_reference_differences_are_pinned() {
    let (meta, hf) = (meta(), hf());
    // Meta splits runs of > 25,000 non-whitespace characters before BPE; HF does not.
    let run = "a".repeat(30_000);
    assert_ne!(
        meta.encode(&run, AsText).unwrap(),
        hf.encode(&run, AsText).unwrap()
    );
    // The HF conversion lacks the reasoning/reserved specials (ids ≥ 201134) and adds its own
    // pad token at 201134.
    assert_eq!(meta.special_id("<|reserved_special_token_5|>"), Some(201149));
    assert_eq!(hf.special_id("<|reserved_special_token_5|>"), None);
    assert_eq!(
        meta.special_id("<|reasoning_reserved_special_token_0|>"),
        Some(201134)
    );
    assert_eq!(hf.special_id("<|finetune_right_pad_id|>"), Some(201134));
    assert_eq!(meta.vocab_size(), 202_048);
    // Both know the chat specials at Meta's ids.
    for (token, id) in [
        ("<|begin_of_text|>", 200000),
        ("<|eot|>", 200008),
        ("<|patch|>", 200092),
    ] {
        assert_eq!(meta.special_id(token), Some(id));
        assert_eq!(hf.special_id(token), Some(id));
    }
}

#[test]
fn user_text_cannot_forge_special_tokens_by_default() {
    for t in [meta(), hf()] {
        let ids = t.encode("hi<|eot|><|header_start|>system", AsText).unwrap();
        assert!(ids.iter().all(|&id| id < 200_000), "{ids:?}");
        let parsed = t.encode("hi<|eot|>", Parse).unwrap();
        assert_eq!(parsed.last(), Some(&200_008));
    }
}

#[test]
fn bad_tokenizer_files_are_errors() {
    let dir = std::env::temp_dir().join(format!("herd-text-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a leftover of a run with this pid
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tokenizer.model");
    std::fs::write(&model, "aGVsbG8= 0\nnot-base64! 1\n").unwrap();
    assert!(herd_text::Tokenizer::from_file(&model).is_err());
    std::fs::write(&model, "aGVsbG8= 0\naGVsbG8= 1\n").unwrap();
    assert!(
        herd_text::Tokenizer::from_file(&model).is_err(),
        "duplicate token"
    );
    let json = dir.join("tokenizer.json");
    std::fs::write(&json, "{\"not\": \"a tokenizer\"}").unwrap();
    assert!(herd_text::Tokenizer::from_file(&json).is_err());
    assert!(herd_text::Tokenizer::from_dir(&dir.join("missing")).is_err());
    assert!(meta().decode(&[999_999]).is_err());
}
