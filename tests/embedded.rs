//! The whole topology over the in-memory log, on the example input kept in
//! the repository.

use std::path::{Path, PathBuf};

use blameless::app::{run_embedded, EmbeddedReport};
use blameless::config::{Config, Secret};
use blameless::stages::ticket::TicketPayload;
use blameless::topology;

mod common;

fn example() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/outage.jsonl"))
}

fn config(out: &Path) -> Config {
    let mut config = Config::default();
    config.mask.key = Secret::new("embedded-test-key-0123456789");
    config.archive.url = out.join("hot").display().to_string();
    config.archive.cold_url = out.join("cold").display().to_string();
    config.ticket.outbox_dir = out.join("tickets");
    config
}

async fn run(out: &Path) -> EmbeddedReport {
    run_embedded(&config(out), &example()).await.unwrap()
}

fn ticket_for(out: &Path, service: &str) -> TicketPayload {
    for entry in std::fs::read_dir(out.join("tickets")).unwrap() {
        let path = entry.unwrap().path();
        let ticket: TicketPayload = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if ticket.affected_service == service {
            return ticket;
        }
    }
    panic!("no ticket for {service} in {}", out.display());
}

#[tokio::test]
async fn trunk_outage_becomes_one_voice_ticket() {
    let out = tempfile::tempdir().unwrap();
    let report = run(out.path()).await;
    let ticket = ticket_for(out.path(), "voice_inbound");

    assert_eq!(ticket.incident_type, "platform_outage");
    assert_eq!(ticket.platform_source, "genesys_cloud_cx");
    assert_eq!(ticket.signal_type, "call_failed");
    assert!(ticket.timestamp_start.starts_with("2025-12-12T14:20:"), "{}", ticket.timestamp_start);
    assert!(ticket.timestamp_end.as_deref().unwrap().starts_with("2025-12-12T14:33:"), "{:?}", ticket.timestamp_end);
    assert_eq!(ticket.severity, "sev1");
    assert_eq!(ticket.failed_contacts, 440);
    assert!(ticket.data_snapshot_url.ends_with(&format!("/incidents/{}/", ticket.incident_id)));
    let created = report.tickets_written.iter().filter(|(status, _)| status == "created").count();
    assert_eq!(created, 4);
}

#[tokio::test]
async fn billing_skill_below_goal_is_ticketed() {
    let out = tempfile::tempdir().unwrap();
    run(out.path()).await;
    let ticket = ticket_for(out.path(), "nice_billing_voice");
    assert_eq!(ticket.platform_source, "nice_cxone");
    assert_eq!(ticket.signal_type, "service_level_failure");
    assert!(ticket.timestamp_start.starts_with("2025-12-12T14:2"), "{}", ticket.timestamp_start);
}

#[tokio::test]
async fn snapshot_reads_back_through_its_url() {
    let out = tempfile::tempdir().unwrap();
    run(out.path()).await;
    let ticket = ticket_for(out.path(), "voice_inbound");
    let folder = ticket.data_snapshot_url.strip_prefix("file://").unwrap();
    let events = blameless::stages::archive::read_container(&std::fs::read(Path::new(folder).join("events.avro")).unwrap()).unwrap();
    let failed = events.iter().filter(|e| e.event_type == "call_failed").count();
    assert_eq!(failed, 440);
    assert!(events.iter().all(|e| e.affected_service == "voice_inbound"));
}

#[tokio::test]
async fn malformed_payloads_are_dead_lettered_with_reasons() {
    let out = tempfile::tempdir().unwrap();
    let report = run(out.path()).await;
    let reasons: Vec<&str> = report.dead_letters.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons.len(), 5, "{reasons:#?}");
    assert!(reasons.iter().any(|r| r.contains("not valid JSON")));
    assert!(reasons.iter().any(|r| r.contains("keys [hello]")));
    assert!(reasons.iter().any(|r| r.contains("no eventBody.eventTime")));
    assert!(reasons.iter().any(|r| r.contains("\"yesterday\"")));
    assert!(reasons.iter().any(|r| r.contains("a JSON array")));
    assert!(report.dead_letters.iter().all(|d| d.source_topic == topology::RAW_EVENTS && d.payload_scrubbed));
}

