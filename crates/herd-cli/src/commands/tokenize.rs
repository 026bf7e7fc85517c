//! `herd tokenize`: one JSON string per stdin line in, one JSON array of ids per line out (or
//! the reverse with `--decode`).

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};
use herd_text::special_tokens::BEGIN_OF_TEXT;
use herd_text::{SpecialTokens, Tokenizer};

use crate::args::TokenizeArgs;

pub fn run(args: TokenizeArgs) -> Result<()> {
    let tokenizer = match (&args.model, &args.tokenizer) {
        (_, Some(file)) => Tokenizer::from_file(file)?,
        (Some(model), None) => herd_engine::frontend::tokenizer(model)?,
        (None, None) => bail!("give --model DIR or --tokenizer FILE"),
    };
    let special = if args.allow_special {
        SpecialTokens::Parse
    } else {
        SpecialTokens::AsText
    };
    let bos = match args.bos {
        true => Some(
            tokenizer
                .special_id(BEGIN_OF_TEXT)
                .context("the tokenizer has no <|begin_of_text|>")?,
        ),
        false => None,
    };
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for (n, line) in stdin.lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("stdin line {}", n + 1);
        let out = if args.decode {
            let ids: Vec<u32> = serde_json::from_str(&line)
                .with_context(|| format!("{}: expected a JSON array of ids", at()))?;
            serde_json::to_string(&tokenizer.decode(&ids).with_context(at)?)?
        } else {
            let text: String =
                serde_json::from_str(&line).with_context(|| format!("{}: expected a JSON string", at()))?;
            let mut ids: Vec<u32> = bos.into_iter().collect();
            ids.extend(tokenizer.encode(&text, special).with_context(at)?);
            serde_json::to_string(&ids)?
        };
        writeln!(stdout, "{out}")?;
    }
    Ok(())
}
