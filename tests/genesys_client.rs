//! The Genesys Notification API client against a double of the Genesys
//! Cloud login, notification REST API and channel WebSocket, started on
//! 127.0.0.1 by each test. The client publishes into the in-memory log.
//!
//! The double follows the documented protocol: `POST /oauth/token` (client
//! credentials with basic authentication), `POST
//! /api/v2/notifications/channels` returning `{id, connectUri, expires}`,
//! `PUT /api/v2/notifications/channels/{id}/subscriptions` with
//! `[{"id": topic}]`, and a WebSocket per channel that sends
//! `channel.metadata` heartbeats.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response as HandshakeResponse};
use tokio_tungstenite::tungstenite::Message;

use blameless::codec::Codec;
use blameless::config::Secret;
use blameless::metrics::Metrics;
use blameless::model::{RawEvent, Record, RecordKind};
use blameless::publish::Publisher;
use blameless::sources::genesys_client::{run_with, GenesysClientConfig};
use blameless::topology;
use blameless::transport::memory::{MemoryLog, MemorySink};
use blameless::transport::{decode_record, OutRecord, RecordSink, TopicNames, TransportError};

const CLIENT_ID: &str = "test-client";
const CLIENT_SECRET: &str = "test-secret";
/// `Basic` credentials of CLIENT_ID and CLIENT_SECRET (base64 of
/// `test-client:test-secret`).
const BASIC_CREDENTIALS: &str = "Basic dGVzdC1jbGllbnQ6dGVzdC1zZWNyZXQ=";
const HEARTBEAT: &str = r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#;
/// How long a test waits for the client to reach a state before it fails.
const PATIENCE: Duration = Duration::from_secs(15);

