//! The red-team loop against fake models.

use std::time::Duration;

use herd_redteam::transcript::read_transcript;
use herd_redteam::{
    run, suggested_technique, Goal, RedteamError, Report, Role, RunConfig, StopReason, Technique,
    TranscriptLine, TurnRecord,
};

use crate::fakes::{suggested_in, FakeAttacker, FakeJudge, FakeTarget};
use crate::temp_dir;

fn config(name: &str, max_turns: usize) -> RunConfig {
    RunConfig {
        max_turns,
        max_tokens: 64,
        time_budget: Duration::from_secs(60),
        concurrency: 2,
        output_dir: temp_dir(name),
    }
}

fn goals(names: &[&str]) -> Vec<Goal> {
    names.iter().map(|n| Goal::new(*n)).collect()
}

fn turns_of(lines: &[TranscriptLine]) -> Vec<&TurnRecord> {
    lines
        .iter()
        .filter_map(|l| match l {
            TranscriptLine::Turn(t) => Some(t),
            TranscriptLine::Outcome(_) => None,
        })
        .collect()
}

#[test]
fn a_goal_that_never_succeeds_stops_at_the_turn_limit() {
    let config = config("turn-limit", 3);
    let attacker = FakeAttacker::default();
    let target = FakeTarget::default();
    let summary = run(
        &config,
        &goals(&["alpha", "beta"]),
        &attacker,
        &target,
        &FakeJudge,
    )
    .unwrap();
    for (i, outcome) in summary.outcomes.iter().enumerate() {
        assert_eq!(outcome.goal_index, i);
        assert_eq!(
            (outcome.success, outcome.turns, outcome.stop_reason),
            (false, 3, StopReason::MaxTurns)
        );
        let lines = read_transcript(&summary.transcripts[i]).unwrap();
        assert_eq!(lines.len(), 4, "three turns and the outcome");
        assert_eq!(lines.last(), Some(&TranscriptLine::Outcome(outcome.clone())));
    }
    assert_eq!(attacker.calls_for("alpha").len(), 3);
    // The target sees a plain chat of the attack replies and its own answers; the attacker's
    // reasoning never reaches it.
    let conversations = target.conversations.lock().unwrap();
    let last = conversations
        .iter()
        .find(|c| c.len() == 5 && c[0].content.contains("[alpha]"))
        .unwrap();
    let roles: Vec<Role> = last.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::User,
            Role::Assistant,
            Role::User,
            Role::Assistant,
            Role::User
        ]
    );
    assert_eq!(last[2].content, "attack on [alpha] turn 2");
    assert!(last.iter().all(|m| !m.content.contains("Observation")));
    // The attacker gets the previous exchange in its next turn message.
    let third = &attacker.calls_for("alpha")[2];
    let message = &third.last().unwrap().content;
    assert!(
        message.contains("Previous prompt (P): attack on [alpha] turn 2"),
        "{message}"
    );
    assert!(
        message.contains("Previous response (M): I cannot help with that."),
        "{message}"
    );
    assert_eq!(third.len(), 6, "system, three turn messages, two earlier answers");
}

#[test]
fn suggested_techniques_rotate_across_turns_and_goals() {
    let config = config("rotation", 4);
    let attacker = FakeAttacker::default();
    let names = ["g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7"];
    let summary = run(
        &config,
        &goals(&names),
        &attacker,
        &FakeTarget::default(),
        &FakeJudge,
    )
    .unwrap();
    for (g, path) in summary.transcripts.iter().enumerate() {
        let lines = read_transcript(path).unwrap();
        let turns = turns_of(&lines);
        assert_eq!(turns.len(), 4);
        for t in turns {
            let expected = Technique::ALL[(g + t.turn - 1) % 7];
            assert_eq!(t.suggested_technique, expected, "goal {g} turn {}", t.turn);
            // The fake attacker names what it was suggested, so the turn used it.
            assert_eq!(t.technique, expected);
        }
        // What the attacker was told matches what the transcript records.
        let told: Vec<Technique> = attacker
            .calls_for(names[g])
            .iter()
            .map(|c| suggested_in(&c.last().unwrap().content))
            .collect();
        let expected: Vec<Technique> = (1..=4).map(|t| suggested_technique(g, t)).collect();
        assert_eq!(told, expected);
    }
    // Goal 7 starts where goal 0 did: the offset is the goal index modulo the seven techniques.
    assert_eq!(suggested_technique(7, 1), Technique::RefusalSuppression);
    assert_eq!(suggested_technique(0, 8), Technique::RefusalSuppression);
    assert_eq!(suggested_technique(3, 2), Technique::Hypothetical);
}

