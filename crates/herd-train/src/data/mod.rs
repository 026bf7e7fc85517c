//! Training data: JSONL of chats or plain text, rendered, tokenized, packed and split.