fn outbox_files(out: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join("tickets"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// A second run over the same outbox finds every ticket there. It writes no
/// ticket file and changes none: each incident gets one `created` ledger
/// record for the ticket found, with the payload the file holds, and the
/// incident's later states, which that ticket already shows, send nothing.
#[tokio::test]
async fn second_run_creates_no_new_ticket() {
    let out = tempfile::tempdir().unwrap();
    let first = run(out.path()).await;
    let files = outbox_files(out.path());
    let contents: Vec<Vec<u8>> = files.iter().map(|file| std::fs::read(file).unwrap()).collect();
    let again = run(out.path()).await;
    assert_eq!(outbox_files(out.path()), files);
    for (file, before) in files.iter().zip(&contents) {
        assert_eq!(&std::fs::read(file).unwrap(), before, "{} was rewritten", file.display());
    }

    assert!(first.tickets_written.iter().any(|(status, _)| status == "updated"));
    let statuses: Vec<&str> = again.tickets_written.iter().map(|(status, _)| status.as_str()).collect();
    assert_eq!(statuses, vec!["created"; files.len()], "{:?}", again.tickets_written);
}

#[tokio::test]
async fn no_personal_value_leaves_the_mask_stage() {
    let out = tempfile::tempdir().unwrap();
    let report = run(out.path()).await;
    let log = report.log.clone().unwrap();
    let canaries = common::personal_values(&std::fs::read(example()).unwrap());
    assert!(canaries.len() > 100, "the example should carry many personal values");

    // The scan can see them: raw-events still contains them.
    let raw = log.records(topology::RAW_EVENTS);
    let raw_text = String::from_utf8_lossy(raw[0].payload.as_deref().unwrap()).into_owned();
    assert!(canaries.iter().any(|c| raw_text.contains(c.as_str())), "scan found nothing in raw-events");

    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for topic in [topology::MASKED, topology::WINDOWED_INCIDENTS, topology::TICKETS, topology::DEAD_LETTER] {
        for record in log.records(topic) {
            haystacks.push((format!("{topic}/{}/{}", record.partition, record.offset), record.payload.unwrap_or_default()));
        }
    }
    haystacks.extend(common::files_under(out.path()));
    common::assert_no_canary(&canaries, &haystacks);
}

mod window_restart {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use blameless::codec::Codec;
    use blameless::config::Config;
    use blameless::metrics::Metrics;
    use blameless::model::{Record, RecordKind};
    use blameless::stages::window::{WindowRules, WindowStage};
    use blameless::topology;
    use blameless::transport::memory::{MemoryConsumer, MemoryLog, MemorySink};
    use blameless::transport::{
        decode_record, run_stage, InRecord, RecordSource, RunUntil, StageRuntime, TopicNames, TransportError,
    };

    /// Stops the stage after `batches` batches, as a crash between batches
    /// would: nothing is flushed and no later commit happens.
    struct CrashAfter {
        inner: MemoryConsumer,
        batches: usize,
        stop: tokio::sync::watch::Sender<bool>,
    }

    #[async_trait]
    impl RecordSource for CrashAfter {
        async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<InRecord>, TransportError> {
            if self.batches == 0 {
                let _ = self.stop.send(true);
                return Ok(Vec::new());
            }
            self.batches -= 1;
            self.inner.poll(max, wait).await
        }

        async fn commit(&mut self, positions: &[(String, i32, i64)]) -> Result<(), TransportError> {
            self.inner.commit(positions).await
        }

        fn caught_up(&self) -> bool {
            self.inner.caught_up()
        }

        fn lag(&self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
            self.inner.lag(topic, partition, offset)
        }
    }

    fn runtime() -> StageRuntime {
        StageRuntime {
            codec: Codec::single_object().unwrap(),
            topics: TopicNames::default(),
            metrics: Metrics::new().stage("window"),
            batch_max_records: 200,
            batch_max_wait: Duration::from_millis(1),
            tick: Duration::from_secs(3600),
        }
    }

    /// Runs the window stage of `group` over the masked topic of `source`,
    /// into a fresh incidents log; `crash_after` stops it early.
    async fn run_window(source: &Arc<MemoryLog>, group: &str, crash_after: Option<usize>) -> Vec<(String, String)> {
        let out = MemoryLog::new();
        out.create_topic(topology::WINDOWED_INCIDENTS, 6);
        out.create_topic(topology::DEAD_LETTER, 1);
        let sink = MemorySink { log: Arc::clone(&out) };
        // Release every record at once: the in-memory log already delivers
        // them in the order they were accepted.
        let mut rules = WindowRules::from(&Config::default().window);
        rules.reorder_ms = 0;
        let mut stage = WindowStage::new(rules);
        let consumer = source.consumer(group, topology::MASKED);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        match crash_after {
            Some(batches) => {
                let mut crashing = CrashAfter { inner: consumer, batches, stop };
                run_stage(&mut stage, &mut crashing, &sink, &runtime(), RunUntil::Shutdown, shutdown).await.unwrap();
            }
            None => {
                let mut consumer = consumer;
                run_stage(&mut stage, &mut consumer, &sink, &runtime(), RunUntil::Drained, shutdown).await.unwrap();
            }
        }
        let codec = Codec::single_object().unwrap();
        let mut changes = Vec::new();
        for record in out.records(topology::WINDOWED_INCIDENTS) {
            if let Record::Incident(incident) = decode_record(&codec, RecordKind::Incident, &record.payload.unwrap()).await.unwrap() {
                changes.push((incident.incident_id, incident.change));
            }
        }
        changes
    }

    #[tokio::test]
    async fn window_restart_rebuilds_open_incidents() {
        let out = tempfile::tempdir().unwrap();
        let report = super::run(out.path()).await;
        let log = report.log.unwrap();

        let straight_changes = run_window(&log, "straight", None).await;
        let straight: BTreeSet<_> = straight_changes.iter().cloned().collect();
        let opened = straight.iter().filter(|(_, change)| change == "opened").count();
        assert_eq!(opened, 4, "{straight:?}");

        // Crash after 5 batches of 200 (the voice outage is open by then),
        // then restart the same consumer group from its commits.
        let before_changes = run_window(&log, "crashing", Some(5)).await;
        let before: BTreeSet<_> = before_changes.iter().cloned().collect();
        assert!(before.iter().any(|(_, change)| change == "opened"), "no incident was open at the crash: {before:?}");
        let after_changes = run_window(&log, "crashing", None).await;
        let after: BTreeSet<_> = after_changes.iter().cloned().collect();

        let together: BTreeSet<_> = before.union(&after).cloned().collect();
        assert_eq!(together, straight);
        // The restart reads the open incident's records again to rebuild it,
        // but sends none of their changes a second time.
        assert!(before.is_disjoint(&after), "changes sent twice: {:?}", before.intersection(&after).collect::<Vec<_>>());
        assert_eq!(before_changes.len() + after_changes.len(), straight_changes.len());
    }
}

/// A name crafted to carry a phone number and an email address, as a
/// platform user could type it into a check title or a skill name.
const CRAFTED_NAME: &str = "Callback line +1 317 999 0001 owner leakme.person@example.org";

fn crafted_input() -> String {
    let pingdom = |state: &str, seconds: i64| {
        serde_json::json!({
            "check_id": 4242,
            "check_name": CRAFTED_NAME,
            "check_type": "HTTP",
            "previous_state": if state == "DOWN" { "UP" } else { "DOWN" },
            "current_state": state,
            "state_changed_timestamp": seconds,
            "description": CRAFTED_NAME,
            "first_probe": {"location": CRAFTED_NAME},
        })
    };
    let nice = |minute: u32| {
        serde_json::json!({
            "capture": {
                "delivery": "nice_reporting_poll",
                "interval_end": format!("2025-12-12T14:{minute:02}:00Z"),
            },
            "payload": {"skillSummaries": [{
                "skillId": "77", "skillName": CRAFTED_NAME, "mediaTypeName": CRAFTED_NAME,
                "serviceLevel": "20", "serviceLevelGoal": "80", "contactsOffered": "50", "contactsOutOfSLA": "40",
            }]},
        })
    };
    let datadog = serde_json::json!({
        "id": "dd-1",
        "event_type": "synthetics_alert",
        "title": format!("[P2] [Triggered] [Synthetics] {CRAFTED_NAME}"),
        "date": "1765548600000",
        "alert": {"alert_id": "9", "alert_transition": "Triggered"},
    });
    let genesys = serde_json::json!({
        "topicName": "v2.detail.events.conversation.c-crafted.customer.end",
        "eventBody": {"eventTime": 1_765_548_000_000_i64, "conversationId": "c-crafted", "mediaType": CRAFTED_NAME},
    });
    let lines = [
        pingdom("DOWN", 1_765_548_000),
        nice(1),
        nice(2),
        nice(3),
        datadog,
        genesys,
        pingdom("UP", 1_765_549_800),
    ];
    lines.iter().map(|line| format!("{line}\n")).collect()
}

#[tokio::test]
async fn crafted_names_leave_no_personal_value() {
    let out = tempfile::tempdir().unwrap();
    let input = out.path().join("crafted.jsonl");
    std::fs::write(&input, crafted_input()).unwrap();
    let report = run_embedded(&config(out.path()), &input).await.unwrap();

    assert_eq!(report.dead_letters.len(), 1, "{:?}", report.dead_letters);
    assert!(report.dead_letters[0].reason.contains("is not a Genesys Cloud media type"));
    let tickets: Vec<TicketPayload> = outbox_files(out.path())
        .iter()
        .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
        .collect();
    let services: Vec<&str> = tickets.iter().map(|t| t.affected_service.as_str()).collect();
    assert!(services.contains(&"dependency_callback_line_phone_owner_email"), "{services:?}");
    assert!(services.contains(&"nice_callback_line_phone_owner_email"), "{services:?}");

    let log = report.log.clone().unwrap();
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for topic in [topology::MASKED, topology::WINDOWED_INCIDENTS, topology::TICKETS, topology::DEAD_LETTER] {
        for record in log.records(topic) {
            haystacks.push((format!("{topic}/{}/{}", record.partition, record.offset), record.payload.unwrap_or_default()));
        }
    }
    for (path, bytes) in common::files_under(out.path()) {
        if path.ends_with("crafted.jsonl") {
            continue;
        }
        // The path itself carries the service name in archive folders.
        haystacks.push((path.clone(), bytes));
        haystacks.push((format!("{path} (its name)"), path.into_bytes()));
    }
    let canaries = ["leakme", "999 0001", "9990001", "example.org"].map(String::from).into_iter().collect();
    common::assert_no_canary(&canaries, &haystacks);
}

#[tokio::test]
async fn oversized_payload_is_dead_lettered_by_ingest() {
    let out = tempfile::tempdir().unwrap();
    let input = out.path().join("input.jsonl");
    let small = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/genesys/eventbridge-detail-customer-end-voice.json"
    ))
    .unwrap()
    .replace('\n', "");
    let big = format!("{{\"padding\":\"{}\"}}", "x".repeat(5000));
    std::fs::write(&input, format!("{small}\n{big}\n{small}\n")).unwrap();
    let mut config = config(out.path());
    config.ingest.max_payload_bytes = 4000;

    let report = run_embedded(&config, &input).await.unwrap();
    assert_eq!(report.dead_letters.len(), 1);
    let letter = &report.dead_letters[0];
    assert_eq!(letter.stage, "ingest");
    assert!(letter.reason.contains("input.jsonl:2"), "{}", letter.reason);
    assert!(letter.reason.contains("4000"), "{}", letter.reason);
    // The third line repeats the first, so the normalize stage drops it.
    assert_eq!(report.normalized, 1);
}