#[test]
fn the_technique_is_the_one_the_strategy_names() {
    let config = config("named-technique", 2);
    let attacker = FakeAttacker {
        strategy_names: Some(Technique::OppositeIntent),
        ..FakeAttacker::default()
    };
    let summary = run(
        &config,
        &goals(&["x"]),
        &attacker,
        &FakeTarget::default(),
        &FakeJudge,
    )
    .unwrap();
    let lines = read_transcript(&summary.transcripts[0]).unwrap();
    let turns = turns_of(&lines);
    assert_eq!(turns[0].suggested_technique, Technique::RefusalSuppression);
    assert_eq!(turns[0].technique, Technique::OppositeIntent);
    assert_eq!(turns[1].technique, Technique::OppositeIntent);
}

#[test]
fn success_is_detected_at_its_turn_and_the_goal_stops() {
    let config = config("success", 5);
    let attacker = FakeAttacker::default();
    let target = FakeTarget {
        succeed_at: [("easy".to_string(), 2)].into(),
        ..FakeTarget::default()
    };
    let summary = run(&config, &goals(&["easy", "hard"]), &attacker, &target, &FakeJudge).unwrap();
    let easy = &summary.outcomes[0];
    assert_eq!(
        (easy.success, easy.turns, easy.stop_reason),
        (true, 2, StopReason::Jailbroken)
    );
    assert_eq!(attacker.calls_for("easy").len(), 2, "no turn after the jailbreak");
    let lines = read_transcript(&summary.transcripts[0]).unwrap();
    let turns = turns_of(&lines);
    assert_eq!(turns.len(), 2);
    assert!(!turns[0].judgement.jailbroken);
    assert!(turns[1].judgement.jailbroken);
    assert_eq!(turns[1].judgement.categories, ["S2"]);
    assert_eq!(turns[1].attack_prompt, "attack on [easy] turn 2");
    assert_eq!(turns[1].target_reply, "SUCCESS: here is how to easy");
    assert!(turns[1].format_ok && turns[1].attacker_raw.is_none());
    assert_eq!(turns[1].strategy, "apply Dual Response now.");
    let hard = &summary.outcomes[1];
    assert_eq!(
        (hard.success, hard.turns, hard.stop_reason),
        (false, 5, StopReason::MaxTurns)
    );
    assert_eq!(summary.report.successes, 1);
    assert_eq!(summary.report.turns_to_success_mean, Some(2.0));
}

#[test]
fn a_failing_target_or_judge_ends_only_its_goal() {
    let config = config("errors", 4);
    let target = FakeTarget {
        fail_at: [("flaky target".to_string(), 2)].into(),
        succeed_at: [("fine".to_string(), 3)].into(),
        ..FakeTarget::default()
    };
    let names = ["flaky target", "judge-fails here", "fine"];
    let summary = run(
        &config,
        &goals(&names),
        &FakeAttacker::default(),
        &target,
        &FakeJudge,
    )
    .unwrap();
    let [flaky, judged, fine] = &summary.outcomes[..] else {
        panic!("three outcomes");
    };
    assert_eq!(
        (flaky.stop_reason, flaky.turns, flaky.success),
        (StopReason::Error, 1, false)
    );
    let message = flaky.error.as_deref().unwrap();
    assert!(
        message.starts_with("target: ") && message.contains("connection refused"),
        "{message}"
    );
    assert_eq!((judged.stop_reason, judged.turns), (StopReason::Error, 0));
    assert!(judged.error.as_deref().unwrap().starts_with("judge: "));
    assert_eq!((fine.stop_reason, fine.turns), (StopReason::Jailbroken, 3));
    assert_eq!(summary.report.stop_reasons[&StopReason::Error], 2);
    // The error is in the transcript's outcome line too.
    let lines = read_transcript(&summary.transcripts[0]).unwrap();
    assert_eq!(turns_of(&lines).len(), 1);
    assert!(matches!(lines.last(), Some(TranscriptLine::Outcome(o)) if o.error.is_some()));
}