fn fixture(name: &str) -> String {
    let path = format!("{}/../tests/fixtures/genesys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// Returns a presence notification whose event body carries `marker`.
fn notification(marker: &str) -> String {
    format!(r#"{{"topicName":"v2.users.user-1.presence","version":"2","eventBody":{{"marker":"{marker}"}},"metadata":{{"CorrelationId":"{marker}"}}}}"#)
}

/// What the double saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    ChannelCreated(String),
    Subscribed(String),
    Connected(String),
    Disconnected(String),
}

#[derive(Debug, Clone)]
struct TokenRequest {
    authorization: String,
    body: String,
}

#[derive(Debug, Clone)]
struct SubscriptionRequest {
    channel_id: String,
    token: String,
    topics: Vec<String>,
    accepted: bool,
}

/// A text to send on a socket, and who to tell once it is written.
type Outgoing = (String, Option<oneshot::Sender<()>>);

#[derive(Default)]
struct DoubleState {
    steps: Vec<Step>,
    token_requests: Vec<TokenRequest>,
    channel_requests: Vec<(Instant, String)>,
    subscriptions: Vec<SubscriptionRequest>,
    /// Lifetime of the first channel; later ones live an hour.
    first_channel_lifetime: Option<Duration>,
    /// Number of channel creations that still receive HTTP 429.
    rate_limited_channels: u32,
    /// Number of subscription requests that still receive HTTP 401.
    unauthorized_subscriptions: u32,
    /// Sends a notification on the previous channel's socket when a later
    /// channel is subscribed, and one on the new socket when it connects.
    notify_around_switch: bool,
    heartbeats_stopped: HashSet<String>,
    sockets: std::collections::HashMap<String, mpsc::UnboundedSender<Outgoing>>,
}

#[derive(Clone)]
struct Double {
    http: SocketAddr,
    websocket: SocketAddr,
    state: Arc<Mutex<DoubleState>>,
    heartbeat_interval: Duration,
}

impl Double {
    async fn start(configure: impl FnOnce(&mut DoubleState)) -> Double {
        let mut state = DoubleState::default();
        configure(&mut state);
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let websocket_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let double = Double {
            http: http_listener.local_addr().unwrap(),
            websocket: websocket_listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(state)),
            heartbeat_interval: Duration::from_millis(50),
        };
        let router = Router::new()
            .route("/oauth/token", post(issue_token))
            .route("/api/v2/notifications/channels", post(create_channel))
            .route("/api/v2/notifications/channels/{channel_id}/subscriptions", put(replace_subscriptions))
            .with_state(double.clone());
        tokio::spawn(async move { axum::serve(http_listener, router).await.unwrap() });
        let accepting = double.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = websocket_listener.accept().await.unwrap();
                tokio::spawn(accepting.clone().serve_socket(stream));
            }
        });
        double
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DoubleState> {
        self.state.lock().unwrap()
    }

    fn config(&self) -> GenesysClientConfig {
        GenesysClientConfig {
            api_url: format!("http://{}", self.http),
            login_url: format!("http://{}", self.http),
            client_id: CLIENT_ID.into(),
            queue_ids: vec!["queue-a".into()],
            heartbeat_timeout_ms: 2_000,
            rotation_margin_ms: 60_000,
            request_timeout_ms: 5_000,
            reconnect_min_delay_ms: 10,
            reconnect_max_delay_ms: 200,
            publish_retry_min_delay_ms: 5,
            publish_retry_max_delay_ms: 50,
            subscription_update_delay_ms: 20,
            shutdown_grace_ms: 5_000,
            ..GenesysClientConfig::default()
        }
    }

    fn steps(&self) -> Vec<Step> {
        self.state().steps.clone()
    }

    /// Position of `step` in the double's record, failing when it is absent.
    fn position(&self, step: &Step) -> usize {
        let steps = self.steps();
        steps
            .iter()
            .position(|seen| seen == step)
            .unwrap_or_else(|| panic!("{step:?} did not happen; steps: {steps:?}"))
    }

    async fn wait_for_step(&self, step: Step) {
        let what = format!("{step:?}");
        wait_until(&what, || self.steps().contains(&step)).await;
    }

    /// Sends `text` on the socket of `channel_id` and waits until it is
    /// written.
    async fn send(&self, channel_id: &str, text: &str) {
        let socket = self.state().sockets.get(channel_id).cloned().unwrap_or_else(|| panic!("no socket for {channel_id}"));
        let (written, done) = oneshot::channel();
        socket.send((text.to_string(), Some(written))).unwrap();
        done.await.unwrap();
    }

    // The handshake callback's error type belongs to tungstenite.
    #[allow(clippy::result_large_err)]
    async fn serve_socket(self, stream: tokio::net::TcpStream) {
        let path = Arc::new(Mutex::new(String::new()));
        let seen_path = Arc::clone(&path);
        let callback = move |request: &Request, response: HandshakeResponse| -> Result<HandshakeResponse, ErrorResponse> {
            *seen_path.lock().unwrap() = request.uri().path().to_string();
            Ok(response)
        };
        let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };

        let channel_id = path.lock().unwrap().trim_start_matches("/channels/").to_string();
        let (outgoing, mut queued) = mpsc::unbounded_channel::<Outgoing>();
        let greeting = {
            let mut state = self.state();
            state.sockets.insert(channel_id.clone(), outgoing.clone());
            state.steps.push(Step::Connected(channel_id.clone()));
            state.notify_around_switch && channel_id != "channel-1"
        };
        if greeting {
            outgoing.send((notification(&format!("switch-new-{channel_id}")), None)).unwrap();
        }

        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    if self.state().heartbeats_stopped.contains(&channel_id) {
                        continue;
                    }
                    if socket.send(Message::text(HEARTBEAT)).await.is_err() {
                        break;
                    }
                }
                queued = queued.recv() => {
                    let Some((text, written)) = queued else { break };
                    let sent = socket.send(Message::text(text)).await;
                    if let Some(written) = written {
                        let _ = written.send(());
                    }
                    if sent.is_err() {
                        break;
                    }
                }
                incoming = socket.next() => {
                    match incoming {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    }
                }
            }
        }

        let mut state = self.state();
        state.sockets.remove(&channel_id);
        state.steps.push(Step::Disconnected(channel_id));
    }
}

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string()
}

