//! Llama 4's 2048 special tokens with Meta's ids (200000 + index), as
//! `llama_models/llama4/tokenizer.py` builds them. The Hugging Face conversion registers only
//! the first 1134 (LLAMA4.md §9.8); herd's tiktoken tokenizer knows all of them.

/// Ids start right after the 200000 BPE ranks.
pub const FIRST_SPECIAL_ID: u32 = 200_000;
pub const N_SPECIAL_TOKENS: usize = 2048;

pub const BEGIN_OF_TEXT: &str = "<|begin_of_text|>";
pub const END_OF_TEXT: &str = "<|end_of_text|>";
pub const EOM: &str = "<|eom|>";
pub const EOT: &str = "<|eot|>";
pub const PYTHON_START: &str = "<|python_start|>";
pub const PYTHON_END: &str = "<|python_end|>";

/// The special-token strings in id order.
pub fn llama4_special_tokens() -> Vec<String> {
    let mut tokens: Vec<String> = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|header_start|>",
        "<|header_end|>",
        "<|eom|>",
        "<|eot|>",
        "<|step|>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    tokens.extend((0..6).map(|i| format!("<|text_post_train_reserved_special_token_{i}|>")));
    tokens.extend(["<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>"].map(String::from));
    tokens.extend((8..69).map(|i| format!("<|text_post_train_reserved_special_token_{i}|>")));
    tokens.extend(
        [
            "<|image_start|>",
            "<|image_end|>",
            "<|vision_reserved_special_token_0|>",
            "<|vision_reserved_special_token_1|>",
            "<|tile_x_separator|>",
            "<|tile_y_separator|>",
            "<|vision_reserved_special_token_2|>",
            "<|vision_reserved_special_token_3|>",
            "<|vision_reserved_special_token_4|>",
            "<|vision_reserved_special_token_5|>",
            "<|image|>",
            "<|vision_reserved_special_token_6|>",
            "<|patch|>",
        ]
        .map(String::from),
    );
    tokens.extend((7..1048).map(|i| format!("<|vision_reserved_special_token_{i}|>")));
    tokens.extend((0..8).map(|i| format!("<|reasoning_reserved_special_token_{i}|>")));
    tokens.extend(["<|reasoning_thinking_start|>", "<|reasoning_thinking_end|>"].map(String::from));
    let reserved = N_SPECIAL_TOKENS - tokens.len();
    tokens.extend((0..reserved).map(|i| format!("<|reserved_special_token_{i}|>")));
    tokens
}