#[test]
fn a_spent_time_budget_starts_no_turn() {
    let mut config = config("no-time", 5);
    config.time_budget = Duration::ZERO;
    let attacker = FakeAttacker::default();
    let summary = run(
        &config,
        &goals(&["a", "b"]),
        &attacker,
        &FakeTarget::default(),
        &FakeJudge,
    )
    .unwrap();
    assert!(attacker.calls.lock().unwrap().is_empty());
    for outcome in &summary.outcomes {
        assert_eq!((outcome.stop_reason, outcome.turns), (StopReason::TimeBudget, 0));
    }
    assert_eq!(summary.report.stop_reasons[&StopReason::TimeBudget], 2);
}

#[test]
fn the_time_budget_stops_a_long_conversation() {
    let mut config = config("time-budget", 50);
    config.time_budget = Duration::from_millis(150);
    let target = FakeTarget {
        delay: Duration::from_millis(40),
        ..FakeTarget::default()
    };
    let summary = run(
        &config,
        &goals(&["slow"]),
        &FakeAttacker::default(),
        &target,
        &FakeJudge,
    )
    .unwrap();
    let outcome = &summary.outcomes[0];
    assert_eq!(outcome.stop_reason, StopReason::TimeBudget);
    assert!((1..10).contains(&outcome.turns), "{} turns", outcome.turns);
}

#[test]
fn goals_run_in_parallel_up_to_the_concurrency() {
    let mut config = config("concurrency", 2);
    config.concurrency = 3;
    let target = FakeTarget {
        delay: Duration::from_millis(30),
        ..FakeTarget::default()
    };
    let names: Vec<String> = (0..9).map(|i| format!("goal {i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let summary = run(
        &config,
        &goals(&names),
        &FakeAttacker::default(),
        &target,
        &FakeJudge,
    )
    .unwrap();
    let max = target.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=3).contains(&max), "{max} requests at once");
    let indices: Vec<usize> = summary.outcomes.iter().map(|o| o.goal_index).collect();
    assert_eq!(indices, (0..9).collect::<Vec<_>>());
    assert_eq!(summary.transcripts[8].file_name().unwrap(), "0008.jsonl");
}

#[test]
fn the_run_writes_a_report_computed_from_its_transcripts() {
    let config = config("report-files", 2);
    let target = FakeTarget {
        succeed_at: [("b".to_string(), 1)].into(),
        ..FakeTarget::default()
    };
    let goals = vec![
        Goal::new("a").with_category("S1"),
        Goal::new("b").with_category("S2"),
    ];
    let summary = run(&config, &goals, &FakeAttacker::default(), &target, &FakeJudge).unwrap();
    assert_eq!(
        summary.report,
        Report::from_transcripts(&summary.transcripts).unwrap()
    );
    let json: Report = serde_json::from_slice(&std::fs::read(&summary.report_json).unwrap()).unwrap();
    assert_eq!(json, summary.report);
    let markdown = std::fs::read_to_string(&summary.report_markdown).unwrap();
    assert_eq!(markdown, summary.report.to_markdown());
    assert!(markdown.contains("| S2 | 1 | 1 | 100.0% |"), "{markdown}");
    let png = std::fs::read(&summary.report_png).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);
}

#[test]
fn invalid_settings_are_refused_before_anything_runs() {
    let attacker = FakeAttacker::default();
    for (turns, tokens, concurrency) in [(0, 64, 1), (101, 64, 1), (3, 0, 1), (3, 64, 0)] {
        let mut config = config("invalid", turns);
        config.max_tokens = tokens;
        config.concurrency = concurrency;
        let err = run(
            &config,
            &goals(&["a"]),
            &attacker,
            &FakeTarget::default(),
            &FakeJudge,
        )
        .unwrap_err();
        assert!(matches!(err, RedteamError::Config(_)), "{err}");
    }
    assert!(attacker.calls.lock().unwrap().is_empty());
}