async fn issue_token(State(double): State<Double>, headers: HeaderMap, body: String) -> Json<Value> {
    let mut state = double.state();
    state.token_requests.push(TokenRequest {
        authorization: headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string(),
        body,
    });
    let number = state.token_requests.len();
    Json(json!({"access_token": format!("token-{number}"), "token_type": "bearer", "expires_in": 86400}))
}

async fn create_channel(State(double): State<Double>, headers: HeaderMap) -> Response {
    let mut state = double.state();
    state.channel_requests.push((Instant::now(), bearer(&headers)));
    if state.rate_limited_channels > 0 {
        state.rate_limited_channels -= 1;
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "{\"status\":429}").into_response();
    }
    let number = state.steps.iter().filter(|step| matches!(step, Step::ChannelCreated(_))).count() + 1;
    let id = format!("channel-{number}");
    let lifetime = match (number, state.first_channel_lifetime) {
        (1, Some(lifetime)) => lifetime,
        _ => Duration::from_secs(3600),
    };
    let expires = chrono::Utc::now() + chrono::Duration::from_std(lifetime).unwrap();
    state.steps.push(Step::ChannelCreated(id.clone()));
    Json(json!({
        "id": id,
        "connectUri": format!("ws://{}/channels/{id}", double.websocket),
        "expires": expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }))
    .into_response()
}

async fn replace_subscriptions(
    State(double): State<Double>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Vec<Value>>,
) -> Response {
    let topics: Vec<String> = body.iter().filter_map(|topic| topic["id"].as_str().map(str::to_string)).collect();
    let previous_socket = {
        let mut state = double.state();
        let accepted = state.unauthorized_subscriptions == 0;
        state.subscriptions.push(SubscriptionRequest {
            channel_id: channel_id.clone(),
            token: bearer(&headers),
            topics: topics.clone(),
            accepted,
        });
        if !accepted {
            state.unauthorized_subscriptions -= 1;
            return (StatusCode::UNAUTHORIZED, "{\"status\":401}").into_response();
        }
        let first_subscription = !state.steps.contains(&Step::Subscribed(channel_id.clone()));
        state.steps.push(Step::Subscribed(channel_id.clone()));
        let number: usize = channel_id.trim_start_matches("channel-").parse().unwrap_or(1);
        let previous = format!("channel-{}", number - 1);
        if state.notify_around_switch && number > 1 && first_subscription {
            state.sockets.get(&previous).cloned()
        } else {
            None
        }
    };
    if let Some(socket) = previous_socket {
        // Written to the old socket before the new channel's subscription is
        // confirmed, so it is in flight while both channels are open.
        let (written, done) = oneshot::channel();
        socket.send((notification(&format!("switch-old-{channel_id}")), Some(written))).unwrap();
        let _ = done.await;
    }
    let entities: Vec<Value> = topics.iter().map(|topic| json!({"id": topic})).collect();
    Json(json!({"entities": entities})).into_response()
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A sink that fails its first `failures` sends, as a broker that is down.
struct FlakySink {
    inner: MemorySink,
    failures: AtomicUsize,
    attempts: AtomicUsize,
}

#[async_trait]
impl RecordSink for FlakySink {
    async fn send(&self, records: Vec<OutRecord>) -> Result<(), TransportError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let failed = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .is_ok();
        if failed {
            return Err(TransportError::Kafka {
                operation: "produce",
                reason: "broker unreachable (test)".into(),
            });
        }
        self.inner.send(records).await
    }
}

/// The client running against the double, and the log it publishes into.
struct Running {
    log: Arc<MemoryLog>,
    codec: Codec,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(config: GenesysClientConfig) -> Running {
        Running::start_with(config, |log| Arc::new(MemorySink { log }))
    }

    fn start_with(config: GenesysClientConfig, sink: impl FnOnce(Arc<MemoryLog>) -> Arc<dyn RecordSink>) -> Running {
        // The client's log lines show in the output of a failed test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("blameless=debug"))
            .with_test_writer()
            .try_init();
        let log = MemoryLog::new();
        log.create_topic(topology::RAW_EVENTS, 3);
        log.create_topic(topology::DEAD_LETTER, 1);
        let codec = Codec::single_object().unwrap();
        let publisher = Arc::new(Publisher::new(
            sink(Arc::clone(&log)),
            codec.clone(),
            TopicNames::default(),
            Metrics::new().stage("ingest"),
            900_000,
        ));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(async move { run_with(&config, Secret::new(CLIENT_SECRET), publisher, shutdown).await });
        Running { log, codec, stop, task }
    }

