//! The topics a channel subscribes to: the configured queue and extra
//! topics, and the detail event topics of the conversations being followed.
//!
//! Genesys Cloud delivers analytics detail events over a WebSocket only per
//! conversation (`v2.detail.events.conversation.{id}.{event}`); the bulk
//! form exists for EventBridge alone. So the client learns conversation ids
//! from conversation notifications (`v2.routing.queues.{id}.conversations`
//! and the like, whose event body is the conversation) and subscribes their
//! detail events while they are active.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::GenesysClientConfig;

const DETAIL_TOPIC_PREFIX: &str = "v2.detail.events.conversation.";

/// Returns whether `id` can stand in a topic name: ASCII letters, digits and
/// dashes, at most 64 characters.
pub(super) fn is_topic_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Returns whether `topic` looks like a notification topic: `v2.` followed
/// by dot-separated parts of letters, digits, dashes and underscores.
pub(super) fn is_topic_name(topic: &str) -> bool {
    topic.starts_with("v2.")
        && topic
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// Returns whether `event` looks like a detail event name such as
/// `customer.end`: lower-case dot-separated words.
pub(super) fn is_detail_event(event: &str) -> bool {
    !event.is_empty() && event.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Returns the configured topics, queues first, without repeats.
pub(super) fn base_topics(config: &GenesysClientConfig) -> Vec<String> {
    let queues = config.queue_ids.iter().map(|id| format!("v2.routing.queues.{id}.conversations"));
    let mut topics: Vec<String> = Vec::new();
    for topic in queues.chain(config.extra_topics.iter().cloned()) {
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    topics
}

/// Returns the conversation that a notification is about, when its topic is
/// a conversation topic: the id inside a detail event topic, or the event
/// body's `id` for a topic with a `conversations` part.
pub(super) fn conversation_of(topic: &str, body: Option<&Value>) -> Option<String> {
    let id = if let Some(rest) = topic.strip_prefix(DETAIL_TOPIC_PREFIX) {
        rest.split('.').next()?.to_string()
    } else if topic.split('.').any(|part| part == "conversations") {
        body?.get("id")?.as_str()?.to_string()
    } else {
        return None;
    };
    is_topic_id(&id).then_some(id)
}

/// The subscription list of a channel.
pub(super) struct TopicPlan {
    base: Vec<String>,
    detail_events: Vec<String>,
    follow_conversations: bool,
    max_topics: usize,
    idle: Duration,
    /// Followed conversations by id: when each was first and last seen.
    conversations: HashMap<String, (Instant, Instant)>,
}

impl TopicPlan {
    pub(super) fn new(config: &GenesysClientConfig) -> TopicPlan {
        TopicPlan {
            base: base_topics(config),
            detail_events: config.detail_events.clone(),
            follow_conversations: config.follow_conversations,
            max_topics: config.max_topics_per_channel,
            idle: Duration::from_millis(config.conversation_idle_ms),
            conversations: HashMap::new(),
        }
    }

    /// Returns every topic to subscribe: the configured ones, then the
    /// detail events of each followed conversation in the order they were
    /// first seen.
    pub(super) fn topics(&self) -> Vec<String> {
        let mut followed: Vec<(&String, &(Instant, Instant))> = self.conversations.iter().collect();
        followed.sort_by_key(|(id, (first_seen, _))| (*first_seen, (*id).clone()));
        let mut topics = self.base.clone();
        for (id, _) in followed {
            for event in &self.detail_events {
                topics.push(format!("{DETAIL_TOPIC_PREFIX}{id}.{event}"));
            }
        }
        topics
    }

    /// Maximum number of conversations followed at once within the topic limit.
    fn capacity(&self) -> usize {
        if self.detail_events.is_empty() {
            return 0;
        }
        self.max_topics.saturating_sub(self.base.len()) / self.detail_events.len()
    }

    /// Records that `conversation` was seen at `now`, and returns true when
    /// it is newly followed, so the subscription list changed. At the topic
    /// limit the conversation seen longest ago is dropped first.
    pub(super) fn see(&mut self, conversation: &str, now: Instant) -> bool {
        if !self.follow_conversations {
            return false;
        }
        if let Some((_, last_seen)) = self.conversations.get_mut(conversation) {
            *last_seen = now;
            return false;
        }
        let capacity = self.capacity();
        if capacity == 0 {
            return false;
        }
        if self.conversations.len() >= capacity {
            let oldest = self
                .conversations
                .iter()
                .min_by_key(|(id, (_, last_seen))| (*last_seen, (*id).clone()))
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.conversations.remove(&oldest);
                tracing::warn!(
                    conversation_id = %oldest,
                    followed = capacity,
                    max_topics_per_channel = self.max_topics,
                    "Topic limit reached: the conversation seen longest ago is no longer followed."
                );
            }
        }
        self.conversations.insert(conversation.to_string(), (now, now));
        true
    }

    /// Drops conversations not seen for `conversation_idle_ms`, and returns
    /// true when any was dropped.
    pub(super) fn expire(&mut self, now: Instant) -> bool {
        let before = self.conversations.len();
        let idle = self.idle;
        self.conversations
            .retain(|_, (_, last_seen)| now.saturating_duration_since(*last_seen) < idle);
        self.conversations.len() != before
    }

    /// When the next followed conversation becomes idle, if any is followed.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.conversations.values().map(|(_, last_seen)| *last_seen + self.idle).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> GenesysClientConfig {
        GenesysClientConfig {
            queue_ids: vec!["q1".into(), "q2".into()],
            extra_topics: vec!["v2.users.u1.conversations".into(), "v2.routing.queues.q1.conversations".into()],
            detail_events: vec!["customer.end".into(), "acw".into()],
            ..GenesysClientConfig::default()
        }
    }

    #[test]
    fn base_topics_name_queues_then_extras() {
        assert_eq!(
            base_topics(&config()),
            [
                "v2.routing.queues.q1.conversations",
                "v2.routing.queues.q2.conversations",
                "v2.users.u1.conversations"
            ]
        );
    }

    #[test]
    fn conversation_comes_from_body_or_topic() {
        let body = json!({"id": "c-1", "participants": []});
        assert_eq!(conversation_of("v2.routing.queues.q1.conversations", Some(&body)).as_deref(), Some("c-1"));
        assert_eq!(conversation_of("v2.routing.queues.q1.conversations.calls", Some(&body)).as_deref(), Some("c-1"));
        assert_eq!(conversation_of("v2.users.u1.conversations", Some(&body)).as_deref(), Some("c-1"));
        assert_eq!(
            conversation_of("v2.detail.events.conversation.c-2.customer.end", Some(&body)).as_deref(),
            Some("c-2")
        );
        assert_eq!(conversation_of("v2.users.u1.presence", Some(&body)), None);
        let injected = json!({"id": "c-1.customer.end,v2.users.x"});
        assert_eq!(conversation_of("v2.routing.queues.q1.conversations", Some(&injected)), None);
    }

    #[test]
    fn followed_conversation_adds_detail_topics() {
        let mut plan = TopicPlan::new(&config());
        let now = Instant::now();
        assert!(plan.see("c-1", now));
        assert!(!plan.see("c-1", now));
        let topics = plan.topics();
        assert_eq!(topics.len(), 5);
        assert_eq!(topics[3], "v2.detail.events.conversation.c-1.customer.end");
        assert_eq!(topics[4], "v2.detail.events.conversation.c-1.acw");
    }

    #[test]
    fn topic_limit_drops_least_recent() {
        let mut plan = TopicPlan::new(&GenesysClientConfig {
            max_topics_per_channel: 7,
            ..config()
        });
        let start = Instant::now();
        assert!(plan.see("c-1", start));
        assert!(plan.see("c-2", start + Duration::from_millis(1)));
        plan.see("c-1", start + Duration::from_millis(2));
        assert!(plan.see("c-3", start + Duration::from_millis(3)));
        let topics = plan.topics().join(" ");
        assert!(topics.contains("c-1.acw"), "{topics}");
        assert!(!topics.contains("c-2"), "{topics}");
        assert!(topics.contains("c-3.acw"), "{topics}");
        assert!(plan.topics().len() <= 7);
    }

    #[test]
    fn idle_conversations_expire() {
        let mut plan = TopicPlan::new(&GenesysClientConfig {
            conversation_idle_ms: 100,
            ..config()
        });
        let start = Instant::now();
        plan.see("c-1", start);
        plan.see("c-2", start + Duration::from_millis(50));
        assert_eq!(plan.next_expiry(), Some(start + Duration::from_millis(100)));
        assert!(plan.expire(start + Duration::from_millis(120)));
        let topics = plan.topics().join(" ");
        assert!(!topics.contains("c-1"), "{topics}");
        assert!(topics.contains("c-2"), "{topics}");
        assert!(!plan.expire(start + Duration::from_millis(130)));
    }

    #[test]
    fn following_off_keeps_base_topics() {
        let mut plan = TopicPlan::new(&GenesysClientConfig {
            follow_conversations: false,
            ..config()
        });
        assert!(!plan.see("c-1", Instant::now()));
        assert_eq!(plan.topics().len(), 3);
    }
}
