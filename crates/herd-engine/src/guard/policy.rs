//! The safety policy a guard model checks against: hazard categories, each a code (`S1`) and a
//! description. Llama Guard 4's default is the MLCommons hazard taxonomy, S1–S14; a user may
//! keep a subset or write their own.

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// One hazard category as the guard prompt lists it: `S1: Violent Crimes.`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub code: String,
    /// The text after `S1: ` (Llama Guard's names end with a full stop).
    pub name: String,
}

/// The MLCommons hazard taxonomy as Llama Guard 4's chat template writes it.
pub const DEFAULT_CATEGORIES: [(&str, &str); 14] = [
    ("S1", "Violent Crimes."),
    ("S2", "Non-Violent Crimes."),
    ("S3", "Sex Crimes."),
    ("S4", "Child Exploitation."),
    ("S5", "Defamation."),
    ("S6", "Specialized Advice."),
    ("S7", "Privacy."),
    ("S8", "Intellectual Property."),
    ("S9", "Indiscriminate Weapons."),
    ("S10", "Hate."),
    ("S11", "Self-Harm."),
    ("S12", "Sexual Content."),
    ("S13", "Elections."),
    ("S14", "Code Interpreter Abuse."),
];

/// The categories one check uses, in the order the prompt lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    categories: Vec<Category>,
    /// True when these are the default categories (or a subset of them): the checkpoint's own
    /// template can render them through `excluded_category_keys`.
    builtin: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            categories: DEFAULT_CATEGORIES
                .iter()
                .map(|(code, name)| Category {
                    code: (*code).to_string(),
                    name: (*name).to_string(),
                })
                .collect(),
            builtin: true,
        }
    }
}

impl Policy {
    /// The default categories listed in `codes` only (`S1`, `s10`, …; order as in the
    /// taxonomy). An unknown or repeated code, or an empty list, is an error.
    pub fn only(codes: &[String]) -> Result<Self, EngineError> {
        let wanted = normalize_codes(codes)?;
        let mut policy = Policy::default();
        policy.categories.retain(|c| wanted.contains(&c.code));
        Ok(policy)
    }

    /// The default categories without those in `codes`.
    pub fn excluding(codes: &[String]) -> Result<Self, EngineError> {
        let dropped = normalize_codes(codes)?;
        let mut policy = Policy::default();
        policy.categories.retain(|c| !dropped.contains(&c.code));
        if policy.categories.is_empty() {
            return Err(EngineError::InvalidParameter {
                field: "categories",
                message: "excluding every category leaves nothing to check".into(),
            });
        }
        Ok(policy)
    }

    /// Custom categories; codes unique, 1–16 ASCII letters, digits, `_` or `-` (the verdict
    /// lists them comma-separated); descriptions one line each.
    pub fn custom(categories: Vec<Category>) -> Result<Self, EngineError> {
        if categories.is_empty() {
            return Err(invalid("a custom policy needs at least one category".into()));
        }
        for (i, c) in categories.iter().enumerate() {
            let bad_code = c.code.is_empty()
                || c.code.len() > 16
                || !c
                    .code
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
            if bad_code {
                return Err(invalid(format!(
                    "category {}: code {:?} must be 1–16 letters, digits, `_` or `-`",
                    i + 1,
                    c.code
                )));
            }
            if c.name.trim().is_empty() || c.name.contains('\n') || c.name.contains('\r') {
                return Err(invalid(format!(
                    "category {} ({}): the description must be one non-empty line",
                    i + 1,
                    c.code
                )));
            }
            if categories[..i].iter().any(|d| d.code == c.code) {
                return Err(invalid(format!("category code {} appears twice", c.code)));
            }
        }
        Ok(Policy {
            categories,
            builtin: false,
        })
    }

