//! Keeps one channel open and subscribed. A session is one channel and its
//! socket reader. The supervisor replaces the session before the channel
//! expires, when the service announces a socket closing, or when heartbeats
//! stop: it creates a new channel, subscribes it, connects its socket, and
//! only then closes the old socket, so that the two overlap and nothing sent
//! meanwhile is lost. When a socket ends on its own there is nothing to
//! overlap with, and the supervisor reconnects with backoff and jitter.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::api::NotificationsApi;
use super::auth::TokenSource;
use super::publish_queue::{self, HeldSender};
use super::socket::{Reader, SocketEvent};
use super::topics::TopicPlan;
use super::Settings;
use crate::publish::Publisher;

/// How long closing an old socket waits for the server's close reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// An open channel with its socket reader.
struct Session {
    generation: u64,
    channel_id: String,
    /// When the channel is replaced ahead of its expiry.
    rotate_at: Instant,
    close: oneshot::Sender<()>,
    reader: JoinHandle<()>,
}

impl Session {
    /// Closes the socket and waits until its reader has handed over every
    /// message it read.
    async fn close(self) {
        let _ = self.close.send(());
        if let Err(error) = self.reader.await {
            tracing::error!(channel_id = %self.channel_id, error = %error, "Socket reader failed.");
        }
        tracing::info!(channel_id = %self.channel_id, generation = self.generation, "Old socket closed.");
    }
}

/// Reason for replacing the current session.
#[derive(Clone, Copy, Debug)]
enum Replace {
    Start,
    Rotation,
    SocketClosing,
    HeartbeatMissed,
    Ended,
}

impl Replace {
    fn as_str(self) -> &'static str {
        match self {
            Replace::Start => "start",
            Replace::Rotation => "rotation before expiry",
            Replace::SocketClosing => "socket closing announced",
            Replace::HeartbeatMissed => "heartbeat missed",
            Replace::Ended => "socket ended",
        }
    }
}

pub(super) struct Supervisor {
    settings: Settings,
    plan: TopicPlan,
    api: NotificationsApi,
    publisher: Arc<Publisher>,
}

