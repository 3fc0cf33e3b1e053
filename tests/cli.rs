//! The `blameless` command line, run as a user would.

use std::process::{Command, Output};

fn blameless(args: &[&str], mask_key: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blameless"));
    command.args(args).env_remove("BLAMELESS__MASK__KEY");
    if let Some(key) = mask_key {
        command.env("BLAMELESS__MASK__KEY", key);
    }
    command.output().unwrap()
}

fn fixture(path: &str) -> String {
    format!("{}/../tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn normalize_prints_one_event_per_line() {
    let input = fixture("genesys/eventbridge-detail-customer-end-voice.json");
    let output = blameless(&["normalize", "--input", &input], None);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1);
    let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(event["event_type"], "call_completed");
    assert_eq!(event["affected_service"], "voice_inbound");
}

#[test]
fn normalize_drops_repeated_event() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("twice.jsonl");
    let line = std::fs::read_to_string(fixture("genesys/eventbridge-detail-customer-end-voice.json"))
        .unwrap()
        .replace('\n', "");
    std::fs::write(&input, format!("{line}\n{line}\n")).unwrap();
    let output = blameless(&["normalize", "--input", input.to_str().unwrap()], None);
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap().lines().count(), 1);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("twice.jsonl:2: duplicate of event"), "{stderr}");
    assert!(stderr.contains("1 duplicates dropped"), "{stderr}");
}

#[test]
fn normalize_reports_rejects_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, "{\"hello\":\"world\"}\nnot json\n").unwrap();
    let output = blameless(&["normalize", "--input", input.to_str().unwrap()], None);
    assert!(output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("bad.jsonl:1: rejected: payload shape is not recognized"), "{stderr}");
    assert!(stderr.contains("bad.jsonl:2: rejected: payload is not valid JSON"), "{stderr}");
}

#[test]
fn mask_prints_pseudonyms_only() {
    let input = fixture("genesys/eventbridge-detail-user-end-voice.json");
    let output = blameless(&["mask", "--input", &input], Some("cli-test-key-0123456789"));
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("\"agent_pseudonym\":\"agent_k1_"), "{stdout}");
    assert!(!stdout.contains("b781d507-2b83-57b9-88d1-43565293c1db"), "{stdout}");
    assert!(!stdout.contains("5555550457"), "{stdout}");
}

#[test]
fn mask_without_key_explains_how_to_set_it() {
    let input = fixture("genesys/eventbridge-detail-user-end-voice.json");
    let output = blameless(&["mask", "--input", &input], None);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("BLAMELESS__MASK__KEY"), "{stderr}");
}

#[test]
fn unknown_stage_names_the_stages() {
    let output = blameless(&["stage", "nromalize"], None);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("unknown stage \"nromalize\""), "{stderr}");
}

#[test]
fn run_help_shows_embedded_required() {
    let output = blameless(&["run", "--help"], None);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let usage = help.lines().find(|line| line.starts_with("Usage:")).unwrap();
    assert!(usage.contains("--embedded"), "{help}");
    assert!(!usage.contains("[OPTIONS] --input"), "{help}");
    assert!(help.contains("Required, because the embedded run"), "{help}");
}

#[test]
fn run_without_embedded_is_a_usage_error() {
    let output = blameless(&["run", "--input", &fixture("genesys/eventbridge-detail-user-end-voice.json")], None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--embedded"), "{stderr}");
}

#[test]
fn out_help_does_not_repeat_default() {
    let output = blameless(&["run", "--help"], None);
    let help = String::from_utf8(output.stdout).unwrap();
    assert_eq!(help.matches("default").count(), 1, "{help}");
    assert!(help.contains("[default: out]"), "{help}");
}

#[test]
fn input_help_names_json_and_jsonl() {
    for command in ["run", "stage", "normalize", "mask"] {
        let output = blameless(&[command, "--help"], None);
        let help = String::from_utf8(output.stdout).unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains("a .json file holding one payload, or a folder of .json and .jsonl files"), "{command}: {help}");
    }
}

#[test]
fn input_for_consuming_stage_is_rejected() {
    let input = fixture("genesys/eventbridge-detail-user-end-voice.json");
    let output = blameless(&["stage", "normalize", "--input", &input], None);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("only the ingest stage reads an input file"), "{stderr}");
    assert!(stderr.contains("--input"), "{stderr}");
}

#[test]
fn archive_lifecycle_prints_rules_per_bucket() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blameless"));
    command
        .args(["archive", "lifecycle"])
        .env_remove("BLAMELESS__MASK__KEY")
        .env("BLAMELESS__ARCHIVE__URL", "s3://telemetry/hot")
        .env("BLAMELESS__ARCHIVE__COLD_URL", "s3://incidents-cold")
        .env("BLAMELESS__ARCHIVE__HOT_RETENTION_DAYS", "120");
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rules: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rules["telemetry"]["Rules"][0]["Expiration"]["Days"], 120);
    assert_eq!(rules["telemetry"]["Rules"][0]["Filter"]["Prefix"], "hot/");
    assert_eq!(rules["incidents-cold"]["Rules"][0]["Expiration"]["Days"], 365);
    assert_eq!(rules["incidents-cold"]["Rules"][0]["Filter"]["Prefix"], "incidents/");
}