mod normalize_restart {
    use std::sync::Arc;
    use std::time::Duration;

    use blameless::codec::Codec;
    use blameless::config::NormalizeConfig;
    use blameless::metrics::Metrics;
    use blameless::model::{Record, RecordKind};
    use blameless::publish::Publisher;
    use blameless::stages::ingest::split_lines;
    use blameless::stages::normalize::NormalizeStage;
    use blameless::topology;
    use blameless::transport::memory::{MemoryLog, MemorySink};
    use blameless::transport::{decode_record, run_stage, RunUntil, StageRuntime, TopicNames};

    fn customer_end(conversation: &str, event_time_ms: i64) -> String {
        format!(
            r#"{{"topicName":"v2.detail.events.conversation.{conversation}.customer.end","eventBody":{{"eventTime":{event_time_ms},"conversationId":"{conversation}","participantId":"p1","mediaType":"VOICE","direction":"INBOUND","disconnectType":"ERROR"}}}}"#
        )
    }

    /// Publishes JSON Lines to raw-events, then runs a new normalize stage of
    /// one consumer group until the input is drained, as a restarted process.
    async fn publish_and_normalize(log: &Arc<MemoryLog>, lines: &[String], config: &NormalizeConfig) {
        let sink = Arc::new(MemorySink { log: Arc::clone(log) });
        let codec = Codec::single_object().unwrap();
        let publisher = Publisher::new(sink.clone(), codec.clone(), TopicNames::default(), Metrics::new().stage("ingest"), 900_000);
        publisher.publish(&split_lines(lines.join("\n").as_bytes(), "test")).await.unwrap();

        let runtime = StageRuntime {
            codec,
            topics: TopicNames::default(),
            metrics: Metrics::new().stage("normalize"),
            batch_max_records: 100,
            batch_max_wait: Duration::from_millis(1),
            tick: Duration::from_secs(3600),
        };
        let mut stage = NormalizeStage::new(config);
        let mut consumer = log.consumer("normalize", topology::RAW_EVENTS);
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        run_stage(&mut stage, &mut consumer, sink.as_ref(), &runtime, RunUntil::Drained, shutdown).await.unwrap();
    }

