//! Reads one channel's WebSocket. Heartbeats (`channel.metadata`) reset the
//! heartbeat timer, `v2.system.socket_closing` is reported to the session
//! supervisor, and every other message is held for publishing exactly as
//! received, inside a capture record.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::publish_queue::HeldSender;
use super::{topics, DELIVERY};
use crate::stages::ingest::Delivered;

pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Topic of the service's heartbeats and of its responses to a ping.
pub(super) const METADATA_TOPIC: &str = "channel.metadata";
/// Topic of the warning that the service will close the socket soon.
pub(super) const SOCKET_CLOSING_TOPIC: &str = "v2.system.socket_closing";

/// Event that a socket reader sends to the session supervisor.
/// `generation` names the session the socket belongs to.
#[derive(Debug)]
pub(super) enum SocketEvent {
    /// The service announced that it will close the socket.
    SocketClosing { generation: u64 },
    /// No heartbeat arrived within `heartbeat_timeout_ms`.
    HeartbeatMissed { generation: u64 },
    /// The socket closed or failed without being asked to.
    Ended { generation: u64, reason: String },
    /// A notification named this conversation.
    ConversationSeen { conversation_id: String },
}

pub(super) struct Reader {
    pub generation: u64,
    pub channel_id: String,
    pub socket: Socket,
    pub held: HeldSender,
    pub events: mpsc::UnboundedSender<SocketEvent>,
    pub heartbeat_timeout: Duration,
    /// How long a close waits for the server's close reply, reading what
    /// still arrives.
    pub close_timeout: Duration,
    pub follow_conversations: bool,
}

impl Reader {
    /// Reads until the socket ends, or until `close` fires (or its sender
    /// is dropped): then it closes the socket and keeps reading until the
    /// server's close reply, so nothing already sent is lost.
    pub(super) async fn run(mut self, mut close: oneshot::Receiver<()>) {
        let mut heartbeat_deadline = Instant::now() + self.heartbeat_timeout;
        let mut heartbeat_reported = false;
        let mut closing_deadline: Option<Instant> = None;
        let mut socket_closing_reported = false;
        loop {
            let next = tokio::select! {
                _ = &mut close, if closing_deadline.is_none() => {
                    closing_deadline = Some(Instant::now() + self.close_timeout);
                    if let Err(error) = self.socket.close(None).await {
                        tracing::debug!(channel_id = %self.channel_id, error = %error, "Closing the socket failed.");
                        break;
                    }
                    continue;
                }
                _ = sleep_until_some(closing_deadline) => {
                    tracing::warn!(channel_id = %self.channel_id, "Socket closed without the server's close reply in time.");
                    break;
                }
                _ = tokio::time::sleep_until(heartbeat_deadline), if !heartbeat_reported && closing_deadline.is_none() => {
                    heartbeat_reported = true;
                    tracing::warn!(channel_id = %self.channel_id, timeout_ms = self.heartbeat_timeout.as_millis() as u64, "No heartbeat within the timeout; replacing the channel.");
                    let _ = self.events.send(SocketEvent::HeartbeatMissed { generation: self.generation });
                    continue;
                }
                next = self.socket.next() => next,
            };
            let bytes = match next {
                None => {
                    self.report_end(closing_deadline.is_some(), "the connection ended".to_string());
                    break;
                }
                Some(Err(error)) => {
                    self.report_end(closing_deadline.is_some(), format!("reading the socket failed: {error}"));
                    break;
                }
                Some(Ok(Message::Close(frame))) => {
                    let reason = match frame {
                        Some(frame) => format!("the server closed the socket with code {} ({})", frame.code, frame.reason),
                        None => "the server closed the socket".to_string(),
                    };
                    self.report_end(closing_deadline.is_some(), reason);
                    // The next read returns the end of the stream.
                    continue;
                }
                Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                Some(Ok(_)) => continue,
            };
            match self.classify(&bytes) {
                Kind::Heartbeat => {
                    heartbeat_deadline = Instant::now() + self.heartbeat_timeout;
                    heartbeat_reported = false;
                }
                Kind::SocketClosing => {
                    if !socket_closing_reported {
                        socket_closing_reported = true;
                        tracing::info!(channel_id = %self.channel_id, "The notification service announced that it will close the socket; replacing the channel.");
                        let _ = self.events.send(SocketEvent::SocketClosing { generation: self.generation });
                    }
                }
                Kind::Notification(payload) => {
                    let delivered = Delivered {
                        origin: format!("genesys channel {}", self.channel_id),
                        bytes: payload,
                    };
                    if !self.held.hold(delivered).await {
                        tracing::error!(channel_id = %self.channel_id, "The publisher stopped; the socket reader stops too.");
                        break;
                    }
                }
            }
        }
    }

