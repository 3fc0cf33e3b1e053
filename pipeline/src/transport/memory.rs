//! The in-memory partitioned log: topics with partitions and offsets, and
//! consumer groups whose commits survive a consumer. It replaces Kafka
//! in the embedded mode and in unit tests, with the same delivery contract.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{InRecord, OutRecord, RecordSink, RecordSource, TransportError};

#[derive(Debug, Clone)]
struct StoredRecord {
    key: String,
    payload: Vec<u8>,
    /// Position in the log's global append order, across topics and
    /// partitions.
    sequence: u64,
    timestamp_ms: Option<i64>,
}

#[derive(Default)]
struct LogState {
    topics: HashMap<String, Vec<Vec<StoredRecord>>>,
    /// Committed next offset and done mark (see `done_metadata`) by group,
    /// topic and partition.
    commits: HashMap<(String, String, i32), (i64, i64)>,
    next_sequence: u64,
}

/// A set of topics held in memory.
#[derive(Default)]
pub struct MemoryLog {
    state: Mutex<LogState>,
    appended: tokio::sync::Notify,
}

impl MemoryLog {
    pub fn new() -> Arc<MemoryLog> {
        Arc::new(MemoryLog::default())
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock is a bug in this module; the log
        // stays consistent because every update is a single push or insert.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates `topic` with `partitions` partitions; an existing topic stays.
    pub fn create_topic(&self, topic: &str, partitions: usize) {
        let mut state = self.lock();
        state
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| vec![Vec::new(); partitions.max(1)]);
    }

    /// Appends a record to the partition its key hashes to, and returns the
    /// partition and offset.
    pub fn append(&self, topic: &str, key: &str, payload: Vec<u8>) -> Result<(i32, i64), TransportError> {
        self.append_at(topic, key, payload, None)
    }

    /// Appends a record with a timestamp, as a producer that sets one does.
    pub fn append_at(
        &self,
        topic: &str,
        key: &str,
        payload: Vec<u8>,
        timestamp_ms: Option<i64>,
    ) -> Result<(i32, i64), TransportError> {
        let mut state = self.lock();
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let partitions = state.topics.get_mut(topic).ok_or_else(|| TransportError::Kafka {
            operation: "produce",
            reason: format!("topic {topic} does not exist in the in-memory log"),
        })?;
        let partition = partition_for_key(key, partitions.len());
        let log = &mut partitions[partition];
        log.push(StoredRecord {
            key: key.to_string(),
            payload,
            sequence,
            timestamp_ms,
        });
        let offset = (log.len() - 1) as i64;
        drop(state);
        self.appended.notify_waiters();
        Ok((partition as i32, offset))
    }

    pub fn partition_count(&self, topic: &str) -> usize {
        self.lock().topics.get(topic).map_or(0, Vec::len)
    }

    /// Returns the next offset of each partition of `topic`.
    pub fn end_offsets(&self, topic: &str) -> Vec<i64> {
        self.lock()
            .topics
            .get(topic)
            .map(|partitions| partitions.iter().map(|p| p.len() as i64).collect())
            .unwrap_or_default()
    }

    /// Returns every record of `topic`, partition by partition.
    pub fn records(&self, topic: &str) -> Vec<InRecord> {
        let state = self.lock();
        let Some(partitions) = state.topics.get(topic) else {
            return Vec::new();
        };
        let mut all = Vec::new();
        for (partition, log) in partitions.iter().enumerate() {
            for (offset, stored) in log.iter().enumerate() {
                all.push(to_in_record(topic, partition, offset, stored));
            }
        }
        all
    }

    /// Returns the committed next offset of a consumer group on a partition.
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> i64 {
        self.committed_with_done(group, topic, partition).0
    }

    /// Returns the committed next offset and the done mark of a consumer
    /// group on a partition.
    fn committed_with_done(&self, group: &str, topic: &str, partition: i32) -> (i64, i64) {
        self.lock()
            .commits
            .get(&(group.to_string(), topic.to_string(), partition))
            .copied()
            .unwrap_or((0, 0))
    }

    /// Creates a consumer in `group` owning every partition of `topic`, starting at
    /// the group's committed offsets.
    pub fn consumer(self: &Arc<Self>, group: &str, topic: &str) -> MemoryConsumer {
        let partitions = self.partition_count(topic);
        let (positions, done): (Vec<i64>, Vec<i64>) = (0..partitions)
            .map(|p| self.committed_with_done(group, topic, p as i32))
            .unzip();
        MemoryConsumer {
            log: Arc::clone(self),
            group: group.to_string(),
            topic: topic.to_string(),
            positions,
            done,
            done_caps: HashMap::new(),
        }
    }
}

fn to_in_record(topic: &str, partition: usize, offset: usize, stored: &StoredRecord) -> InRecord {
    InRecord {
        topic: topic.to_string(),
        partition: partition as i32,
        offset: offset as i64,
        key: Some(stored.key.as_bytes().to_vec()),
        payload: Some(stored.payload.clone()),
        timestamp_ms: stored.timestamp_ms,
        replay: false,
    }
}