impl Supervisor {
    pub(super) fn new(settings: Settings, plan: TopicPlan, publisher: Arc<Publisher>) -> anyhow::Result<Supervisor> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .build()
            .context("could not build the HTTP client")?;
        let tokens = Arc::new(TokenSource::new(
            http.clone(),
            &settings.login_url,
            &settings.client_id,
            settings.client_secret.clone(),
            settings.token_refresh_margin,
            settings.reconnect_min_delay,
        ));
        let api = NotificationsApi::new(http, &settings.api_url, tokens, settings.reconnect_min_delay);
        Ok(Supervisor {
            settings,
            plan,
            api,
            publisher,
        })
    }

    /// Runs sessions until `shutdown` turns true, then closes the socket and
    /// publishes what is held, waiting up to `shutdown_grace_ms`.
    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let (held, held_count, publishing) = publish_queue::queue(Arc::clone(&self.publisher), &self.settings);
        let publishing = tokio::spawn(publishing);
        let (events_sender, mut events) = mpsc::unbounded_channel();

        let mut current: Option<Session> = None;
        let mut replace: Option<Replace> = Some(Replace::Start);
        let mut generation = 0u64;
        let mut delays = self.reconnect_delays();
        let mut update_at: Option<Instant> = None;

        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Some(reason) = replace {
                generation += 1;
                let opened = tokio::select! {
                    _ = shutdown.changed() => continue,
                    opened = self.open(generation, &held, &events_sender) => opened,
                };
                match opened {
                    Ok(session) => {
                        tracing::info!(
                            channel_id = %session.channel_id,
                            generation,
                            reason = reason.as_str(),
                            "Channel subscribed and connected."
                        );
                        if let Some(old) = current.replace(session) {
                            old.close().await;
                        }
                        replace = None;
                        update_at = None;
                        delays = self.reconnect_delays();
                    }
                    Err(error) => {
                        let delay = delays.next().unwrap_or(self.settings.reconnect_max_delay);
                        tracing::warn!(
                            error = format!("{error:#}"),
                            reason = reason.as_str(),
                            retry_in_ms = delay.as_millis() as u64,
                            "Could not open a notification channel; retrying."
                        );
                        tokio::select! {
                            _ = shutdown.changed() => {}
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
                continue;
            }

            let Some(session) = current.as_ref() else {
                replace = Some(Replace::Ended);
                continue;
            };
            let expiry = self.plan.next_expiry().map(Instant::from_std);
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep_until(session.rotate_at) => {
                    replace = Some(Replace::Rotation);
                }
                _ = sleep_until_some(update_at) => {
                    update_at = None;
                    self.update_subscriptions(session, &mut update_at).await;
                }
                _ = sleep_until_some(expiry) => {
                    if self.plan.expire(std::time::Instant::now()) && update_at.is_none() {
                        update_at = Some(Instant::now() + self.settings.subscription_update_delay);
                    }
                }
                event = events.recv() => {
                    let Some(event) = event else { continue };
                    match event {
                        SocketEvent::ConversationSeen { conversation_id } => {
                            let added = self.plan.see(&conversation_id, std::time::Instant::now());
                            if added && update_at.is_none() {
                                update_at = Some(Instant::now() + self.settings.subscription_update_delay);
                            }
                        }
                        SocketEvent::SocketClosing { generation: from } if from == session.generation => {
                            replace = Some(Replace::SocketClosing);
                        }
                        SocketEvent::HeartbeatMissed { generation: from } if from == session.generation => {
                            replace = Some(Replace::HeartbeatMissed);
                        }
                        SocketEvent::Ended { generation: from, reason } if from == session.generation => {
                            tracing::warn!(
                                channel_id = %session.channel_id,
                                reason = %reason,
                                "Socket ended without overlap; notifications sent until the new channel is subscribed are not delivered."
                            );
                            if let Some(ended) = current.take() {
                                ended.close().await;
                            }
                            replace = Some(Replace::Ended);
                        }
                        _ => {}
                    }
                }
            }
        }

        if let Some(session) = current.take() {
            session.close().await;
        }
        drop(events);
        drop(held);
        tracing::info!(held = held_count.load(Ordering::SeqCst), "Stopping: publishing held notifications.");
        match tokio::time::timeout(self.settings.shutdown_grace, publishing).await {
            Ok(Ok(())) => {
                tracing::info!("Genesys Notification API client stopped.");
                Ok(())
            }
            Ok(Err(error)) => anyhow::bail!("the publishing task failed: {error}"),
            Err(_) => {
                let lost = held_count.load(Ordering::SeqCst);
                tracing::error!(held = lost, grace_ms = self.settings.shutdown_grace.as_millis() as u64, "Held notifications could not be published before the stop grace ran out and are lost.");
                anyhow::bail!(
                    "{lost} notifications could not be published to raw-events within sources.genesys.shutdown_grace_ms ({} ms) and are lost",
                    self.settings.shutdown_grace.as_millis()
                )
            }
        }
    }

    fn reconnect_delays(&self) -> backon::ExponentialBackoff {
        backon::BackoffBuilder::build(
            backon::ExponentialBuilder::default()
                .with_min_delay(self.settings.reconnect_min_delay)
                .with_max_delay(self.settings.reconnect_max_delay)
                .with_jitter()
                .without_max_times(),
        )
    }

    /// Creates a channel, subscribes it to every topic of the plan, connects
    /// its socket and starts the reader.
    async fn open(
        &self,
        generation: u64,
        held: &HeldSender,
        events: &mpsc::UnboundedSender<SocketEvent>,
    ) -> anyhow::Result<Session> {
        let channel = self.api.create_channel().await?;
        let topics = self.plan.topics();
        self.api.replace_subscriptions(&channel.id, &topics).await?;
        tracing::info!(channel_id = %channel.id, topics = topics.len(), "Channel created and subscribed.");

        let (socket, _) = tokio::time::timeout(self.settings.request_timeout, tokio_tungstenite::connect_async(channel.connect_uri.as_str()))
            .await
            .map_err(|_| anyhow::anyhow!("connecting the socket of channel {} timed out", channel.id))?
            .with_context(|| format!("could not connect the socket of channel {}", channel.id))?;

        // NOTE: channels are reported to stop when the token they were
        // created with expires, so the earlier of the two bounds the channel.
        let token_expiry = self.api.token_expiry().await?;
        let rotate_at = rotation_time(std::time::Instant::now(), channel.expires_at.min(token_expiry), self.settings.rotation_margin);

        let (close, close_receiver) = oneshot::channel();
        let reader = Reader {
            generation,
            channel_id: channel.id.clone(),
            socket,
            held: held.clone(),
            events: events.clone(),
            heartbeat_timeout: self.settings.heartbeat_timeout,
            close_timeout: CLOSE_TIMEOUT,
            follow_conversations: self.settings.follow_conversations,
        };
        let reader = tokio::spawn(reader.run(close_receiver));
        Ok(Session {
            generation,
            channel_id: channel.id,
            rotate_at: Instant::from_std(rotate_at),
            close,
            reader,
        })
    }

    /// Replaces the current channel's subscriptions with the plan's topics.
    /// On failure it tries again after `subscription_update_delay_ms`.
    async fn update_subscriptions(&self, session: &Session, update_at: &mut Option<Instant>) {
        let topics = self.plan.topics();
        match self.api.replace_subscriptions(&session.channel_id, &topics).await {
            Ok(()) => tracing::debug!(channel_id = %session.channel_id, topics = topics.len(), "Subscriptions updated."),
            Err(error) => {
                tracing::warn!(channel_id = %session.channel_id, error = format!("{error:#}"), "Could not update the subscriptions; retrying.");
                *update_at = Some(Instant::now() + self.settings.subscription_update_delay.max(self.settings.reconnect_min_delay));
            }
        }
    }
}

/// Returns when to replace a channel that must go by `deadline`:
/// `margin` before it, but no earlier than halfway from `now`, so a margin
/// longer than the lifetime does not replace channels in a loop.
fn rotation_time(now: std::time::Instant, deadline: std::time::Instant, margin: Duration) -> std::time::Instant {
    let lifetime = deadline.saturating_duration_since(now);
    now + lifetime.saturating_sub(margin).max(lifetime / 2)
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_comes_margin_before_deadline() {
        let now = std::time::Instant::now();
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3_600);
        assert_eq!(rotation_time(now, now + day, hour), now + day - hour);
    }

    #[test]
    fn rotation_waits_half_lifetime_at_least() {
        let now = std::time::Instant::now();
        let lifetime = Duration::from_secs(60);
        assert_eq!(rotation_time(now, now + lifetime, Duration::from_secs(3_600)), now + lifetime / 2);
        assert_eq!(rotation_time(now, now, Duration::from_secs(1)), now);
    }
}
