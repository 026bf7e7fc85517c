//! Chat rendering equals transformers' (Llama 4's shipped template) and its token ids, for the
//! committed conversations: system + user, multi-turn, images, tools, tool calls and results.

use herd_text::chat::strftime;
use herd_text::{ChatTemplate, Message, SpecialTokens};
use serde::Deserialize;
use serde_json::Value;

use crate::{fixtures, hf, meta};

#[derive(Deserialize)]
struct ChatCase {
    name: String,
    messages: Vec<Message>,
    tools: Option<Vec<Value>>,
    add_generation_prompt: bool,
    text: String,
    ids: Vec<u32>,
}

fn cases() -> Vec<ChatCase> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer/chat_cases.json")).unwrap())
        .unwrap()
}

fn shipped() -> ChatTemplate {
    ChatTemplate::from_dir(&fixtures().join("tokenizer")).unwrap()
}

#[test]
fn shipped_template_renders_like_transformers() {
    let template = shipped();
    assert!(
        template.source().contains("tools_in_user_message"),
        "loaded from tokenizer_config.json"
    );
    let cases = cases();
    assert!(cases.len() >= 10);
    for c in &cases {
        let text = template
            .render(&c.messages, c.tools.as_deref(), c.add_generation_prompt)
            .unwrap();
        assert_eq!(text, c.text, "{}", c.name);
        for tokenizer in [meta(), hf()] {
            let ids = template
                .encode(
                    tokenizer,
                    &c.messages,
                    c.tools.as_deref(),
                    c.add_generation_prompt,
                    SpecialTokens::Parse,
                )
                .unwrap();
            assert_eq!(ids, c.ids, "{} ids", c.name);
        }
    }
}

#[test]
fn builtin_template_renders_the_same() {
    let builtin = ChatTemplate::llama4();
    for c in cases() {
        let text = builtin
            .render(&c.messages, c.tools.as_deref(), c.add_generation_prompt)
            .unwrap();
        assert_eq!(text, c.text, "{}", c.name);
    }
}

#[test]
fn safe_encoding_matches_except_where_users_type_special_tokens() {
    let template = shipped();
    for c in cases() {
        let ids = template
            .encode(
                meta(),
                &c.messages,
                c.tools.as_deref(),
                c.add_generation_prompt,
                SpecialTokens::AsText,
            )
            .unwrap();
        if c.name == "special_token_text_in_content" {
            // transformers turns the user's typed `<|eot|>` into a real end of turn; herd does not.
            assert_ne!(ids, c.ids);
            let eots = |ids: &[u32]| ids.iter().filter(|&&i| i == 200_008).count();
            assert!(eots(&ids) < eots(&c.ids));
        } else {
            assert_eq!(ids, c.ids, "{}", c.name);
        }
        assert_eq!(
            ids.iter().filter(|&&i| i == 200_000).count(),
            1,
            "{}: exactly one BOS",
            c.name
        );
    }
}

#[test]
fn template_errors_are_reported_not_panicked() {
    let t = ChatTemplate::new("{{ raise_exception('no system role allowed') }}", "<s>", "</s>");
    let e = t.render(&[Message::new("user", "hi")], None, true).unwrap_err();
    assert!(e.to_string().contains("no system role allowed"), "{e}");
    let t = ChatTemplate::new("{% for %}", "<s>", "</s>");
    assert!(t.render(&[], None, true).is_err());
    // Tools without a user message to carry them.
    let e = ChatTemplate::llama4().render(&[], Some(&[serde_json::json!({"name": "f"})]), true);
    assert!(e.is_err());
}

#[test]
fn missing_template_falls_back_to_builtin() {
    let dir = std::env::temp_dir().join(format!("herd-text-notemplate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a leftover of a run with this pid
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(
        ChatTemplate::from_dir(&dir).unwrap().source(),
        herd_text::chat::LLAMA4_TEMPLATE
    );
}

#[test]
fn strftime_formats_dates() {
    assert_eq!(strftime(0, "%d %b %Y"), "01 Jan 1970");
    assert_eq!(strftime(1_721_952_000, "%d %b %Y %A"), "26 Jul 2024 Friday");
    assert_eq!(
        strftime(951_782_400 + 3_723, "%Y-%m-%d %H:%M:%S %j"),
        "2000-02-29 01:02:03 060"
    );
}

#[test]
fn image_placeholders_expand_to_the_processor_layout() {
    use herd_text::image_layout::{expand_images, image_layout, ImageTokenIds};
    let template = shipped();
    let mut checked = 0;
    let raw: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer/chat_cases.json")).unwrap())
            .unwrap();
    for (c, v) in cases().iter().zip(&raw) {
        let Some(expected) = v.get("processor_ids").filter(|p| !p.is_null()) else {
            continue;
        };
        let expected: Vec<u32> = serde_json::from_value(expected.clone()).unwrap();
        let grids: Vec<(u32, u32)> = serde_json::from_value(v["image_aspect_ratios"].clone()).unwrap();
        for tokenizer in [meta(), hf()] {
            let ids = ImageTokenIds::from_tokenizer(tokenizer).unwrap();
            let rendered = template
                .encode(
                    tokenizer,
                    &c.messages,
                    None,
                    c.add_generation_prompt,
                    SpecialTokens::Parse,
                )
                .unwrap();
            let expanded = expand_images(&rendered, &ids, &grids, 144).unwrap();
            assert_eq!(expanded, expected, "{}", c.name);
            assert!(
                expand_images(&rendered, &ids, &grids[1..], 144).is_err(),
                "count mismatch is an error"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 2);
    // Length = 3 + 144·(n+1) + n for n = rows·cols > 1 tiles; 3 + 144 for one tile.
    let ids = ImageTokenIds::from_tokenizer(meta()).unwrap();
    for (grid, len) in [
        ((1, 1), 147),
        ((2, 2), 727),
        ((1, 3), 3 + 144 * 4 + 3),
        ((4, 4), 3 + 144 * 17 + 16),
    ] {
        assert_eq!(image_layout(&ids, grid, 144).len(), len, "{grid:?}");
    }
}