#[test]
fn archive_lifecycle_rejects_short_retention() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blameless"));
    command
        .args(["archive", "lifecycle"])
        .env("BLAMELESS__ARCHIVE__HOT_RETENTION_DAYS", "30");
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("archive.hot_retention_days is 30"), "{stderr}");
}

/// Runs the example through the embedded pipeline into `out`.
fn run_example(out: &std::path::Path) {
    let output = blameless(
        &["run", "--embedded", "--input", &format!("{}/../examples/outage.jsonl", env!("CARGO_MANIFEST_DIR")), "--out", out.to_str().unwrap()],
        Some("cli-test-key-0123456789"),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn verify(out: &std::path::Path, older_than: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blameless"));
    command
        .args(["archive", "verify", "--older-than", older_than])
        .env_remove("BLAMELESS__MASK__KEY")
        .env("BLAMELESS__ARCHIVE__COLD_URL", out.join("archive/cold"));
    command.output().unwrap()
}

#[test]
fn archive_verify_passes_then_finds_gap() {
    let dir = tempfile::tempdir().unwrap();
    run_example(dir.path());
    // The example's incidents are from 2025-12-12, older than one day.
    let output = verify(dir.path(), "1d");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok\t")).count(), 4, "{stdout}");

    let incidents = dir.path().join("archive/cold/incidents");
    let first = std::fs::read_dir(&incidents).unwrap().next().unwrap().unwrap().path();
    std::fs::remove_file(first.join("events.avro")).unwrap();
    let output = verify(dir.path(), "90d");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let gaps: Vec<&str> = stdout.lines().filter(|line| line.starts_with("gap\t")).collect();
    assert_eq!(gaps.len(), 1, "{stdout}");
    assert!(gaps[0].contains("events.avro"), "{stdout}");
}

#[test]
fn archive_verify_rejects_invalid_age() {
    let dir = tempfile::tempdir().unwrap();
    let output = verify(dir.path(), "ninety days");
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--older-than: age \"ninety days\" is invalid"), "{stderr}");
}

/// `--review` replays the example with Jira configured and no Jira
/// credentials: every ticket lands in the outbox, and without the flag the
/// same settings are rejected before anything runs.
#[test]
fn review_run_needs_no_ticket_system() {
    let out = tempfile::tempdir().unwrap();
    let input = format!("{}/../examples/outage.jsonl", env!("CARGO_MANIFEST_DIR"));
    let run = |review: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_blameless"));
        command.args(["run", "--embedded", "--input", &input, "--out", out.path().to_str().unwrap()]);
        if review {
            command.arg("--review");
        }
        command
            .env("BLAMELESS__MASK__KEY", "cli-test-key-0123456789")
            .env("BLAMELESS__TICKET__SINK", "jira")
            .env_remove("BLAMELESS__TICKET__JIRA__API_TOKEN")
            .output()
            .unwrap()
    };

    let rejected = run(false);
    assert!(!rejected.status.success());
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(stderr.contains("ticket.jira.base_url is empty"), "{stderr}");
    assert!(!out.path().join("tickets").exists());

    let reviewed = run(true);
    assert!(reviewed.status.success(), "{}", String::from_utf8_lossy(&reviewed.stderr));
    let tickets = std::fs::read_dir(out.path().join("tickets")).unwrap().count();
    assert!(tickets > 0, "review mode wrote no ticket to the outbox");
    let stdout = String::from_utf8_lossy(&reviewed.stdout);
    assert!(stdout.contains("created: file://"), "{stdout}");
}

/// The embedded run writes its incident records as JSON Lines, and `ticket
/// send` takes them back: every gated incident finds its outbox ticket, so
/// nothing new is created.
#[test]
fn incidents_file_feeds_ticket_send() {
    let out = tempfile::tempdir().unwrap();
    run_example(out.path());
    let incidents = out.path().join("incidents.jsonl");
    let text = std::fs::read_to_string(&incidents).unwrap();
    assert!(text.lines().count() >= 8, "{text}");
    assert!(text.lines().all(|line| line.starts_with("{\"incident_id\":")), "{text}");
    let files_before = std::fs::read_dir(out.path().join("tickets")).unwrap().count();

    let output = Command::new(env!("CARGO_BIN_EXE_blameless"))
        .args(["ticket", "send", "--input", incidents.to_str().unwrap()])
        .args(["--ledger", out.path().join("ledger.jsonl").to_str().unwrap()])
        .env("BLAMELESS__TICKET__OUTBOX_DIR", out.path().join("tickets"))
        .env("BLAMELESS__ARCHIVE__URL", out.path().join("archive/hot"))
        .env("BLAMELESS__ARCHIVE__COLD_URL", out.path().join("archive/cold"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.lines().filter(|line| line.starts_with("created")).count(), files_before, "{stdout}");
    assert!(!stdout.contains("updated"), "{stdout}");
    assert_eq!(std::fs::read_dir(out.path().join("tickets")).unwrap().count(), files_before);
}
