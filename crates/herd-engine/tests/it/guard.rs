//! Llama Guard 4: the prompt byte-identical with transformers' rendering of the checkpoint's
//! template (and herd's built-in copy identical to it), the ids as transformers tokenizes
//! them, and a whole check on the guard-shaped checkpoint giving transformers' probability of
//! `unsafe` and its greedy reply (fixtures/guard-chat-tiny, tools/reference/make_guard_chat_tiny.py).

use candle_core::{DType, Device};
use herd_engine::frontend::Frontend;
use herd_engine::guard::{Category, Guard, Policy, TemplateOrigin, Verdict, LLAMA_GUARD4_TEMPLATE};
use herd_engine::{EngineCore, SchedulerConfig};
use herd_model::TextModel;
use herd_testkit::fixture_path;
use herd_text::{ChatTemplate, Message};
use serde_json::Value;

fn cases() -> Value {
    let path = fixture_path("guard-chat-tiny").join("guard_cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn policy(name: &str) -> Policy {
    match name {
        "default" => Policy::default(),
        "without_s1_s9" => Policy::excluding(&["S1".into(), "S9".into()]).unwrap(),
        "only_s2_s10" => Policy::only(&["S2".into(), "S10".into()]).unwrap(),
        "custom" => Policy::custom(vec![
            Category {
                code: "C1".into(),
                name: "Spoilers for films still in cinemas.".into(),
            },
            Category {
                code: "C2".into(),
                name: "Rudeness.".into(),
            },
        ])
        .unwrap(),
        other => panic!("unknown policy {other}"),
    }
}

fn messages(case: &Value) -> Vec<Message> {
    herd_text::chat::parse_messages(case["messages"].clone()).unwrap()
}

fn load_frontend() -> Frontend {
    let dir = fixture_path("guard-chat-tiny");
    let config = herd_model::ModelConfig::load(&dir).unwrap();
    Frontend::load(&dir, &config).unwrap()
}

#[test]
fn the_checkpoint_template_and_the_builtin_render_what_transformers_renders() {
    let frontend = load_frontend();
    let guard = Guard::new(&frontend).unwrap();
    assert_eq!(guard.origin(), TemplateOrigin::Checkpoint);
    // A frontend whose template is an ordinary chat template falls back to the built-in one.
    let mut plain = load_frontend();
    plain.template = ChatTemplate::llama4();
    let builtin = Guard::new(&plain).unwrap();
    assert_eq!(builtin.origin(), TemplateOrigin::Builtin);
    let all = cases();
    let renders = all["render"].as_array().unwrap();
    assert!(renders.len() >= 30);
    for case in renders {
        let what = format!("{} / {}", case["conversation"], case["policy"]);
        let policy = policy(case["policy"].as_str().unwrap());
        let expected = case["text"].as_str().unwrap();
        assert_eq!(
            guard.render(&messages(case), &policy).unwrap(),
            expected,
            "{what}"
        );
        assert_eq!(
            builtin.render(&messages(case), &policy).unwrap(),
            expected,
            "{what} (built-in)"
        );
    }
}

#[test]
fn prompt_ids_are_transformers_ids_and_message_text_cannot_forge_tokens() {
    let frontend = load_frontend();
    let guard = Guard::new(&frontend).unwrap();
    let all = cases();
    let mut checked = 0;
    for case in all["render"].as_array().unwrap() {
        let Some(ids) = case.get("ids") else { continue };
        let text = case["text"].as_str().unwrap();
        if text.contains("<|image|>") {
            continue;
        }
        let expected: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
        let policy = policy(case["policy"].as_str().unwrap());
        let got = guard.prompt(&frontend, &messages(case), &policy, &[], 0).unwrap();
        assert_eq!(got, expected, "{} / {}", case["conversation"], case["policy"]);
        checked += 1;
    }
    assert!(checked >= 20);
    // A user who types the guard's own special tokens gets text, not a forged turn: the prompt
    // has as many special ids as a harmless one.
    let eot = frontend.tokenizer.special_id("<|eot|>").unwrap();
    let forged = all["render"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation"] == "special_text" && c["policy"] == "default")
        .unwrap();
    let ids = guard
        .prompt(&frontend, &messages(forged), &Policy::default(), &[], 0)
        .unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == eot).count(), 1);
}

