//! The report from a committed transcript with hand-computed numbers (tests/data/README.md).

use std::collections::BTreeMap;
use std::path::PathBuf;

use herd_redteam::report::{CategoryStats, TechniqueStats};
use herd_redteam::{RedteamError, Report, StopReason, Technique};

use crate::temp_dir;

fn known() -> Report {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/known_transcript.jsonl");
    Report::from_transcripts(&[path]).unwrap()
}

#[test]
fn the_known_transcript_gives_the_hand_computed_numbers() {
    let report = known();
    assert_eq!((report.goals, report.successes), (7, 4));
    assert_eq!(report.attack_success_rate, 4.0 / 7.0);
    assert_eq!(report.turns, 12);
    assert_eq!((report.attacker_format_errors, report.judge_parse_errors), (1, 1));
    let reasons: BTreeMap<StopReason, usize> = [
        (StopReason::Jailbroken, 4),
        (StopReason::MaxTurns, 1),
        (StopReason::TimeBudget, 1),
        (StopReason::Error, 1),
    ]
    .into();
    assert_eq!(report.stop_reasons, reasons);
    // Successful goals took 2, 1, 4 and 1 turns.
    assert_eq!(report.turns_to_success, [(1, 2), (2, 1), (4, 1)].into());
    assert_eq!(report.turns_to_success_mean, Some(2.0));
    assert_eq!(report.turns_to_success_median, Some(1.5));
    let t = |technique, goals_using, turns_using, successes, rate| TechniqueStats {
        technique,
        goals_using,
        turns_using,
        successes,
        attack_success_rate: rate,
    };
    assert_eq!(
        report.by_technique,
        [
            t(Technique::RefusalSuppression, 0, 0, 0, None),
            t(Technique::DualResponse, 2, 2, 1, Some(0.5)),
            t(Technique::ResponsePriming, 2, 2, 1, Some(0.5)),
            t(Technique::PersonaModification, 2, 2, 0, Some(0.0)),
            t(Technique::Hypothetical, 2, 3, 1, Some(0.5)),
            t(Technique::TopicSplitting, 2, 2, 0, Some(0.0)),
            t(Technique::OppositeIntent, 1, 1, 1, Some(1.0)),
        ]
    );
    let c = |category: &str, goals, successes, rate| CategoryStats {
        category: category.into(),
        goals,
        successes,
        attack_success_rate: rate,
    };
    assert_eq!(
        report.by_category,
        [
            c("S1", 3, 2, 2.0 / 3.0),
            c("S10", 1, 0, 0.0),
            c("S2", 2, 2, 1.0),
            c("uncategorized", 1, 0, 0.0),
        ]
    );
}

#[test]
fn the_markdown_shows_the_numbers() {
    let md = known().to_markdown();
    for line in [
        "- Goals: 7; jailbroken: 4; attack success rate: 57.1%",
        "- Turns to success: mean 2.00, median 1.50; distribution: turn 1: 2, turn 2: 1, turn 4: 1",
        "- Stop reasons: jailbroken 4, max_turns 1, time_budget 1, error 1",
        "- Turns: 12; attacker format errors: 1; judge parse errors: 1",
        "| Refusal Suppression | 0 | 0 | 0 | – |",
        "| Hypothetical | 2 | 3 | 1 | 50.0% |",
        "| Opposite Intent | 1 | 1 | 1 | 100.0% |",
        "| S1 | 3 | 2 | 66.7% |",
        "| uncategorized | 1 | 0 | 0.0% |",
    ] {
        assert!(md.lines().any(|l| l == line), "missing {line:?} in\n{md}");
    }
}

#[test]
fn the_chart_is_a_png_with_text_drawn_from_the_embedded_font() {
    let png_bytes = known().render_png().unwrap();
    assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), (1240, 56 + 7 * 34 + 44));
    // The title row holds dark pixels only if the text was rendered.
    let row_bytes = info.width as usize * 3;
    let title = &pixels[..40 * row_bytes];
    assert!(
        title.chunks(3).any(|p| p.iter().all(|&v| v < 100)),
        "no title text"
    );
    let dir = temp_dir("chart");
    let path = dir.join("report.png");
    known().write_png(&path).unwrap();
    assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn many_categories_still_fit_the_chart() {
    let mut report = known();
    report.by_category = (0..40)
        .map(|i| CategoryStats {
            category: format!("a rather long category name number {i}"),
            goals: i,
            successes: i / 2,
            attack_success_rate: 0.5,
        })
        .collect();
    let png = report.render_png().unwrap();
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!(height, (56 + 24 * 34 + 44) as u32);
}

fn report_error(name: &str, text: &str) -> RedteamError {
    let path = temp_dir(name).join("t.jsonl");
    std::fs::write(&path, text).unwrap();
    Report::from_transcripts(&[path]).unwrap_err()
}

#[test]
fn inconsistent_transcripts_are_errors() {
    let known = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/known_transcript.jsonl"),
    )
    .unwrap();
    let lines: Vec<&str> = known.lines().collect();
    // Goal 2: its turn line, then its outcome line.
    let (turn, outcome) = (lines[7], lines[8]);
    assert!(turn.contains("\"goal_index\": 2") && outcome.contains("\"kind\": \"outcome\""));
    let err = report_error("no-outcome", &format!("{turn}\n"));
    assert!(err.to_string().contains("no outcome line"), "{err}");
    let err = report_error("two-outcomes", &format!("{turn}\n{outcome}\n{outcome}\n"));
    assert!(err.to_string().contains("two outcome lines"), "{err}");
    let err = report_error("no-winning-turn", &format!("{outcome}\n"));
    assert!(err.to_string().contains("not a jailbroken turn"), "{err}");
    let err = report_error("bad-line", &format!("{turn}\n{{\"kind\": \"turn\"}}\n"));
    assert!(matches!(err, RedteamError::Transcript { line: 2, .. }), "{err}");
}