    /// Custom categories from JSON: an object `{"C1": "Description.", …}` (its order is the
    /// prompt's) or a list of `{"code": …, "name": …}`.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, EngineError> {
        let categories = match value {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(code, name)| match name.as_str() {
                    Some(name) => Ok(Category {
                        code: code.clone(),
                        name: name.to_string(),
                    }),
                    None => Err(invalid(format!(
                        "category {code}: the description must be a string"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            serde_json::Value::Array(_) => serde_json::from_value(value.clone())
                .map_err(|e| invalid(format!("expected a list of {{\"code\": …, \"name\": …}}: {e}")))?,
            _ => {
                return Err(invalid(
                    "expected an object {\"C1\": \"Description.\", …} or a list of {\"code\", \"name\"}"
                        .into(),
                ))
            }
        };
        Policy::custom(categories)
    }

    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    /// Whether these are (a subset of) the default categories.
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// Default codes this policy leaves out (`excluded_category_keys` of Guard 4's template).
    pub fn excluded_codes(&self) -> Vec<String> {
        DEFAULT_CATEGORIES
            .iter()
            .map(|(code, _)| (*code).to_string())
            .filter(|code| !self.categories.iter().any(|c| &c.code == code))
            .collect()
    }

    /// The category with this code.
    pub fn get(&self, code: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.code == code)
    }
}

fn invalid(message: String) -> EngineError {
    EngineError::InvalidParameter {
        field: "categories",
        message,
    }
}

/// `s1`, ` S10 ` → `S1`, `S10`; each must be one of the default codes, once.
fn normalize_codes(codes: &[String]) -> Result<Vec<String>, EngineError> {
    if codes.is_empty() {
        return Err(invalid("no category codes given".into()));
    }
    let mut out: Vec<String> = Vec::new();
    for code in codes {
        let code = code.trim().to_ascii_uppercase();
        if !DEFAULT_CATEGORIES.iter().any(|(c, _)| *c == code) {
            return Err(invalid(format!(
                "unknown category `{code}` (the default categories are S1–S14)"
            )));
        }
        if out.contains(&code) {
            return Err(invalid(format!("category {code} given twice")));
        }
        out.push(code);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn codes(p: &Policy) -> Vec<&str> {
        p.categories().iter().map(|c| c.code.as_str()).collect()
    }

    #[test]
    fn subsets_keep_taxonomy_order_and_report_exclusions() {
        let p = Policy::only(&["s10".into(), "S1".into()]).unwrap();
        assert_eq!(codes(&p), ["S1", "S10"]);
        assert!(p.is_builtin());
        assert_eq!(p.excluded_codes().len(), 12);
        let q = Policy::excluding(&["S14".into()]).unwrap();
        assert_eq!(q.categories().len(), 13);
        assert_eq!(q.excluded_codes(), ["S14"]);
    }

    #[test]
    fn bad_codes_are_errors() {
        assert!(Policy::only(&["S15".into()]).is_err());
        assert!(Policy::only(&["S1".into(), "s1".into()]).is_err());
        assert!(Policy::only(&[]).is_err());
        let all: Vec<String> = DEFAULT_CATEGORIES.iter().map(|(c, _)| c.to_string()).collect();
        assert!(Policy::excluding(&all).is_err());
    }

    #[test]
    fn custom_categories_are_checked() {
        let cat = |code: &str, name: &str| Category {
            code: code.into(),
            name: name.into(),
        };
        assert!(Policy::custom(vec![cat("C1", "Spoilers.")]).is_ok());
        assert!(Policy::custom(vec![]).is_err());
        assert!(Policy::custom(vec![cat("C 1", "x")]).is_err());
        assert!(Policy::custom(vec![cat("<|eot|>", "x")]).is_err());
        assert!(Policy::custom(vec![cat("C1", "two\nlines")]).is_err());
        assert!(Policy::custom(vec![cat("C1", "a"), cat("C1", "b")]).is_err());
        let from_object = Policy::from_json(&serde_json::json!({"B": "Bees.", "A": "Ants."})).unwrap();
        assert_eq!(codes(&from_object), ["B", "A"]);
        assert!(!from_object.is_builtin());
        let from_list =
            Policy::from_json(&serde_json::json!([{"code": "X", "name": "Xylophones."}])).unwrap();
        assert_eq!(from_list.get("X").unwrap().name, "Xylophones.");
        assert!(Policy::from_json(&serde_json::json!({"A": 1})).is_err());
        assert!(Policy::from_json(&serde_json::json!("S1")).is_err());
        assert!(Policy::from_json(&serde_json::json!({})).is_err());
    }
}
