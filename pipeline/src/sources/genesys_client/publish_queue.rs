//! Notifications read from a socket wait here until `Publisher::publish`
//! returned Ok for them. The WebSocket has no acknowledgement, so a failed
//! publish is retried with backoff rather than dropped, and the held
//! notifications stay in memory meanwhile. When `max_held_messages` are
//! held, the socket readers wait, which stops reading the sockets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Settings;
use crate::publish::Publisher;
use crate::stages::ingest::Delivered;

/// Maximum number of notifications per publish call.
const BATCH: usize = 500;

/// The sending side, cloned into every socket reader.
#[derive(Clone)]
pub(super) struct HeldSender {
    sender: mpsc::Sender<Delivered>,
    held: Arc<AtomicUsize>,
}

impl HeldSender {
    /// Holds `delivered` until it is published, waiting while the queue is
    /// full. Returns false when the publisher stopped.
    pub(super) async fn hold(&self, delivered: Delivered) -> bool {
        self.held.fetch_add(1, Ordering::SeqCst);
        if self.sender.send(delivered).await.is_err() {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// Creates the queue and returns its sending side, the number held (queued
/// or being published), and the publishing task's future.
pub(super) fn queue(
    publisher: Arc<Publisher>,
    settings: &Settings,
) -> (HeldSender, Arc<AtomicUsize>, impl std::future::Future<Output = ()>) {
    let (sender, receiver) = mpsc::channel(settings.max_held_messages);
    let held = Arc::new(AtomicUsize::new(0));
    let retry = RetryPolicy {
        min_delay: settings.publish_retry_min_delay,
        max_delay: settings.publish_retry_max_delay,
        alarm_after: settings.publish_alarm_after,
    };
    let task = publish_held(publisher, receiver, Arc::clone(&held), retry);
    (HeldSender { sender, held: Arc::clone(&held) }, held, task)
}

struct RetryPolicy {
    min_delay: Duration,
    max_delay: Duration,
    alarm_after: Duration,
}

/// Publishes held notifications in arrival order until every sender is
/// dropped and the queue is empty.
async fn publish_held(publisher: Arc<Publisher>, mut receiver: mpsc::Receiver<Delivered>, held: Arc<AtomicUsize>, retry: RetryPolicy) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(delivered) => batch.push(delivered),
                Err(_) => break,
            }
        }
        publish_with_retry(&publisher, &batch, &held, &retry).await;
        held.fetch_sub(batch.len(), Ordering::SeqCst);
    }
}

async fn publish_with_retry(publisher: &Publisher, batch: &[Delivered], held: &AtomicUsize, retry: &RetryPolicy) {
    let mut delays = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(retry.min_delay)
            .with_max_delay(retry.max_delay)
            .with_jitter()
            .without_max_times(),
    );
    let mut failing_since: Option<Instant> = None;
    let mut last_alarm: Option<Instant> = None;
    let mut attempts = 0u64;
    loop {
        match publisher.publish(batch).await {
            Ok(published) => {
                if let Some(since) = failing_since {
                    tracing::info!(
                        notifications = batch.len(),
                        attempts,
                        failing_for_ms = since.elapsed().as_millis() as u64,
                        "Held notifications published after failed attempts."
                    );
                }
                if !published.rejected.is_empty() {
                    tracing::warn!(rejected = published.rejected.len(), "Notifications above the size limit went to the dead-letter topic.");
                }
                return;
            }
            Err(error) => {
                attempts += 1;
                let since = *failing_since.get_or_insert_with(Instant::now);
                let held_now = held.load(Ordering::SeqCst);
                let alarm_due = since.elapsed() >= retry.alarm_after
                    && last_alarm.is_none_or(|at| at.elapsed() >= retry.alarm_after);
                if alarm_due {
                    last_alarm = Some(Instant::now());
                    tracing::error!(
                        held = held_now,
                        attempts,
                        failing_for_ms = since.elapsed().as_millis() as u64,
                        error = %error,
                        "Publishing to raw-events keeps failing; the notifications are held in memory and retried."
                    );
                } else if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(held = held_now, attempts, error = %error, "Publishing to raw-events failed; retrying with backoff.");
                }
                let delay = delays.next().unwrap_or(retry.max_delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}