/// Kafka's default partitioner for keyed records: murmur2 of the key, made
/// positive, modulo the partition count. Keys land where a Java producer
/// would put them.
pub fn partition_for_key(key: &str, partitions: usize) -> usize {
    let hash = murmur2(key.as_bytes()) & 0x7fff_ffff;
    hash as usize % partitions.max(1)
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The only member of its consumer group: it owns every partition.
pub struct MemoryConsumer {
    log: Arc<MemoryLog>,
    group: String,
    topic: String,
    positions: Vec<i64>,
    /// Offsets below this mark, by partition, were processed before this
    /// consumer started: records read again below it are replays.
    done: Vec<i64>,
    /// Caps of the next done marks, by partition (see `cap_done`).
    done_caps: HashMap<i32, i64>,
}

impl MemoryConsumer {
    fn read_available(&mut self, max: usize) -> Vec<InRecord> {
        let state = self.log.lock();
        let Some(partitions) = state.topics.get(&self.topic) else {
            return Vec::new();
        };
        let mut batch = Vec::new();
        // Records leave in the order they were appended across partitions,
        // as from a consumer that keeps up with live traffic. Partitions that
        // each hold part of a time-ordered input then stay in time order
        // together, however unevenly the keys spread.
        while batch.len() < max {
            let next = (0..partitions.len())
                .filter_map(|partition| {
                    let offset = self.positions[partition] as usize;
                    partitions[partition].get(offset).map(|stored| (stored.sequence, partition, offset))
                })
                .min();
            let Some((_, partition, offset)) = next else { break };
            let mut record = to_in_record(&self.topic, partition, offset, &partitions[partition][offset]);
            record.replay = (offset as i64) < self.done[partition];
            batch.push(record);
            self.positions[partition] += 1;
        }
        batch
    }
}

#[async_trait]
impl RecordSource for MemoryConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<InRecord>, TransportError> {
        let log = Arc::clone(&self.log);
        let appended = log.appended.notified();
        let batch = self.read_available(max);
        if !batch.is_empty() {
            return Ok(batch);
        }
        let _ = tokio::time::timeout(wait, appended).await;
        Ok(self.read_available(max))
    }

    async fn commit(&mut self, positions: &[(String, i32, i64)]) -> Result<(), TransportError> {
        let mut state = self.log.lock();
        for (topic, partition, next) in positions {
            // Every record read so far was processed and its outputs
            // acknowledged, because `run_stage` commits after each batch.
            let index = *partition as usize;
            let reached = match self.done_caps.get(partition) {
                Some(cap) => self.positions[index].min(*cap),
                None => self.positions[index],
            };
            if let Some(done) = self.done.get_mut(index) {
                *done = (*done).max(reached);
            }
            let done = self.done.get(index).copied().unwrap_or(*next);
            state
                .commits
                .insert((self.group.clone(), topic.clone(), *partition), (*next, done));
        }
        Ok(())
    }

    fn cap_done(&mut self, _topic: &str, partition: i32, cap: Option<i64>) {
        match cap {
            Some(cap) => self.done_caps.insert(partition, cap),
            None => self.done_caps.remove(&partition),
        };
    }

    fn caught_up(&self) -> bool {
        let ends = self.log.end_offsets(&self.topic);
        ends.iter().zip(&self.positions).all(|(end, position)| position >= end)
    }

    fn lag(&self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let ends = self.log.end_offsets(topic);
        ends.get(partition as usize).map(|end| (end - offset - 1).max(0))
    }
}

/// Writes into the in-memory log; an append is its acknowledgement.
pub struct MemorySink {
    pub log: Arc<MemoryLog>,
}

#[async_trait]
impl RecordSink for MemorySink {
    async fn send(&self, records: Vec<OutRecord>) -> Result<(), TransportError> {
        for record in records {
            self.log
                .append_at(&record.topic, &record.key, record.payload, record.timestamp_ms)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_the_java_client() {
        // Values printed by the Java client's Utils.murmur2 and
        // Utils.toPositive(murmur2) % 6, from the kafka-clients 4.1.1 jar.
        let cases = [
            ("", 275_646_681, 3),
            ("a", -1_563_381_124, 4),
            ("voice_inbound", 791_730_777, 3),
            ("nice_billing_voice", -566_615_148, 2),
            ("742de705-5d49-54cc-b0fd-1964c9db694c", 1_821_557_668, 4),
        ];
        for (key, hash, partition) in cases {
            assert_eq!(murmur2(key.as_bytes()) as i32, hash, "{key}");
            assert_eq!(partition_for_key(key, 6), partition, "{key}");
        }
    }

    #[tokio::test]
    async fn consumer_resumes_from_committed_offset() {
        let log = MemoryLog::new();
        log.create_topic("t", 2);
        for i in 0..10 {
            log.append("t", &format!("k{i}"), vec![i]).unwrap();
        }
        let mut first = log.consumer("g", "t");
        let batch = first.poll(4, Duration::from_millis(1)).await.unwrap();
        assert_eq!(batch.len(), 4);
        let commits: Vec<_> = batch
            .iter()
            .map(|r| (r.topic.clone(), r.partition, r.offset + 1))
            .collect();
        first.commit(&commits).await.unwrap();

        let mut second = log.consumer("g", "t");
        let rest = second.poll(100, Duration::from_millis(1)).await.unwrap();
        assert_eq!(rest.len(), 6);
        assert!(second.caught_up());
    }

    #[tokio::test]
    async fn same_key_lands_in_same_partition() {
        let log = MemoryLog::new();
        log.create_topic("t", 6);
        let (p1, _) = log.append("t", "voice_inbound", vec![1]).unwrap();
        let (p2, _) = log.append("t", "voice_inbound", vec![2]).unwrap();
        assert_eq!(p1, p2);
    }
}