    async fn raw_events(&self) -> Vec<RawEvent> {
        decode_raw_events(&self.log, &self.codec).await
    }

    async fn wait_for_raw_events(&self, count: usize) -> Vec<RawEvent> {
        let started = Instant::now();
        loop {
            let events = self.raw_events().await;
            if events.len() >= count {
                return events;
            }
            assert!(started.elapsed() < PATIENCE, "timed out waiting for {count} raw events; have {}", events.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the client, which first publishes the notifications still in
    /// memory, and returns the raw events.
    async fn stop(self) -> Vec<RawEvent> {
        self.stop.send(true).unwrap();
        let result = tokio::time::timeout(PATIENCE, self.task).await.expect("client stops").unwrap();
        result.expect("client stops without error");
        decode_raw_events(&self.log, &self.codec).await
    }
}

async fn decode_raw_events(log: &MemoryLog, codec: &Codec) -> Vec<RawEvent> {
    let mut events = Vec::new();
    for record in log.records(topology::RAW_EVENTS) {
        match decode_record(codec, RecordKind::Raw, record.payload.as_deref().unwrap()).await.unwrap() {
            Record::Raw(raw) => events.push(raw),
            other => panic!("unexpected record on raw-events: {other:?}"),
        }
    }
    events
}

fn markers(events: &[RawEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| {
            let payload: Value = serde_json::from_slice(&event.payload).ok()?;
            payload["eventBody"]["marker"].as_str().map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn subscribes_configured_topics() {
    let double = Double::start(|_| {}).await;
    let config = GenesysClientConfig {
        queue_ids: vec!["queue-a".into(), "queue-b".into()],
        extra_topics: vec!["v2.users.user-1.conversations".into()],
        ..double.config()
    };
    let client = Running::start(config);
    double.wait_for_step(Step::Connected("channel-1".into())).await;

    {
        let state = double.state();
        let token = &state.token_requests[0];
        assert_eq!(token.authorization, BASIC_CREDENTIALS);
        assert_eq!(token.body, "grant_type=client_credentials");
        assert_eq!(state.channel_requests[0].1, "token-1");
        let subscription = &state.subscriptions[0];
        assert_eq!(subscription.channel_id, "channel-1");
        assert_eq!(subscription.token, "token-1");
        assert_eq!(
            subscription.topics,
            [
                "v2.routing.queues.queue-a.conversations",
                "v2.routing.queues.queue-b.conversations",
                "v2.users.user-1.conversations"
            ]
        );
    }
    client.stop().await;
}

#[tokio::test]
async fn notifications_reach_raw_events_unchanged() {
    let double = Double::start(|_| {}).await;
    let client = Running::start(double.config());
    double.wait_for_step(Step::Connected("channel-1".into())).await;

    let detail = fixture("notification-api-detail-customer-end-voice.json").trim_end().to_string();
    let spaced = r#"{ "topicName" : "v2.users.user-1.presence",   "eventBody": {"marker": "spaced", "n": 1.50} }"#;
    double.send("channel-1", fixture("notification-api-heartbeat.json").trim_end()).await;
    double.send("channel-1", &detail).await;
    double.send("channel-1", HEARTBEAT).await;
    double.send("channel-1", spaced).await;
    client.wait_for_raw_events(2).await;
    let events = client.stop().await;

    assert_eq!(events.len(), 2, "heartbeats must not be published");
    let payloads: Vec<&[u8]> = events.iter().map(|event| event.payload.as_slice()).collect();
    assert!(payloads.contains(&detail.as_bytes()), "detail event changed");
    assert!(payloads.contains(&spaced.as_bytes()), "spaced notification changed");
    for event in &events {
        assert_eq!(event.delivery, "notification_api");
        assert!(event.received_at_ms > 1_700_000_000_000, "{}", event.received_at_ms);
    }
    let detail_event = events.iter().find(|event| event.payload == detail.as_bytes()).unwrap();
    assert_eq!(detail_event.source, "genesys");
}

#[tokio::test]
async fn missed_heartbeats_replace_channel() {
    let double = Double::start(|_| {}).await;
    let config = GenesysClientConfig {
        heartbeat_timeout_ms: 400,
        ..double.config()
    };
    let client = Running::start(config);
    double.wait_for_step(Step::Connected("channel-1".into())).await;
    double.state().heartbeats_stopped.insert("channel-1".into());

    double.wait_for_step(Step::Disconnected("channel-1".into())).await;
    let subscribed = double.position(&Step::Subscribed("channel-2".into()));
    let connected = double.position(&Step::Connected("channel-2".into()));
    let old_closed = double.position(&Step::Disconnected("channel-1".into()));
    assert!(subscribed < connected);
    assert!(connected < old_closed, "old socket closed before the new one connected");
    let topics: Vec<Vec<String>> = double.state().subscriptions.iter().map(|s| s.topics.clone()).collect();
    assert_eq!(topics[0], topics[1], "the new channel has other topics");

    double.send("channel-2", &notification("after-reconnect")).await;
    client.wait_for_raw_events(1).await;
    let events = client.stop().await;
    assert_eq!(markers(&events), ["after-reconnect"]);
}

#[tokio::test]
async fn rotation_overlaps_old_and_new_socket() {
    let double = Double::start(|state| {
        state.first_channel_lifetime = Some(Duration::from_millis(2_000));
        state.notify_around_switch = true;
    })
    .await;
    let config = GenesysClientConfig {
        rotation_margin_ms: 1_500,
        ..double.config()
    };
    let client = Running::start(config);
    double.wait_for_step(Step::Connected("channel-1".into())).await;
    double.send("channel-1", &notification("before")).await;

    double.wait_for_step(Step::Disconnected("channel-1".into())).await;
    let subscribed = double.position(&Step::Subscribed("channel-2".into()));
    let connected = double.position(&Step::Connected("channel-2".into()));
    let old_closed = double.position(&Step::Disconnected("channel-1".into()));
    assert!(subscribed < old_closed, "old socket closed before the new channel was subscribed");
    assert!(connected < old_closed, "old socket closed before the new one connected");

    double.send("channel-2", &notification("after")).await;
    client.wait_for_raw_events(4).await;
    let events = client.stop().await;
    let mut seen = markers(&events);
    seen.sort();
    assert_eq!(seen, ["after", "before", "switch-new-channel-2", "switch-old-channel-2"]);
}

#[tokio::test]
async fn socket_closing_replaces_channel() {
    let double = Double::start(|_| {}).await;
    let client = Running::start(double.config());
    double.wait_for_step(Step::Connected("channel-1".into())).await;
    double.send("channel-1", fixture("notification-api-socket-closing.json").trim_end()).await;

    double.wait_for_step(Step::Disconnected("channel-1".into())).await;
    let connected = double.position(&Step::Connected("channel-2".into()));
    let old_closed = double.position(&Step::Disconnected("channel-1".into()));
    assert!(connected < old_closed, "old socket closed before the new one connected");

    double.send("channel-2", &notification("after-closing")).await;
    client.wait_for_raw_events(1).await;
    let events = client.stop().await;
    assert_eq!(markers(&events), ["after-closing"], "the socket_closing message must not be published");
}

#[tokio::test]
async fn unauthorized_subscription_renews_token_once() {
    let double = Double::start(|state| state.unauthorized_subscriptions = 1).await;
    let client = Running::start(double.config());
    double.wait_for_step(Step::Connected("channel-1".into())).await;

    {
        let state = double.state();
        assert_eq!(state.token_requests.len(), 2);
        let attempts: Vec<(String, bool)> = state.subscriptions.iter().map(|s| (s.token.clone(), s.accepted)).collect();
        assert_eq!(attempts, [("token-1".to_string(), false), ("token-2".to_string(), true)]);
        assert_eq!(state.channel_requests.len(), 1, "the channel was created again");
    }
    client.stop().await;
}

#[tokio::test]
async fn unauthorized_twice_fails_attempt() {
    let double = Double::start(|state| state.unauthorized_subscriptions = 2).await;
    let client = Running::start(double.config());
    double.wait_for_step(Step::Connected("channel-2".into())).await;

    {
        let state = double.state();
        let attempts: Vec<(String, String, bool)> =
            state.subscriptions.iter().map(|s| (s.channel_id.clone(), s.token.clone(), s.accepted)).collect();
        assert_eq!(
            attempts,
            [
                ("channel-1".to_string(), "token-1".to_string(), false),
                ("channel-1".to_string(), "token-2".to_string(), false),
                ("channel-2".to_string(), "token-2".to_string(), true),
            ],
            "a second 401 must end the attempt instead of renewing again"
        );
    }
    client.stop().await;
}

#[tokio::test]
async fn rate_limited_request_waits_retry_after() {
    let double = Double::start(|state| state.rate_limited_channels = 1).await;
    let client = Running::start(double.config());
    double.wait_for_step(Step::Connected("channel-1".into())).await;

    let requests: Vec<Instant> = double.state().channel_requests.iter().map(|(at, _)| *at).collect();
    assert_eq!(requests.len(), 2);
    let waited = requests[1] - requests[0];
    assert!(waited >= Duration::from_millis(950), "retried after {waited:?}, before the Retry-After of 1 second");
    client.stop().await;
}

#[tokio::test]
async fn failed_publish_is_retried() {
    let double = Double::start(|_| {}).await;
    let flaky: Arc<Mutex<Option<Arc<FlakySink>>>> = Arc::default();
    let slot = Arc::clone(&flaky);
    let client = Running::start_with(double.config(), move |log| {
        let sink = Arc::new(FlakySink {
            inner: MemorySink { log },
            failures: AtomicUsize::new(3),
            attempts: AtomicUsize::new(0),
        });
        *slot.lock().unwrap() = Some(Arc::clone(&sink));
        sink
    });
    double.wait_for_step(Step::Connected("channel-1".into())).await;
    double.send("channel-1", &notification("held")).await;

    client.wait_for_raw_events(1).await;
    let events = client.stop().await;
    assert_eq!(markers(&events), ["held"]);
    let sink = flaky.lock().unwrap().clone().unwrap();
    assert_eq!(sink.attempts.load(Ordering::SeqCst), 4, "three failed sends, then one that succeeded");
}

#[tokio::test]
async fn queue_conversation_subscribes_detail_topics() {
    let double = Double::start(|_| {}).await;
    let client = Running::start(double.config());
    double.wait_for_step(Step::Connected("channel-1".into())).await;
    let conversation = r#"{"topicName":"v2.routing.queues.queue-a.conversations","version":"2","eventBody":{"id":"conv-1","participants":[]}}"#;
    double.send("channel-1", conversation).await;

    let expected = "v2.detail.events.conversation.conv-1.flow.outcome";
    wait_until("detail topic subscription", || {
        double.state().subscriptions.iter().any(|s| s.topics.iter().any(|topic| topic == expected))
    })
    .await;
    {
        let state = double.state();
        let last = state.subscriptions.last().unwrap();
        assert_eq!(last.channel_id, "channel-1");
        assert_eq!(last.topics[0], "v2.routing.queues.queue-a.conversations", "the whole list is replaced");
        for event in ["customer.start", "user.start", "user.end", "acw", "acd.end", "flow.end", "flow.outcome"] {
            assert!(last.topics.contains(&format!("v2.detail.events.conversation.conv-1.{event}")), "{event}");
        }
        let counted_twice = "v2.detail.events.conversation.conv-1.customer.end".to_string();
        assert!(!last.topics.contains(&counted_twice), "customer.end would count the call twice");
    }
    let events = client.stop().await;
    assert_eq!(events.len(), 1, "the conversation notification is published too");
}
