//! The `blameless` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use std::io::Write;

use anyhow::Context;
use blameless::app;
use blameless::attachments::audit::AuditLog;
use blameless::attachments::{decrypt_attachment, AttachmentStore, DecryptRequest};
use blameless::governance;
use blameless::stages::archive;
use blameless::sources;
use blameless::stages::ingest;
use blameless::stages::mask::Masker;
use blameless::stages::normalize::Normalizer;
use blameless::stages::ticket::send::send_file;
use blameless::metrics::Metrics;
use blameless::config::Config;
use blameless::topology::Topology;
use blameless::transport::kafka::{apply_topology, TopicState};

#[derive(Parser)]
#[command(name = "blameless", version, about = "Turns contact-center platform failures into masked telemetry, incidents and postmortem tickets.")]
struct Cli {
    /// TOML configuration file; BLAMELESS__SECTION__KEY variables override it.
    #[arg(long, global = true, env = "BLAMELESS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on an input file, in this process. To run on
    /// Kafka, start each stage with `blameless stage NAME` instead.
    Run {
        /// Run every stage in this process over an in-memory log, with no
        /// external service. Required, because the embedded run is the only
        /// mode of `run`.
        #[arg(long, required = true)]
        embedded: bool,
        /// Raw platform payloads: a JSON Lines file, a .json file holding
        /// one payload, or a folder of .json and .jsonl files.
        #[arg(long)]
        input: PathBuf,
        /// Folder for the archive and the ticket outbox, unless the
        /// configuration names them.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Review mode: tickets go to the outbox folder whatever
        /// ticket.sink is, so no ticket system is contacted.
        #[arg(long)]
        review: bool,
    },
    /// Run one stage as a member of its consumer group on Kafka.
    Stage {
        /// ingest, normalize, mask, window, ticket or archive.
        name: String,
        /// Review mode, for a replay: the ticket stage writes tickets to the
        /// outbox folder whatever ticket.sink is, so no ticket system is
        /// contacted. Run a replay under its own kafka.topic_prefix, so its
        /// ledger records stay out of the live `tickets` topic.
        #[arg(long)]
        review: bool,
        /// Input of the ingest stage, the only stage that reads a file: a
        /// JSON Lines file, a .json file holding one payload, or a folder of
        /// .json and .jsonl files.
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Print the normalized events of an input as JSON Lines, with no Kafka.
    /// They still carry personal data: use it on test data or locally.
    Normalize {
        /// Raw platform payloads: a JSON Lines file, a .json file holding
        /// one payload, or a folder of .json and .jsonl files.
        #[arg(long)]
        input: PathBuf,
    },
    /// Print the masked events of an input as JSON Lines, as the masked
    /// topic and the archive would hold them.
    Mask {
        /// Raw platform payloads: a JSON Lines file, a .json file holding
        /// one payload, or a folder of .json and .jsonl files.
        #[arg(long)]
        input: PathBuf,
    },
    /// Fetch or receive platform payloads and publish them to raw-events on
    /// Kafka, until Ctrl-C or SIGTERM.
    Source {
        #[command(subcommand)]
        kind: SourceKind,
    },
    /// Check a postmortem draft or a ticket payload for personal data and
    /// per-person figures. Prints one finding per line and exits with status
    /// 1 when there is any.
    Check {
        /// The document: a JSON file is checked key by key, any other file
        /// line by line as text.
        #[arg(long)]
        input: PathBuf,
    },
    /// Send tickets without Kafka, to check a ticket system's settings.
    Ticket {
        #[command(subcommand)]
        action: TicketAction,
    },
    /// Manage the topics of topology/.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Store, list and decrypt incident attachments such as transcripts
    /// and recordings, kept encrypted in the cold tier (settings:
    /// [attachments] and archive.cold_url).
    Attachment {
        #[command(subcommand)]
        action: AttachmentAction,
    },
    /// Retention and checks of the archive tiers (settings: [archive]).
    Archive {
        #[command(subcommand)]
        action: ArchiveAction,
    },
}

#[derive(Subcommand)]
enum ArchiveAction {
    /// Print the S3 lifecycle configuration of each archive bucket as JSON,
    /// keyed by bucket: the hot tier expires after
    /// archive.hot_retention_days and the cold tier after
    /// archive.cold_retention_days.
    Lifecycle,
    /// Check the snapshot of every incident older than --older-than in the
    /// cold tier: present, complete, and read back with the checksum and
    /// event count of its manifest. Prints one line per incident and exits
    /// with status 1 when any snapshot has a gap.
    Verify {
        /// Minimum incident age, from its start: a whole number and a unit
        /// (d, h, m or s), such as 90d.
        #[arg(long, default_value = "90d")]
        older_than: String,
    },
}

#[derive(Subcommand)]
enum AttachmentAction {
    /// Encrypt a file and store it as an attachment of an incident. An
    /// existing attachment is never replaced.
    Put {
        /// Incident id, as in the ticket's incident_id.
        #[arg(long)]
        incident: String,
        /// Attachment name: 1 to 128 ASCII letters, digits, '.', '_' and
        /// '-', such as call-1234-transcript.txt.
        #[arg(long)]
        name: String,
        /// File to encrypt.
        #[arg(long)]
        file: PathBuf,
    },
    /// Decrypt an attachment into a new file with mode 0600. Only a
    /// principal with the incident_commander role may; every attempt is
    /// written to the audit log (attachments.audit_log).
    Get {
        /// Incident id, as in the ticket's incident_id.
        #[arg(long)]
        incident: String,
        /// Attachment name, as shown by `blameless attachment list`.
        #[arg(long)]
        name: String,
        /// File to write. It must not exist yet.
        #[arg(long)]
        out: PathBuf,
        /// Principal on whose behalf the attachment is decrypted, as named
        /// in attachments.principals_file.
        #[arg(long, env = "BLAMELESS_PRINCIPAL")]
        principal: String,
    },
    /// List the attachments of an incident, without decrypting them.
    List {
        /// Incident id, as in the ticket's incident_id.
        #[arg(long)]
        incident: String,
    },
}

#[derive(Subcommand)]
enum SourceKind {
    /// Receive Genesys Cloud and EventBridge-forwarded events and synthetic
    /// check webhooks over HTTP (settings: [sources.http]).
    Http,
    /// Subscribe to Genesys Cloud through the Notification API websocket
    /// (settings: [sources.genesys]).
    Genesys,
    /// Poll the NICE CXone reporting API (settings: [sources.nice]).
    Nice,
}

#[derive(Subcommand)]
enum TicketAction {
    /// Push incident records through the configured ticket sink (settings:
    /// [ticket]), as the ticket stage would: try a field mapping against a
    /// sandbox project before an outage. Run twice, it creates nothing new.
    Send {
        /// Incident records as JSON Lines, one windowed-incidents record per
        /// line (the fields of schemas/incident_event.avsc).
        #[arg(long)]
        input: PathBuf,
        /// Ledger of the tickets this command made, as JSON Lines; it plays
        /// the part of the tickets topic, and is created when missing.
        #[arg(long, default_value = "out/ticket-ledger.jsonl")]
        ledger: PathBuf,
    },
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Create missing topics and report drift of existing ones.
    Apply,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // --review goes in before the configuration is read and checked, so a
    // review needs no credentials of the live ticket system. Set here, while
    // the process has one thread.
    if matches!(cli.command, Command::Run { review: true, .. } | Command::Stage { review: true, .. }) {
        std::env::set_var("BLAMELESS__TICKET__REVIEW", "true");
    }
    init_tracing();
    // Crash points for the tests, from FAILPOINTS; only in builds with the
    // `failpoints` feature.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BLAMELESS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,blameless=info"));
    let json = std::env::var("BLAMELESS_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only on a terminal, so a log redirected to a file stays plain.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    // The check reads no configuration, so it works without a mask key.
    if let Command::Check { input } = &cli.command {
        return check_document(input);
    }
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run {
            embedded: _,
            input,
            out,
            review,
        } => {
            // clap rejects `run` without --embedded, so this is the embedded run.
            apply_out_dir(&mut config, &out);
            debug_assert!(!review || config.ticket.review);
            let report = app::run_embedded(&config, &input).await?;
            let incidents_file = write_incidents(&out, &report.incidents)?;
            print_report(&report);
            println!("Incident records:   {}", incidents_file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Stage { name, input, review } => {
            debug_assert!(!review || config.ticket.review);
            if let Some(path) = &input {
                if name != "ingest" && app::CONSUMING_STAGES.contains(&name.as_str()) {
                    anyhow::bail!(
                        "--input {} was given to the {name} stage, but only the ingest stage reads an input file; the {name} stage reads its Kafka topic. Leave out --input, or run `blameless stage ingest --input {}`",
                        path.display(),
                        path.display()
                    );
                }
            }
            app::run_kafka_stage(&name, &config, input.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Normalize { input } => print_events(&config, &input, None),
        Command::Mask { input } => {
            let masker = Masker::from_config(&config)?;
            print_events(&config, &input, Some(&masker))
        }
        Command::Source { kind } => {
            match kind {
                SourceKind::Http => sources::receiver::run(&config).await?,
                SourceKind::Genesys => sources::genesys_client::run(&config).await?,
                SourceKind::Nice => sources::nice_poller::run(&config).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { .. } => unreachable!("the check returned before the configuration was loaded"),
        Command::Topology { action: TopologyAction::Apply } => {
            let topology = Topology::load_default();
            let report = apply_topology(&config.kafka, &topology, &config.kafka.topic_prefix).await?;
            let mut drifted = false;
            for (topic, state) in report {
                match state {
                    TopicState::Created => println!("created  {topic}"),
                    TopicState::Matches => println!("ok       {topic}"),
                    TopicState::Drifted(differences) => {
                        drifted = true;
                        println!("drift    {topic}: {}", differences.join("; "));
                    }
                }
            }
            Ok(if drifted { ExitCode::from(2) } else { ExitCode::SUCCESS })
        }
        Command::Attachment { action } => run_attachment(&config, action).await,
        Command::Ticket {
            action: TicketAction::Send { input, ledger },
        } => send_tickets(&config, &input, &ledger).await,
        Command::Archive { action } => run_archive(&config, action).await,
    }
}

async fn run_archive(config: &Config, action: ArchiveAction) -> anyhow::Result<ExitCode> {
    match action {
        ArchiveAction::Lifecycle => {
            let retention = archive::RetentionRules {
                hot_days: config.archive.hot_retention_days,
                cold_days: config.archive.cold_retention_days,
            };
            let rules = archive::lifecycle_rules(&config.archive.url, &config.archive.cold_url, retention)
                .map_err(|reason| anyhow::anyhow!(reason))?;
            println!("{}", serde_json::to_string_pretty(&rules)?);
            for url in [&config.archive.url, &config.archive.cold_url] {
                if !url.starts_with("s3://") && !url.starts_with("s3a://") {
                    eprintln!("{url} is not an s3:// URL: apply its retention with that store's own lifecycle settings.");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ArchiveAction::Verify { older_than } => {
            let older_than_ms = archive::parse_age(&older_than).map_err(|e| anyhow::anyhow!("--older-than: {e}"))?;
            let cold = archive::ArchiveStore::open(&config.archive.cold_url)?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let checks = archive::verify_snapshots(&cold, older_than_ms, now_ms).await?;
            let mut gaps = 0;
            for check in &checks {
                let started = check
                    .incident_start_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map_or_else(|| "unknown start".to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                match &check.gap {
                    None => println!("ok\t{}\t{started}\t{} events", check.incident_id, check.event_count.unwrap_or(0)),
                    Some(reason) => {
                        gaps += 1;
                        println!("gap\t{}\t{started}\t{reason}", check.incident_id);
                    }
                }
            }
            if checks.is_empty() {
                eprintln!(
                    "No incident older than {older_than} found in {}. If you expected some, check archive.cold_url.",
                    cold.url_of("")
                );
            }
            eprintln!(
                "{} incidents older than {older_than} checked in {}: {} read back, {gaps} with gaps.",
                checks.len(),
                cold.url_of(""),
                checks.len() - gaps
            );
            Ok(if gaps == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

async fn run_attachment(config: &Config, action: AttachmentAction) -> anyhow::Result<ExitCode> {
    match action {
        AttachmentAction::Put { incident, name, file } => {
            let keyring = config.attachments.keyring()?;
            let store = AttachmentStore::open(&config.archive.cold_url)?;
            let plaintext = zeroize::Zeroizing::new(std::fs::read(&file).map_err(|e| {
                anyhow::anyhow!("could not read --file {}: {e}. Pass a readable file", file.display())
            })?);
            let url = store
                .encrypt_and_store(&keyring.current, &incident, &name, &plaintext)
                .await?;
            println!(
                "Stored {url} ({} bytes encrypted with master key {}).",
                plaintext.len(),
                keyring.current.id()
            );
            Ok(ExitCode::SUCCESS)
        }
        AttachmentAction::Get {
            incident,
            name,
            out,
            principal,
        } => {
            let keyring = config.attachments.keyring()?;
            let store = AttachmentStore::open(&config.archive.cold_url)?;
            let audit = AuditLog::new(&config.attachments.audit_log);
            // The file is created before decryption, so that a plaintext
            // is never held without a place to write it.
            let mut output = create_private_file(&out)?;
            let request = DecryptRequest {
                principal: &principal,
                incident_id: &incident,
                name: &name,
            };
            let decrypted = decrypt_attachment(
                &store,
                &keyring,
                config.attachments.principals_file.as_deref(),
                &audit,
                request,
            )
            .await;
            let written = decrypted.map_err(anyhow::Error::from).and_then(|plaintext| {
                output
                    .write_all(&plaintext)
                    .and_then(|()| output.sync_all())
                    .map_err(|e| anyhow::anyhow!("could not write --out {}: {e}", out.display()))?;
                Ok(plaintext.len())
            });
            match written {
                Ok(length) => {
                    println!(
                        "Wrote {length} bytes to {}. The decryption is recorded in {}.",
                        out.display(),
                        audit.path().display()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    drop(output);
                    let _ = std::fs::remove_file(&out);
                    Err(error)
                }
            }
        }
        AttachmentAction::List { incident } => {
            let store = AttachmentStore::open(&config.archive.cold_url)?;
            let attachments = store.list(&incident).await?;
            if attachments.is_empty() {
                eprintln!("Incident {incident} has no attachments in {}.", config.archive.cold_url);
            }
            for attachment in attachments {
                println!(
                    "{}\t{} bytes\t{}",
                    attachment.name,
                    attachment.encrypted_bytes,
                    attachment.last_modified.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Creates `path` for writing, readable and writable by its owner only. An
/// existing file is an error: opening it would keep its old, possibly wider,
/// permissions.
fn create_private_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "--out {} already exists. Choose a new path or remove the file; it is never overwritten, so that the plaintext gets a file with mode 0600",
                path.display()
            )
        } else {
            anyhow::anyhow!("could not create --out {}: {e}", path.display())
        }
    })
}

/// Runs the blameless-document check on a file and prints its findings.
fn check_document(input: &std::path::Path) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(input).with_context(|| format!("failed to read {}", input.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text; the check reads text and JSON files only", input.display()))?;
    let findings = governance::check_document(&text);
    let mut stdout = std::io::stdout().lock();
    for finding in &findings {
        writeln!(stdout, "{}: {finding}", input.display())?;
    }
    if findings.is_empty() {
        eprintln!("{}: no personal data or per-person figures found.", input.display());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{}: {} findings. Reviews use aggregate metrics only: remove or aggregate the flagged values.",
            input.display(),
            findings.len()
        );
        Ok(ExitCode::from(1))
    }
}

/// Prints the normalized (or, with a masker, masked) events of every payload
/// of `input` to stdout, and each rejected payload with its reason to stderr.
fn print_events(config: &Config, input: &std::path::Path, masker: Option<&Masker>) -> anyhow::Result<ExitCode> {
    let delivered = ingest::read_input(input)?;
    let received_at = chrono::Utc::now().timestamp_millis();
    let normalizer = Normalizer::new(&config.normalize);
    let mut seen = std::collections::HashSet::new();
    let mut stdout = std::io::stdout().lock();
    let (mut printed, mut rejected, mut duplicates) = (0, 0, 0);
    for item in &delivered {
        let (_, raw) = ingest::to_raw_event(item, received_at);
        match normalizer.normalize(&raw) {
            Ok(events) => {
                for event in events {
                    // One input is one delivery window: a copy of an event
                    // is dropped as the normalize stage would.
                    if config.normalize.dedupe_horizon_secs > 0 && !seen.insert(event.event_id.clone()) {
                        duplicates += 1;
                        eprintln!("{}: duplicate of event {} dropped", item.origin, event.event_id);
                        continue;
                    }
                    let line = match masker {
                        Some(masker) => serde_json::to_string(&masker.mask(event))?,
                        None => serde_json::to_string(&event)?,
                    };
                    writeln!(stdout, "{line}")?;
                    printed += 1;
                }
            }
            Err(reason) => {
                rejected += 1;
                eprintln!("{}: rejected: {reason}", item.origin);
            }
        }
    }
    eprintln!(
        "{} payloads read, {printed} events printed, {duplicates} duplicates dropped, {rejected} payloads rejected.",
        delivered.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `blameless ticket send`: prints one line per incident on stdout,
/// each failure on stderr, and exits 1 when any line failed.
async fn send_tickets(config: &Config, input: &std::path::Path, ledger: &std::path::Path) -> anyhow::Result<ExitCode> {
    if let Some(folder) = ledger.parent().filter(|folder| !folder.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("could not create the folder {} of the ledger file", folder.display()))?;
    }
    let mut stage = app::ticket_stage(config, &Metrics::new())?.without_waiting();
    let report = send_file(&mut stage, input, ledger).await?;
    for line in &report.lines {
        println!("{line}");
    }
    for failure in &report.failures {
        eprintln!("{failure}");
    }
    eprintln!(
        "Incidents through {}: {}, failed: {}. Ledger: {}",
        config.ticket.effective_sink(),
        report.sent,
        report.failures.len(),
        ledger.display()
    );
    Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Writes the run's windowed-incidents records to `<out>/incidents.jsonl`,
/// one JSON object per line: the input of `blameless ticket send`.
fn write_incidents(out: &std::path::Path, incidents: &[blameless::model::IncidentEvent]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("could not create the output folder {}", out.display()))?;
    let path = out.join("incidents.jsonl");
    let mut text = String::new();
    for incident in incidents {
        text.push_str(&serde_json::to_string(incident)?);
        text.push('\n');
    }
    std::fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))?;
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

/// Places the archive and the outbox under `out` unless the configuration
/// names them.
fn apply_out_dir(config: &mut Config, out: &std::path::Path) {
    let defaults = Config::default();
    if config.archive.url == defaults.archive.url {
        config.archive.url = out.join("archive/hot").display().to_string();
    }
    if config.archive.cold_url == defaults.archive.cold_url {
        config.archive.cold_url = out.join("archive/cold").display().to_string();
    }
    if config.ticket.outbox_dir == defaults.ticket.outbox_dir {
        config.ticket.outbox_dir = out.join("tickets");
    }
}

fn print_report(report: &app::EmbeddedReport) {
    println!("Events read:        {}", report.events_read);
    println!("Normalized events:  {}", report.normalized);
    println!("Masked events:      {}", report.masked);
    println!("Rejected:           {}", report.dead_letters.len());
    for letter in &report.dead_letters {
        println!("  - {} at {}/{}/{}: {}", letter.stage, letter.source_topic, letter.source_partition, letter.source_offset, letter.reason);
    }
    println!("Incidents opened:   {}", report.incidents_opened.len());
    for incident in &report.incidents_opened {
        println!("  - {incident}");
    }
    println!("Incidents gated:    {}", report.incidents_gated);
    println!("Tickets written:    {}", report.tickets_written.len());
    for (status, url) in &report.tickets_written {
        println!("  - {status}: {url}");
    }
    println!("Archive (hot):      {}", report.archive_url);
    println!("Archive (cold):     {}", report.cold_url);
    let outbox = std::fs::canonicalize(&report.outbox_dir).unwrap_or_else(|_| report.outbox_dir.clone());
    println!("Ticket outbox:      {}", outbox.display());
}
