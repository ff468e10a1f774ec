//! `embedded://`: a durable, partitioned log in SQLite with per-group offsets.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

use crate::*;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS bus_log (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key TEXT NOT NULL, payload BLOB NOT NULL, headers TEXT NOT NULL, append_time INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bus_offsets (
    group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)) WITHOUT ROWID;
"#;

/// Payloads from this size on are stored compressed.
const COMPRESS_FROM: usize = 512;
/// Starts a compressed payload. Records are protobuf messages or JSON, and
/// neither starts with a zero byte (protobuf has no field number 0).
const LZ4: [u8; 2] = [0, b'4'];

/// The embedded bus. Clones share one connection and one wake-up signal.
#[derive(Clone)]
pub struct EmbeddedBus {
    conn: Arc<Mutex<Connection>>,
    partitions: u32,
    appended: Arc<Notify>,
    cipher: Option<Arc<dyn PayloadCipher>>,
}

impl EmbeddedBus {
    /// Opens the log inside the SQLite database at `path`.
    pub fn open(path: &Path, partitions: u32) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| BusError::failed(format!("open {}", path.display()), e))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Blanked (erased) payloads are overwritten, not left in free space.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            partitions: partitions.max(1),
            appended: Arc::new(Notify::new()),
            cipher: None,
        })
    }

    /// Seals payloads with `cipher` from now on (records written without one
    /// cannot be read with one: set it before the first publish).
    pub fn with_cipher(mut self, cipher: Arc<dyn PayloadCipher>) -> Self {
        self.cipher = Some(cipher);
        self
    }

    fn seal(&self, payload: Vec<u8>) -> Vec<u8> {
        Self::seal_payload(&self.cipher, payload)
    }

    /// Compresses a large payload (LZ4: an import's event batches shrink
    /// about threefold) and seals it with the cipher, if any.
    fn seal_payload(cipher: &Option<Arc<dyn PayloadCipher>>, payload: Vec<u8>) -> Vec<u8> {
        if payload.is_empty() {
            return payload;
        }
        let payload = match payload.len() >= COMPRESS_FROM {
            true => {
                let mut packed = LZ4.to_vec();
                packed.extend(lz4_flex::compress_prepend_size(&payload));
                if packed.len() < payload.len() { packed } else { payload }
            }
            false => payload,
        };
        match cipher {
            Some(cipher) => cipher.seal(&payload),
            None => payload,
        }
    }

    fn open_payload(cipher: &Option<Arc<dyn PayloadCipher>>, payload: Vec<u8>) -> Result<Vec<u8>> {
        let plain = match cipher {
            Some(cipher) if !payload.is_empty() => cipher.open(&payload)?,
            _ => payload,
        };
        match plain.strip_prefix(&LZ4) {
            Some(packed) => lz4_flex::decompress_size_prepended(packed)
                .map_err(|e| BusError::failed("a bus record does not decompress", e)),
            None => Ok(plain),
        }
    }

    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| BusError::failed("bus task", e))?
    }
}

