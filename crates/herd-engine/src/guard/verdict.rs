//! A guard model's answer as a typed result. Llama Guard writes `safe`, or `unsafe` and on the
//! next line the violated category codes, comma-separated. Anything else — an empty reply, a
//! third word, a code the policy does not have — is a [`Verdict::ParseError`] that keeps the
//! raw text: a classifier's output is untrusted model text, never a reason to panic.

use serde::Serialize;

use super::policy::Policy;

/// What the guard said.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Safe,
    /// The violated categories' codes, as the model listed them (possibly none).
    Unsafe {
        categories: Vec<String>,
    },
    /// The reply did not follow the format.
    ParseError {
        reason: String,
    },
}

impl Verdict {
    /// Reads a guard reply (the text before its end-of-turn token). Whitespace around lines is
    /// ignored; `unsafe` with no second line lists no categories.
    pub fn parse(text: &str, policy: &Policy) -> Verdict {
        let mut lines = text.trim().lines().map(str::trim).filter(|l| !l.is_empty());
        let error = |reason: String| Verdict::ParseError { reason };
        match lines.next() {
            None => error("the guard's reply is empty".into()),
            Some("safe") => match lines.next() {
                None => Verdict::Safe,
                Some(extra) => error(format!("`safe` followed by {:?}", clip(extra))),
            },
            Some("unsafe") => {
                let Some(list) = lines.next() else {
                    return Verdict::Unsafe {
                        categories: Vec::new(),
                    };
                };
                if let Some(extra) = lines.next() {
                    return error(format!("a third line {:?}", clip(extra)));
                }
                let mut categories: Vec<String> = Vec::new();
                for code in list.split(',').map(str::trim) {
                    if policy.get(code).is_none() {
                        return error(format!("`{}` is not a category of the policy", clip(code)));
                    }
                    if !categories.iter().any(|c| c == code) {
                        categories.push(code.to_string());
                    }
                }
                Verdict::Unsafe { categories }
            }
            Some(first) => error(format!(
                "the first line is {:?}, not `safe` or `unsafe`",
                clip(first)
            )),
        }
    }

    pub fn is_unsafe(&self) -> bool {
        matches!(self, Verdict::Unsafe { .. })
    }

    /// `safe`, `unsafe` or `parse_error`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Safe => "safe",
            Verdict::Unsafe { .. } => "unsafe",
            Verdict::ParseError { .. } => "parse_error",
        }
    }

    /// The violated codes (empty unless unsafe).
    pub fn categories(&self) -> &[String] {
        match self {
            Verdict::Unsafe { categories } => categories,
            _ => &[],
        }
    }
}

/// At most 40 characters of model text in an error message.
fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(40).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Verdict {
        Verdict::parse(text, &Policy::default())
    }

    fn unsafe_(codes: &[&str]) -> Verdict {
        Verdict::Unsafe {
            categories: codes.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn valid_replies() {
        assert_eq!(parse("safe"), Verdict::Safe);
        assert_eq!(parse("\n\nsafe\n"), Verdict::Safe);
        assert_eq!(parse("unsafe\nS1"), unsafe_(&["S1"]));
        assert_eq!(parse("unsafe\nS1,S10, S14"), unsafe_(&["S1", "S10", "S14"]));
        assert_eq!(parse("unsafe\nS2,S2"), unsafe_(&["S2"]));
        assert_eq!(parse("unsafe"), unsafe_(&[]));
        assert_eq!(parse(" unsafe \n\n S3 \n"), unsafe_(&["S3"]));
    }

    #[test]
    fn broken_replies_are_parse_errors() {
        for text in [
            "",
            "   \n ",
            "Safe",
            "safe.",
            "safe\nS1",
            "unsafe\nS15",
            "unsafe\nS1,,S2",
            "unsafe\nS1\nS2",
            "unsafe\nViolent Crimes",
            "I cannot answer that",
            "\u{0}\u{ffff}",
            "unsafe\n\u{202e}S1",
        ] {
            assert!(
                matches!(parse(text), Verdict::ParseError { .. }),
                "{text:?} gave {:?}",
                parse(text)
            );
        }
    }

    #[test]
    fn codes_are_checked_against_the_policy() {
        let policy = Policy::only(&["S1".into()]).unwrap();
        assert_eq!(Verdict::parse("unsafe\nS1", &policy), unsafe_(&["S1"]));
        assert!(matches!(
            Verdict::parse("unsafe\nS2", &policy),
            Verdict::ParseError { .. }
        ));
    }

    #[test]
    fn long_garbage_is_clipped_in_the_reason() {
        let text = "x".repeat(10_000);
        let Verdict::ParseError { reason } = parse(&text) else {
            panic!("expected a parse error")
        };
        assert!(reason.len() < 200);
    }
}