    async fn normalized_conversations(log: &MemoryLog) -> Vec<String> {
        let codec = Codec::single_object().unwrap();
        let mut conversations = Vec::new();
        for record in log.records(topology::NORMALIZED) {
            if let Record::Normalized(event) = decode_record(&codec, RecordKind::Normalized, &record.payload.unwrap()).await.unwrap() {
                conversations.push(event.conversation_id.unwrap());
            }
        }
        conversations.sort();
        conversations
    }

    async fn run_twice(config: &NormalizeConfig) -> Vec<String> {
        let log = MemoryLog::new();
        for topic in [topology::RAW_EVENTS, topology::NORMALIZED, topology::DEAD_LETTER] {
            log.create_topic(topic, 6);
        }
        let first = [customer_end("c1", 1_765_551_713_000), customer_end("c2", 1_765_551_714_000)];
        publish_and_normalize(&log, &first, config).await;
        // After the restart, the platform delivers c1's event again.
        let second = [customer_end("c1", 1_765_551_713_000), customer_end("c3", 1_765_551_715_000)];
        publish_and_normalize(&log, &second, config).await;
        normalized_conversations(&log).await
    }

    #[tokio::test]
    async fn copy_after_restart_is_dropped() {
        let conversations = run_twice(&NormalizeConfig::default()).await;
        assert_eq!(conversations, ["c1", "c2", "c3"]);
    }

