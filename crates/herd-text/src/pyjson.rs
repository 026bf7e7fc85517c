//! `json.dumps(value, ensure_ascii=False, indent=…)` exactly as Python writes it — what Hugging
//! Face chat templates' `tojson` produces (tool definitions, tool arguments and results land in
//! the prompt this way, so every space matters for token parity).

use serde_json::Value;

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, or `None` once the text
/// would pass `max_bytes`. Indentation multiplies what a
/// value takes (a deep list of small numbers grows a line of spaces per number), so the text
/// is bounded as it is written, not after.
pub fn dumps_within(value: &Value, indent: Option<usize>, max_bytes: usize) -> Option<String> {
    let mut out = Capped {
        text: String::new(),
        max: max_bytes,
    };
    write_value(&mut out, value, indent, 0).ok()?;
    Some(out.text)
}

/// The text so far and the most it may hold.
struct Capped {
    text: String,
    max: usize,
}

/// The text passed its cap.
struct Overflow;

impl Capped {
    fn push_str(&mut self, s: &str) -> Result<(), Overflow> {
        if self.text.len().saturating_add(s.len()) > self.max {
            return Err(Overflow);
        }
        self.text.push_str(s);
        Ok(())
    }

    fn push(&mut self, c: char) -> Result<(), Overflow> {
        self.push_str(c.encode_utf8(&mut [0; 4]))
    }

    fn spaces(&mut self, n: usize) -> Result<(), Overflow> {
        if self.text.len().saturating_add(n) > self.max {
            return Err(Overflow);
        }
        self.text.extend(std::iter::repeat_n(' ', n));
        Ok(())
    }
}

fn write_value(out: &mut Capped, value: &Value, indent: Option<usize>, depth: usize) -> Result<(), Overflow> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) => write_container(
            out,
            '[',
            ']',
            items.iter().map(|v| (None, v)),
            items.is_empty(),
            indent,
            depth,
        ),
        Value::Object(map) => write_container(
            out,
            '{',
            '}',
            map.iter().map(|(k, v)| (Some(k.as_str()), v)),
            map.is_empty(),
            indent,
            depth,
        ),
    }
}

fn write_container<'a>(
    out: &mut Capped,
    open: char,
    close: char,
    entries: impl Iterator<Item = (Option<&'a str>, &'a Value)>,
    empty: bool,
    indent: Option<usize>,
    depth: usize,
) -> Result<(), Overflow> {
    out.push(open)?;
    if empty {
        return out.push(close);
    }
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(',')?;
            if indent.is_none() {
                out.push(' ')?;
            }
        }
        if let Some(n) = indent {
            out.push('\n')?;
            out.spaces(n.saturating_mul(depth + 1))?;
        }
        if let Some(key) = key {
            write_string(out, key)?;
            out.push_str(": ")?;
        }
        write_value(out, value, indent, depth + 1)?;
    }
    if let Some(n) = indent {
        out.push('\n')?;
        out.spaces(n.saturating_mul(depth))?;
    }
    out.push(close)
}

fn write_string(out: &mut Capped, s: &str) -> Result<(), Overflow> {
    out.push('"')?;
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\"")?,
            '\\' => out.push_str("\\\\")?,
            '\n' => out.push_str("\\n")?,
            '\r' => out.push_str("\\r")?,
            '\t' => out.push_str("\\t")?,
            '\u{08}' => out.push_str("\\b")?,
            '\u{0c}' => out.push_str("\\f")?,
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32))?,
            c => out.push(c)?,
        }
    }
    out.push('"')
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents −4..15,
/// otherwise `d.ddde±XX`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{f:e}"); // e.g. "-1.2345e-5", shortest digits
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let frac = if digits.len() > 1 {
            format!(".{}", &digits[1..])
        } else {
            String::new()
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{}{frac}e{esign}{:02}", &digits[..1], exp.abs())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dumps(value: &Value, indent: Option<usize>) -> String {
        dumps_within(value, indent, usize::MAX).unwrap()
    }

    #[test]
    fn stops_at_its_cap() {
        let v = json!({"a": [1, 2]});
        let whole = dumps(&v, Some(4));
        assert_eq!(
            dumps_within(&v, Some(4), whole.len()).as_deref(),
            Some(&whole[..])
        );
        assert_eq!(dumps_within(&v, Some(4), whole.len() - 1), None);
    }

    #[test]
    fn matches_python_json_dumps() {
        let v = json!({"b": 1, "a": [1.5, "x\"é\n", null, true], "c": {}});
        assert_eq!(
            dumps(&v, None),
            r#"{"b": 1, "a": [1.5, "x\"é\n", null, true], "c": {}}"#
        );
        assert_eq!(
            dumps(&json!({"a": [1, 2]}), Some(4)),
            "{\n    \"a\": [\n        1,\n        2\n    ]\n}"
        );
        assert_eq!(dumps(&json!([]), Some(4)), "[]");
    }

    #[test]
    fn floats_like_python_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123456789012345.0, "123456789012345.0"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
        ] {
            assert_eq!(float_repr(f), s, "{f}");
        }
    }
}
