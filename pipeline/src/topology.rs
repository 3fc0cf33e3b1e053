//! The topology of topology/topology.toml: topics with their partitions,
//! keys, retention and cleanup policy, and the stages with their consumer
//! groups. `blameless topology apply` makes a cluster match it.

use serde::Deserialize;

pub const RAW_EVENTS: &str = "raw-events";
pub const NORMALIZED: &str = "normalized";
pub const MASKED: &str = "masked";
pub const WINDOWED_INCIDENTS: &str = "windowed-incidents";
pub const TICKETS: &str = "tickets";
pub const DEAD_LETTER: &str = "dead-letter";
/// Masked events that arrived after the window's allowed lateness, so that
/// no event is dropped without a record.
pub const LATE_EVENTS: &str = "late-events";
/// Compacted: the last polled interval of each polling source and key.
pub const SOURCE_CURSORS: &str = "source-cursors";

/// The topology shipped with this build.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../topology/topology.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub topics: Vec<TopicSpec>,
    pub stages: Vec<StageSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub key: String,
    pub schema: String,
    pub cleanup_policy: String,
    pub retention_ms: i64,
    #[serde(default)]
    pub personal_data: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub name: String,
    pub consumer_group: String,
    #[serde(default)]
    pub input: Option<String>,
    pub outputs: Vec<String>,
}

impl Topology {
    pub fn parse(text: &str) -> Result<Topology, String> {
        let topology: Topology = toml::from_str(text).map_err(|e| format!("topology does not parse: {e}"))?;
        for topic in &topology.topics {
            if topic.partitions < 1 {
                return Err(format!("topic {} has {} partitions; set 1 or more", topic.name, topic.partitions));
            }
            if crate::model::RecordKind::from_schema_file(&topic.schema).is_none() {
                return Err(format!("topic {} names schema {}, which is not in schemas/", topic.name, topic.schema));
            }
        }
        Ok(topology)
    }

    pub fn load_default() -> Topology {
        Topology::parse(DEFAULT_TOPOLOGY).expect("topology/topology.toml is checked by the topology tests")
    }

    pub fn topic(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == name)
    }

    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }
}

impl TopicSpec {
    /// Returns the topic configs that Kafka keeps for this topic.
    pub fn configs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cleanup.policy", self.cleanup_policy.clone()),
            ("retention.ms", self.retention_ms.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_topology_parses() {
        let topology = Topology::load_default();
        for name in [RAW_EVENTS, NORMALIZED, MASKED, WINDOWED_INCIDENTS, TICKETS, DEAD_LETTER, LATE_EVENTS, SOURCE_CURSORS] {
            assert!(topology.topic(name).is_some(), "{name}");
        }
        for stage in ["ingest", "normalize", "mask", "window", "ticket", "archive"] {
            assert!(topology.stage(stage).is_some(), "{stage}");
        }
    }

    #[test]
    fn zero_partitions_is_rejected() {
        let text = DEFAULT_TOPOLOGY.replacen("partitions = 6", "partitions = 0", 1);
        assert!(Topology::parse(&text).unwrap_err().contains("0 partitions"));
    }
}