fn encode_headers(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .map(|(k, v)| format!("{}\t{}", k.replace(['\t', '\n'], " "), v.replace(['\t', '\n'], " ")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn decode_headers(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(|line| line.split_once('\t')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn group_lag(&self, group: &str, topics: &[String]) -> Result<i64> {
        let (group, topics) = (group.to_owned(), topics.to_vec());
        self.run(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT COALESCE(SUM(ends.end - COALESCE(o.next_offset, 0)), 0) FROM \
                 (SELECT partition, MAX(offset) + 1 AS end FROM bus_log WHERE topic = ?2 GROUP BY partition) AS ends \
                 LEFT JOIN bus_offsets o ON o.group_id = ?1 AND o.topic = ?2 AND o.partition = ends.partition",
            )?;
            let mut total = 0;
            for topic in &topics {
                total += statement.query_row(params![group, topic], |row| row.get::<_, i64>(0))?.max(0);
            }
            Ok(total)
        })
        .await
    }

    async fn publish(&self, topic: &str, records: Vec<Record>) -> Result<Vec<(u32, i64)>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (topic, partitions) = (topic.to_owned(), self.partitions);
        let records: Vec<Record> = records.into_iter().map(|r| Record { payload: self.seal(r.payload), ..r }).collect();
        let landed = self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut heads: HashMap<u32, i64> = HashMap::new();
            let mut landed = Vec::with_capacity(records.len());
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
            {
                let mut head_query = tx.prepare_cached("SELECT MAX(offset) FROM bus_log WHERE topic = ?1 AND partition = ?2")?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO bus_log (topic, partition, offset, key, payload, headers, append_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for record in records {
                    let partition = partition_for(&record.key, partitions);
                    let next = match heads.get(&partition) {
                        Some(offset) => *offset,
                        None => head_query
                            .query_row(params![topic, partition], |row| row.get::<_, Option<i64>>(0))?
                            .map_or(0, |max| max + 1),
                    };
                    insert.execute(params![topic, partition, next, record.key, record.payload, encode_headers(&record.headers), now])?;
                    heads.insert(partition, next + 1);
                    landed.push((partition, next));
                }
            }
            tx.commit()?;
            Ok(landed)
        })
        .await?;
        self.appended.notify_waiters();
        Ok(landed)
    }

    async fn redact(&self, topic: &str, key: &str, redact: Redactor) -> Result<u64> {
        let (topic, key, cipher) = (topic.to_owned(), key.to_owned(), self.cipher.clone());
        let partition = partition_for(&key, self.partitions);
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut changed = 0;
            {
                let mut select = tx.prepare(
                    "SELECT offset, key, payload, headers FROM bus_log WHERE topic = ?1 AND partition = ?2 AND length(payload) > 0",
                )?;
                let mut update = tx.prepare(
                    "UPDATE bus_log SET payload = ?4, headers = CASE WHEN length(?4) = 0 THEN '' ELSE headers END \
                     WHERE topic = ?1 AND partition = ?2 AND offset = ?3",
                )?;
                let rows: Vec<(i64, String, Vec<u8>, String)> = select
                    .query_map(params![topic, partition], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                for (offset, record_key, payload, headers) in rows {
                    let payload = Self::open_payload(&cipher, payload)?;
                    if !payload.windows(key.len()).any(|window| window == key.as_bytes()) {
                        continue;
                    }
                    let record = Record { key: record_key, payload, headers: decode_headers(&headers) };
                    let redacted = redact(&record);
                    if redacted != record.payload {
                        let sealed = Self::seal_payload(&cipher, redacted);
                        changed += update.execute(params![topic, partition, offset, sealed])? as u64;
                    }
                }
            }
            tx.commit()?;
            Ok(changed)
        })
        .await
    }

    async fn consumer(&self, group: &str, topics: &[String]) -> Result<Box<dyn Consumer>> {
        let mut consumer = EmbeddedConsumer {
            bus: self.clone(),
            group: group.to_owned(),
            topics: topics.to_vec(),
            positions: HashMap::new(),
            next_start: 0,
        };
        consumer.rewind().await?;
        Ok(Box::new(consumer))
    }

    fn partitions(&self) -> u32 {
        self.partitions
    }
}

/// The only member of its group in this process: it owns every partition.
struct EmbeddedConsumer {
    bus: EmbeddedBus,
    group: String,
    topics: Vec<String>,
    /// Next offset to read, per (topic, partition).
    positions: HashMap<(String, u32), i64>,
    /// Rotates the first partition read so no partition starves.
    next_start: usize,
}

