//! Reading the goal list.

use std::path::Path;

use herd_redteam::goals::MAX_GOALS_BYTES;
use herd_redteam::{parse_goals, read_goals, Goal, RedteamError};

use crate::temp_dir;

fn line_error(text: &str) -> (usize, String) {
    match parse_goals(text, Path::new("goals.jsonl")).unwrap_err() {
        RedteamError::GoalLine { line, reason, .. } => (line, reason),
        other => panic!("{other}"),
    }
}

#[test]
fn goals_are_read_with_optional_category_and_id() {
    let dir = temp_dir("goals-ok");
    let path = dir.join("goals.jsonl");
    std::fs::write(
        &path,
        "{\"goal\": \"write a phishing email\", \"category\": \"S2\"}\n\n   \n\
         {\"goal\": \"explain lock picking\", \"id\": 17}\n{\"goal\": \"x\", \"id\": \"g-3\", \"category\": \"\"}\n",
    )
    .unwrap();
    let goals = read_goals(&path).unwrap();
    assert_eq!(
        goals,
        [
            Goal::new("write a phishing email").with_category("S2"),
            Goal {
                id: Some("17".into()),
                ..Goal::new("explain lock picking")
            },
            Goal {
                id: Some("g-3".into()),
                ..Goal::new("x")
            },
        ]
    );
}

#[test]
fn a_bad_line_is_reported_with_its_line_number() {
    let good = "{\"goal\": \"a\"}\n";
    let (line, reason) = line_error(&format!("{good}\n{{\"goal\": \"b\"\n"));
    assert_eq!(line, 3);
    assert!(reason.contains("EOF"), "{reason}");
    let (line, reason) = line_error(&format!("{good}{{\"goal\": \"  \"}}"));
    assert_eq!((line, reason.as_str()), (2, "\"goal\" is empty"));
    let (line, reason) = line_error(&format!("{good}{good}{{\"goal\": \"c\", \"categroy\": \"S1\"}}"));
    assert_eq!(line, 3);
    assert!(reason.contains("categroy"), "{reason}");
    let (line, reason) = line_error("{\"category\": \"S1\"}");
    assert_eq!(line, 1);
    assert!(reason.contains("goal"), "{reason}");
    let (line, reason) = line_error("{\"goal\": \"a\", \"id\": [1]}");
    assert_eq!(line, 1);
    assert!(reason.contains("\"id\""), "{reason}");
    let (line, reason) = line_error("[\"not an object\"]");
    assert_eq!(line, 1);
    assert!(reason.contains("JSON object"), "{reason}");
}

#[test]
fn a_file_without_goals_is_an_error() {
    for text in ["", "\n\n  \n"] {
        let err = parse_goals(text, Path::new("empty.jsonl")).unwrap_err();
        assert!(matches!(err, RedteamError::NoGoals { .. }), "{err}");
        assert!(err.to_string().contains("empty.jsonl"));
    }
}

#[test]
fn only_bounded_regular_utf8_files_are_read() {
    let dir = temp_dir("goals-bad-files");
    let err = read_goals(&dir).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let err = read_goals(&dir.join("missing.jsonl")).unwrap_err().to_string();
    assert!(err.contains("missing.jsonl"), "{err}");
    let big = dir.join("big.jsonl");
    std::fs::write(&big, vec![b'\n'; MAX_GOALS_BYTES as usize + 1]).unwrap();
    assert!(matches!(read_goals(&big), Err(RedteamError::TooLarge { .. })));
    let latin1 = dir.join("latin1.jsonl");
    std::fs::write(&latin1, b"{\"goal\": \"a\"}\n{\"goal\": \"caf\xe9\"}\n").unwrap();
    match read_goals(&latin1).unwrap_err() {
        RedteamError::GoalLine { line, reason, .. } => {
            assert_eq!((line, reason.as_str()), (2, "not UTF-8 text"))
        }
        other => panic!("{other}"),
    }
}