    #[tokio::test]
    async fn copy_passes_without_dedupe() {
        let config = NormalizeConfig {
            dedupe_horizon_secs: 0,
            ..NormalizeConfig::default()
        };
        let conversations = run_twice(&config).await;
        assert_eq!(conversations, ["c1", "c1", "c2", "c3"]);
    }
}

/// Counts the events of every Avro object in the hot tier under `out`.
fn hot_tier_events(out: &Path) -> usize {
    common::files_under(&out.join("hot"))
        .into_iter()
        .filter(|(name, _)| name.ends_with(".avro"))
        .map(|(_, bytes)| blameless::stages::archive::read_container(&bytes).unwrap().len())
        .sum()
}

/// Two embedded runs over different inputs into one folder keep both
/// inputs' events: the in-memory offsets start at 0 in both runs, and the
/// archive's object names tell the inputs apart. The same input again adds
/// nothing.
#[tokio::test]
async fn second_input_keeps_both_in_archive() {
    let out = tempfile::tempdir().unwrap();
    let first = run(out.path()).await;
    assert_eq!(hot_tier_events(out.path()), first.masked as usize);

    let text = std::fs::read_to_string(example()).unwrap();
    let half: Vec<&str> = text.lines().take(text.lines().count() / 2).collect();
    let shorter = out.path().join("half.jsonl");
    std::fs::write(&shorter, half.join("\n")).unwrap();
    let second = run_embedded(&config(out.path()), &shorter).await.unwrap();
    assert!(second.masked > 0);
    assert_eq!(hot_tier_events(out.path()), (first.masked + second.masked) as usize);

    run(out.path()).await;
    assert_eq!(hot_tier_events(out.path()), (first.masked + second.masked) as usize);
}