    fn report_end(&self, asked_to_close: bool, reason: String) {
        if asked_to_close {
            return;
        }
        tracing::warn!(channel_id = %self.channel_id, reason = %reason, "Socket ended.");
        let _ = self.events.send(SocketEvent::Ended {
            generation: self.generation,
            reason,
        });
    }

    /// Sorts a message, reports the conversation it names, and wraps a
    /// notification into its capture record.
    fn classify(&self, bytes: &[u8]) -> Kind {
        let Ok(message) = serde_json::from_slice::<Value>(bytes) else {
            tracing::warn!(channel_id = %self.channel_id, bytes = bytes.len(), "Message is not JSON; it is published as received, and the normalize stage will reject it.");
            return Kind::Notification(bytes.to_vec());
        };
        let topic = message.get("topicName").and_then(Value::as_str).unwrap_or_default();
        match topic {
            METADATA_TOPIC => return Kind::Heartbeat,
            SOCKET_CLOSING_TOPIC => return Kind::SocketClosing,
            _ => {}
        }
        if self.follow_conversations {
            if let Some(conversation_id) = topics::conversation_of(topic, message.get("eventBody")) {
                let _ = self.events.send(SocketEvent::ConversationSeen { conversation_id });
            }
        }
        Kind::Notification(capture_record(bytes, Utc::now()))
    }
}

enum Kind {
    Heartbeat,
    SocketClosing,
    Notification(Vec<u8>),
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Wraps a JSON message into a capture record whose `payload` is the
/// message's bytes unchanged:
/// `{"capture":{"delivery":"notification_api","received_at":"..."},"payload":<message>}`.
pub(super) fn capture_record(message: &[u8], received_at: DateTime<Utc>) -> Vec<u8> {
    let capture = serde_json::json!({
        "delivery": DELIVERY,
        "received_at": received_at.to_rfc3339_opts(SecondsFormat::Millis, true),
    });
    let capture = serde_json::to_vec(&capture).unwrap_or_default();
    let mut record = Vec::with_capacity(message.len() + capture.len() + 24);
    record.extend_from_slice(b"{\"capture\":");
    record.extend_from_slice(&capture);
    record.extend_from_slice(b",\"payload\":");
    record.extend_from_slice(message);
    record.push(b'}');
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::ingest::to_raw_event;

    #[test]
    fn capture_record_keeps_message_bytes() {
        let message = br#"{"topicName": "v2.detail.events.conversation.c-1.customer.end",  "eventBody": {"eventTime": 1765551713383, "conversationId": "c-1", "n": 1.50}}"#;
        let received_at = DateTime::parse_from_rfc3339("2025-12-12T15:01:53.761Z").unwrap().with_timezone(&Utc);
        let record = capture_record(message, received_at);
        let parsed: Value = serde_json::from_slice(&record).unwrap();
        assert_eq!(parsed["capture"]["delivery"], "notification_api");
        assert_eq!(parsed["capture"]["received_at"], "2025-12-12T15:01:53.761Z");

        let delivered = Delivered {
            origin: "test".into(),
            bytes: record,
        };
        let (key, raw) = to_raw_event(&delivered, 0);
        assert_eq!(raw.payload, message.to_vec());
        assert_eq!(raw.delivery, "notification_api");
        assert_eq!(raw.source, "genesys");
        assert_eq!(raw.received_at_ms, 1_765_551_713_761);
        assert_eq!(key, "c-1");
    }
}
