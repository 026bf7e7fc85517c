//! A corpus of what Llama 4 emits when it calls tools (and things that merely look like it).

use herd_text::tool_calls::{parse, StreamEvent, StreamParser, ToolCall};
use serde_json::{json, Value};

fn call(name: &str, arguments: Value) -> ToolCall {
    ToolCall {
        name: name.into(),
        arguments,
    }
}

/// (model output, expected prose, expected calls)
fn corpus() -> Vec<(&'static str, &'static str, Vec<ToolCall>)> {
    let paris = || call("get_weather", json!({"city": "Paris"}));
    vec![
        // Pythonic, Llama 4's native format.
        (r#"[get_weather(city="Paris")]"#, "", vec![paris()]),
        (r#"[get_weather(city="Paris")]<|eot|>"#, "", vec![paris()]),
        (r#"[get_weather(city='Paris')]<|eom|>"#, "", vec![paris()]),
        (r#"[get_weather(city="Paris"), f(x=1)]"#, "", vec![paris(), call("f", json!({"x": 1}))]),
        (r#"  [ get_weather( city = "Paris" ) ]  "#, "", vec![paris()]),
        ("[now()]", "", vec![call("now", json!({}))]),
        (
            r#"[f(a=1, b=-2.5, c=True, d=False, e=None, g=[1, "x"], h={"k": 'v'}, i=(1, 2))]"#,
            "",
            vec![call("f", json!({"a": 1, "b": -2.5, "c": true, "d": false, "e": null, "g": [1, "x"], "h": {"k": "v"}, "i": [1, 2]}))],
        ),
        (r#"[say(text="a \"quoted\" word\nnewline")]"#, "", vec![call("say", json!({"text": "a \"quoted\" word\nnewline"}))]),
        (r#"[say(text="comma, paren) and ] bracket")]"#, "", vec![call("say", json!({"text": "comma, paren) and ] bracket"}))]),
        (r#"[math.add(a=1, b=2)]"#, "", vec![call("math.add", json!({"a": 1, "b": 2}))]),
        (r#"[say(text="日本語 ✓")]"#, "", vec![call("say", json!({"text": "日本語 ✓"}))]),
        // Leading prose.
        (r#"Let me check the weather. [get_weather(city="Paris")]"#, "Let me check the weather.", vec![paris()]),
        ("Sure!\n\n[get_weather(city=\"Paris\")]<|eot|>", "Sure!", vec![paris()]),
        // JSON, the HF template's format.
        (r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#, "", vec![paris()]),
        (r#"{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}<|eom|>"#, "", vec![paris()]),
        (r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#, "", vec![paris()]),
        (r#"{"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}"#, "", vec![paris()]),
        (r#"{"name": "now"}"#, "", vec![call("now", json!({}))]),
        (
            r#"{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "f", "parameters": {"x": 1}}"#,
            "",
            vec![paris(), call("f", json!({"x": 1}))],
        ),
        (
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\n{\"name\": \"f\", \"parameters\": {\"x\": 1}}",
            "",
            vec![paris(), call("f", json!({"x": 1}))],
        ),
        (r#"[{"name": "get_weather", "parameters": {"city": "Paris"}}]"#, "", vec![paris()]),
        (r#"{"name": "q", "parameters": {"sql": "select 1; select 2"}}"#, "", vec![call("q", json!({"sql": "select 1; select 2"}))]),
        (r#"I'll look it up. {"name": "get_weather", "parameters": {"city": "Paris"}}"#, "I'll look it up.", vec![paris()]),
        // <|python_start|> wrapping, both layouts.
        (r#"<|python_start|>[get_weather(city="Paris")]<|python_end|><|eot|>"#, "", vec![paris()]),
        (r#"<|python_start|><|python_end|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot|>"#, "", vec![paris()]),
        (r#"<|python_start|>{"name": "get_weather", "parameters": {"city": "Paris"}}"#, "", vec![paris()]),
        (r#"Checking.<|python_start|>[get_weather(city="Paris")]<|python_end|>"#, "Checking.", vec![paris()]),
        // Not tool calls: stay prose.
        ("The answer is [1, 2, 3].", "The answer is [1, 2, 3].", vec![]),
        ("Use a dict like {a: 1}.", "Use a dict like {a: 1}.", vec![]),
        ("See [the docs](http://x) for more.", "See [the docs](http://x) for more.", vec![]),
        (r#"[get_weather(city="Paris")] and then some prose"#, r#"[get_weather(city="Paris")] and then some prose"#, vec![]),
        (r#"[get_weather(city="Paris"]"#, r#"[get_weather(city="Paris"]"#, vec![]),
        (r#"[get_weather(city=)]"#, r#"[get_weather(city=)]"#, vec![]),
        (r#"{"name": "f", "parameters": [1]}"#, r#"{"name": "f", "parameters": [1]}"#, vec![]),
        (r#"{"name": "f", "parameters": {}, "extra": 1}"#, r#"{"name": "f", "parameters": {}, "extra": 1}"#, vec![]),
        (r#"{"name": 5}"#, r#"{"name": 5}"#, vec![]),
        (r#"<|python_start|>print("hi")<|python_end|>"#, r#"<|python_start|>print("hi")<|python_end|>"#, vec![]),
        ("Plain answer.<|eot|>", "Plain answer.", vec![]),
        ("", "", vec![]),
        ("[", "[", vec![]),
    ]
}

#[test]
fn corpus_parses_whole() {
    let cases = corpus();
    assert!(cases.len() >= 30);
    for (text, prose, calls) in cases {
        let parsed = parse(text);
        assert_eq!(parsed.tool_calls, calls, "calls of {text:?}");
        assert_eq!(parsed.content, prose, "prose of {text:?}");
    }
}

/// Streams `text` in pieces of `size` characters; returns (prose, calls).
fn stream(text: &str, size: usize) -> (String, Vec<ToolCall>) {
    let chars: Vec<char> = text.chars().collect();
    let mut parser = StreamParser::new();
    let mut events = Vec::new();
    for piece in chars.chunks(size) {
        events.extend(parser.push(&piece.iter().collect::<String>()));
    }
    events.extend(parser.finish());
    let mut prose = String::new();
    let mut calls = Vec::new();
    for e in events {
        match e {
            StreamEvent::Text(t) => prose.push_str(&t),
            StreamEvent::ToolCalls(c) => calls.extend(c),
        }
    }
    (prose, calls)
}

#[test]
fn streaming_agrees_with_whole_parsing_at_every_piece_size() {
    for (text, _, _) in corpus() {
        let whole = parse(text);
        for size in [1, 2, 3, 7, 1000] {
            let (prose, calls) = stream(text, size);
            assert_eq!(calls, whole.tool_calls, "{text:?} in pieces of {size}");
            if calls.is_empty() {
                // Prose streams through verbatim (end-of-turn markers included).
                assert_eq!(prose, text, "{text:?} in pieces of {size}");
            } else {
                assert_eq!(prose.trim_end(), whole.content, "{text:?} in pieces of {size}");
            }
        }
    }
}

#[test]
fn prose_is_not_held_back_needlessly() {
    let mut parser = StreamParser::new();
    assert_eq!(
        parser.push("The list [1, 2] is"),
        vec![StreamEvent::Text("The list [1, 2] is".into())]
    );
    // An opening that may still become a call is held…
    assert_eq!(
        parser.push(" here: [get_we"),
        vec![StreamEvent::Text(" here: ".into())]
    );
    // …and released as soon as it cannot.
    assert_eq!(
        parser.push("ather is nice"),
        vec![StreamEvent::Text("[get_weather is nice".into())]
    );
}