impl EmbeddedConsumer {
    async fn fetch(&mut self, max: usize) -> Result<Vec<Delivered>> {
        let mut slots: Vec<((String, u32), i64)> = self.positions.iter().map(|(k, v)| (k.clone(), *v)).collect();
        slots.sort();
        let start = self.next_start % slots.len().max(1);
        slots.rotate_left(start);
        self.next_start = self.next_start.wrapping_add(1);
        let batch = self
            .bus
            .run(move |conn| {
                let mut out = Vec::new();
                let mut statement = conn.prepare_cached(
                    "SELECT offset, key, payload, headers FROM bus_log WHERE topic = ?1 AND partition = ?2 AND offset >= ?3 ORDER BY offset LIMIT ?4",
                )?;
                for ((topic, partition), position) in slots {
                    if out.len() >= max {
                        break;
                    }
                    let rows = statement.query_map(params![topic, partition, position, (max - out.len()) as i64], |row| {
                        Ok(Delivered {
                            topic: topic.clone(),
                            partition,
                            offset: row.get(0)?,
                            record: Record { key: row.get(1)?, payload: row.get(2)?, headers: decode_headers(&row.get::<_, String>(3)?) },
                        })
                    })?;
                    for row in rows {
                        out.push(row?);
                    }
                }
                Ok(out)
            })
            .await?;
        for delivered in &batch {
            self.positions.insert((delivered.topic.clone(), delivered.partition), delivered.offset + 1);
        }
        // Records blanked by an erasure are passed over (their offsets are consumed).
        let mut batch = batch;
        batch.retain(|delivered| !delivered.record.payload.is_empty());
        for delivered in &mut batch {
            delivered.record.payload =
                EmbeddedBus::open_payload(&self.bus.cipher, std::mem::take(&mut delivered.record.payload))?;
        }
        Ok(batch)
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>> {
        let deadline = Instant::now() + wait;
        loop {
            // Register interest before reading, so a publish in between still wakes us.
            let appended = self.bus.appended.clone();
            let notified = appended.notified();
            let batch = self.fetch(max.max(1)).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(batch);
            }
            // Another process may append to the same file: re-check now and then.
            let nap = (deadline - now).min(Duration::from_millis(200));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn lag(&mut self) -> Result<Vec<(String, u32, i64)>> {
        let topics = self.topics.clone();
        let ends: Vec<(String, u32, i64)> = self
            .bus
            .run(move |conn| {
                let mut statement = conn.prepare_cached(
                    "SELECT partition, MAX(offset) + 1 FROM bus_log WHERE topic = ?1 GROUP BY partition",
                )?;
                let mut ends = Vec::new();
                for topic in &topics {
                    let rows = statement
                        .query_map(params![topic], |row| Ok((row.get::<_, u32>(0)?, row.get::<_, i64>(1)?)))?;
                    for row in rows {
                        let (partition, end) = row?;
                        ends.push((topic.clone(), partition, end));
                    }
                }
                Ok(ends)
            })
            .await?;
        // Every partition this member owns, 0 where the log is empty: a gauge
        // that exists and reads 0 says "healthy"; a missing one says nothing.
        let ends: std::collections::HashMap<(String, u32), i64> =
            ends.into_iter().map(|(topic, partition, end)| ((topic, partition), end)).collect();
        let mut lag = Vec::new();
        for topic in &self.topics {
            for partition in 0..self.bus.partitions {
                let key = (topic.clone(), partition);
                let end = ends.get(&key).copied().unwrap_or(0);
                let position = self.positions.get(&key).copied().unwrap_or(0);
                lag.push((topic.clone(), partition, (end - position).max(0)));
            }
        }
        Ok(lag)
    }

    async fn commit(&mut self, done: &[Delivered]) -> Result<()> {
        let next = next_offsets(done);
        if next.is_empty() {
            return Ok(());
        }
        let group = self.group.clone();
        self.bus
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                for ((topic, partition), offset) in next {
                    tx.execute(
                        "INSERT INTO bus_offsets (group_id, topic, partition, next_offset) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
                        params![group, topic, partition, offset],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

    fn assigned_share(&self) -> (u32, u32) {
        (self.bus.partitions, self.bus.partitions)
    }

    async fn rewind(&mut self) -> Result<()> {
        let (group, topics, partitions) = (self.group.clone(), self.topics.clone(), self.bus.partitions);
        let positions = self
            .bus
            .run(move |conn| {
                let mut positions = HashMap::new();
                for topic in topics {
                    for partition in 0..partitions {
                        let committed: Option<i64> = conn
                            .query_row(
                                "SELECT next_offset FROM bus_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
                                params![group, topic, partition],
                                |row| row.get(0),
                            )
                            .optional()?;
                        positions.insert((topic.clone(), partition), committed.unwrap_or(0));
                    }
                }
                Ok(positions)
            })
            .await?;
        self.positions = positions;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, payload: &str) -> Record {
        Record { key: key.into(), payload: payload.as_bytes().to_vec(), headers: vec![("type".into(), "t".into())] }
    }

    #[tokio::test]
    async fn committed_offsets_survive_reopen_and_nothing_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.db");
        let topic = "t".to_string();
        let bus = EmbeddedBus::open(&path, 4).unwrap();
        bus.publish(&topic, (0..10).map(|i| record(&format!("k{i}"), &format!("v{i}"))).collect()).await.unwrap();
        let mut consumer = bus.consumer("g", std::slice::from_ref(&topic)).await.unwrap();
        let first = consumer.poll(4, Duration::from_millis(10)).await.unwrap();
        assert_eq!(first.len(), 4);
        consumer.commit(&first).await.unwrap();
        let uncommitted = consumer.poll(100, Duration::from_millis(10)).await.unwrap();
        assert_eq!(uncommitted.len(), 6);
        drop(consumer);
        drop(bus);

        let bus = EmbeddedBus::open(&path, 4).unwrap();
        let mut consumer = bus.consumer("g", std::slice::from_ref(&topic)).await.unwrap();
        let rest = consumer.poll(100, Duration::from_millis(10)).await.unwrap();
        let mut seen: Vec<String> = first.iter().chain(rest.iter()).map(|d| d.record.key.clone()).collect();
        seen.sort();
        let mut expected: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        expected.sort();
        assert_eq!(seen, expected, "each record once across the restart");
        assert_eq!(rest[0].record.header("type"), Some("t"));
    }

    /// Large payloads are stored compressed and read back unchanged; small
    /// ones are stored as they are.
    #[tokio::test]
    async fn large_payloads_are_stored_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(&dir.path().join("bus.db"), 1).unwrap();
        let topic = "t".to_string();
        let large: String = (0..200).map(|i| format!("{{\"city\":\"Paris\",\"n\":{i}}}")).collect();
        bus.publish(&topic, vec![record("a", &large), record("b", "small")]).await.unwrap();
        let stored: Vec<i64> = {
            let conn = bus.conn.lock().unwrap();
            let mut statement = conn.prepare("SELECT length(payload) FROM bus_log ORDER BY offset").unwrap();
            statement.query_map([], |row| row.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
        };
        assert!(stored[0] * 3 < large.len() as i64, "{} bytes stored for {}", stored[0], large.len());
        assert_eq!(stored[1], 5);
        let mut consumer = bus.consumer("g", std::slice::from_ref(&topic)).await.unwrap();
        let read = consumer.poll(10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(read[0].record.payload, large.as_bytes());
        assert_eq!(read[1].record.payload, b"small");
    }

    #[tokio::test]
    async fn poll_wakes_on_publish_and_rewind_rereads() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(&dir.path().join("bus.db"), 2).unwrap();
        let topic = "t".to_string();
        let mut consumer = bus.consumer("g", std::slice::from_ref(&topic)).await.unwrap();
        let publisher = bus.clone();
        let t = topic.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            publisher.publish(&t, vec![record("k", "v")]).await.unwrap();
        });
        let got = consumer.poll(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1);
        consumer.rewind().await.unwrap();
        assert_eq!(consumer.poll(10, Duration::ZERO).await.unwrap().len(), 1, "uncommitted record is read again");
    }

    #[test]
    fn partitioning_is_stable_and_in_range() {
        assert_eq!(partition_for("abc", 8), partition_for("abc", 8));
        assert!((0..1000).all(|i| partition_for(&i.to_string(), 7) < 7));
    }
}