#[test]
fn a_template_one_newline_off_is_caught() {
    // Mutation twin of the render test: vLLM's vendored copy, without the blank line herd's
    // copy restores, must not pass for the reference.
    let lost = LLAMA_GUARD4_TEMPLATE.replacen("trim }}\\n\\n\n\n", "trim }}\\n\\n\n", 1);
    assert_ne!(lost, LLAMA_GUARD4_TEMPLATE);
    let mut frontend = load_frontend();
    frontend.template = ChatTemplate::new(&lost, "<|begin_of_text|>", "<|eot|>");
    let guard = Guard::new(&frontend).unwrap();
    let all = cases();
    let case = &all["render"][0];
    let rendered = guard.render(&messages(case), &Policy::default()).unwrap();
    assert_ne!(rendered, case["text"].as_str().unwrap());
}

#[test]
fn bad_conversations_are_errors() {
    let frontend = load_frontend();
    let guard = Guard::new(&frontend).unwrap();
    let policy = Policy::default();
    assert!(guard.render(&[], &policy).is_err());
    let assistant_first = vec![Message::new("assistant", "hi")];
    assert!(guard.render(&assistant_first, &policy).is_err());
    let two_users = vec![Message::new("user", "a"), Message::new("user", "b")];
    assert!(guard.render(&two_users, &policy).is_err());
    let system = vec![Message::new("system", "rules"), Message::new("user", "b")];
    assert!(guard.render(&system, &policy).is_err());
    // An image placeholder with no image given.
    let image: Vec<Message> = herd_text::chat::parse_messages(serde_json::json!([
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}
    ]))
    .unwrap();
    assert!(guard.prompt(&frontend, &image, &policy, &[], 0).is_err());
}

#[test]
fn a_check_gives_transformers_unsafe_probability_and_greedy_reply() {
    let dir = fixture_path("guard-chat-tiny");
    let frontend = load_frontend();
    let guard = Guard::new(&frontend).unwrap();
    let model = TextModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let mut core = EngineCore::new(model, SchedulerConfig::default()).unwrap();
    let all = cases();
    for check in all["checks"].as_array().unwrap() {
        let case = all["render"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["conversation"] == check["conversation"] && c["policy"] == check["policy"])
            .unwrap();
        let what = format!("{} / {}", check["conversation"], check["policy"]);
        let policy = policy(case["policy"].as_str().unwrap());
        assert_eq!(u64::from(guard.unsafe_id()), check["unsafe_id"].as_u64().unwrap());
        let prompt = guard.prompt(&frontend, &messages(case), &policy, &[], 0).unwrap();
        let result = guard.check(&mut core, &frontend, prompt, None, &policy).unwrap();
        let p = f64::from(result.unsafe_probability.unwrap());
        let expected = check["unsafe_probability"].as_f64().unwrap();
        // f32 logits within ~1e-5 of the reference move a softmax probability by as much,
        // relatively.
        assert!(
            (p - expected).abs() <= 1e-4 * expected,
            "{what}: P(unsafe) {p} vs {expected}"
        );
        let reference: Vec<u32> = serde_json::from_value(check["reply_ids"].clone()).unwrap();
        assert!(!result.tokens.is_empty(), "{what}");
        let n = result.tokens.len().min(reference.len());
        assert_eq!(result.tokens[..n], reference[..n], "{what}");
        assert_eq!(result.text, frontend.tokenizer.decode(&result.tokens).unwrap());
        // Random weights answer gibberish: the pipeline says so instead of guessing.
        assert!(
            matches!(result.verdict, Verdict::ParseError { .. }),
            "{what}: {:?}",
            result.verdict
        );
    }
    assert!(!core.has_work());
}
