//! `kafka://b1:9092,b2:9092`: the bus on Apache Kafka (or any broker that
//! speaks its protocol, such as tansu), through librdkafka.
//!
//! Producer: idempotent, `acks=all`; a publish succeeds only when every record
//! is acknowledged. Consumers: auto-commit off, offsets committed only after
//! the caller's effects, cooperative-sticky assignment so a rebalance moves
//! only the partitions that must move.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::*;

/// Settings of the Kafka backend.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port,host:port`.
    pub bootstrap: String,
    pub partitions: u32,
    pub replication_factor: i32,
    /// Consumer session timeout; a group join takes about half of it.
    pub session_timeout_ms: u32,
    /// librdkafka `partition.assignment.strategy`.
    pub assignment_strategy: String,
    /// Identifies this process in broker logs.
    pub client_id: String,
    /// Extra librdkafka properties for every client: TLS (`security.protocol`,
    /// `ssl.ca.location`, `ssl.certificate.location`, ...) and SASL.
    pub properties: Vec<(String, String)>,
}

/// A librdkafka client config with the brokers and the extra properties.
fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.bootstrap);
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    config
}

/// The Kafka bus: one shared producer, a consumer per group member.
#[derive(Clone)]
pub struct KafkaBus {
    settings: Arc<KafkaSettings>,
    producer: FutureProducer,
}

fn kafka_error(context: &str, error: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::failed(format!("kafka {context}"), error)
}

impl KafkaBus {
    pub fn connect(settings: KafkaSettings) -> Result<Self> {
        let producer: FutureProducer = client_config(&settings)
            .set("client.id", &settings.client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Keep retrying through a broker outage instead of failing the publish early.
            .set("message.timeout.ms", "120000")
            .set("reconnect.backoff.max.ms", "2000")
            .create()
            .map_err(|e| kafka_error("producer", e))?;
        Ok(Self { settings: Arc::new(settings), producer })
    }

    /// Creates every topic in `topics` that is missing, with the configured
    /// partitions and replication. Returns the existing topics whose partition
    /// count differs (Kafka cannot shrink them; growing them moves keys).
    pub async fn ensure_topics(&self, topics: &[String]) -> Result<Vec<(String, u32)>> {
        let admin: AdminClient<DefaultClientContext> =
            client_config(&self.settings).create().map_err(|e| kafka_error("admin client", e))?;
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    self.settings.partitions as i32,
                    TopicReplication::Fixed(self.settings.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics(&new_topics, &options).await.map_err(|e| kafka_error("create topics", e))?;
        for result in results {
            match result {
                Ok(topic) => tracing::info!(%topic, partitions = self.settings.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(kafka_error(&format!("create topic {topic}"), code)),
            }
        }
        let consumer: rdkafka::consumer::BaseConsumer =
            client_config(&self.settings).create().map_err(|e| kafka_error("metadata client", e))?;
        let metadata = tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, Duration::from_secs(30)))
            .await
            .map_err(|e| kafka_error("metadata", e))?
            .map_err(|e| kafka_error("metadata", e))?;
        let mut mismatched = Vec::new();
        for topic in metadata.topics() {
            if topics.iter().any(|t| t == topic.name()) && topic.partitions().len() as u32 != self.settings.partitions {
                mismatched.push((topic.name().to_owned(), topic.partitions().len() as u32));
            }
        }
        Ok(mismatched)
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn redact(&self, topic: &str, _: &str, _: crate::Redactor) -> Result<u64> {
        tracing::info!(%topic, "kafka records cannot be rewritten: erased data ages out with the topic's retention");
        Ok(0)
    }

    async fn publish(&self, topic: &str, records: Vec<Record>) -> Result<Vec<(u32, i64)>> {
        let sends = records.iter().map(|record| {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
            }
            // Our partitioner, not librdkafka's: the same key lands in the same
            // partition on every backend, which batched records rely on.
            let partition = crate::partition_for(&record.key, self.settings.partitions) as i32;
            let future_record = FutureRecord::to(topic)
                .key(record.key.as_bytes())
                .partition(partition)
                .payload(&record.payload)
                .headers(headers);
            self.producer.send(future_record, Duration::from_secs(120))
        });
        let mut landed = Vec::with_capacity(records.len());
        for result in join_all(sends).await {
            match result {
                Ok(delivery) => landed.push((delivery.partition as u32, delivery.offset)),
                Err((error, _)) => return Err(kafka_error(&format!("publish to {topic}"), error)),
            }
        }
        Ok(landed)
    }

    async fn consumer(&self, group: &str, topics: &[String]) -> Result<Box<dyn Consumer>> {
        let context = GroupContext { group: group.to_owned() };
        let consumer: StreamConsumer<GroupContext> = client_config(&self.settings)
            .set("client.id", &self.settings.client_id)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", &self.settings.assignment_strategy)
            .set("session.timeout.ms", self.settings.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (self.settings.session_timeout_ms / 3).max(500).to_string())
            .set("reconnect.backoff.max.ms", "2000")
            .create_with_context(context)
            .map_err(|e| kafka_error("consumer", e))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| kafka_error("subscribe", e))?;
        Ok(Box::new(KafkaConsumer { consumer: Arc::new(consumer), partitions: self.settings.partitions }))
    }

    fn partitions(&self) -> u32 {
        self.settings.partitions
    }

    async fn group_lag(&self, group: &str, topics: &[String]) -> Result<i64> {
        // A client that names the group but never subscribes reads its
        // committed offsets without joining it (no rebalance for its members).
        let consumer: rdkafka::consumer::BaseConsumer = client_config(&self.settings)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| kafka_error("lag client", e))?;
        let (topics, partitions) = (topics.to_vec(), self.settings.partitions);
        tokio::task::spawn_blocking(move || -> Result<i64> {
            let mut list = TopicPartitionList::new();
            for topic in &topics {
                for partition in 0..partitions as i32 {
                    list.add_partition(topic, partition);
                }
            }
            let committed = consumer
                .committed_offsets(list, Duration::from_secs(10))
                .map_err(|e| kafka_error("committed offsets", e))?;
            let mut total = 0;
            for element in committed.elements() {
                let (low, high) = consumer
                    .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(5))
                    .map_err(|e| kafka_error("fetch watermarks", e))?;
                let next = match element.offset() {
                    Offset::Offset(offset) => offset,
                    _ => low,
                };
                total += (high - next).max(0);
            }
            Ok(total)
        })
        .await
        .map_err(|e| kafka_error("group lag", e))?
    }
}

/// Logs rebalances so an operator can see partitions move.
struct GroupContext {
    group: String,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(group = %self.group, assigned = ?partition_names(partitions), "partitions assigned")
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(group = %self.group, revoked = ?partition_names(partitions), "partitions revoked")
            }
            Rebalance::Error(error) => tracing::warn!(group = %self.group, %error, "rebalance error"),
        }
    }
}

fn partition_names(list: &TopicPartitionList) -> Vec<String> {
    list.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect()
}

/// Errors that only say the brokers cannot be reached right now.
fn is_connection_error(error: &rdkafka::error::KafkaError) -> bool {
    matches!(
        error,
        rdkafka::error::KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure
        )
    )
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer<GroupContext>>,
    partitions: u32,
}

impl KafkaConsumer {
    fn convert(message: &rdkafka::message::BorrowedMessage<'_>) -> Delivered {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (h.key.to_owned(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Delivered {
            topic: message.topic().to_owned(),
            partition: message.partition() as u32,
            offset: message.offset(),
            record: Record {
                key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
                payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers,
            },
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>> {
        let mut batch = Vec::new();
        let mut connection_error = None;
        let deadline = Instant::now() + wait;
        while batch.len() < max.max(1) {
            // Wait for the first record; after that take only what is already buffered.
            let timeout = if batch.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(1)
            };
            match tokio::time::timeout(timeout, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => batch.push(Self::convert(&message)),
                // While the brokers are away librdkafka queues one of these per
                // failed connection attempt; read past them at once, or a backlog
                // of stale errors keeps the caller backing off long after the
                // brokers are back.
                Ok(Err(error)) if is_connection_error(&error) => connection_error = Some(error),
                Ok(Err(error)) => {
                    if batch.is_empty() {
                        return Err(kafka_error("poll", error));
                    }
                    break;
                }
            }
        }
        match connection_error {
            Some(error) if batch.is_empty() => Err(kafka_error("poll", error)),
            _ => Ok(batch),
        }
    }

    async fn commit(&mut self, done: &[Delivered]) -> Result<()> {
        let next = next_offsets(done);
        if next.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            list.add_partition_offset(&topic, partition as i32, Offset::Offset(offset))
                .map_err(|e| kafka_error("commit", e))?;
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|e| kafka_error("commit", e))?
            .map_err(|e| kafka_error("commit", e))
    }

    async fn lag(&mut self) -> Result<Vec<(String, u32, i64)>> {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<(String, u32, i64)>> {
            let positions = consumer.position().map_err(|e| kafka_error("position", e))?;
            let mut lag = Vec::new();
            for element in positions.elements() {
                let (topic, partition) = (element.topic().to_owned(), element.partition());
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                    .map_err(|e| kafka_error("fetch watermarks", e))?;
                // Before its first fetch a partition has no position yet: reported as 0.
                let behind = match element.offset() {
                    Offset::Offset(position) => (high - position).max(0),
                    _ => 0,
                };
                lag.push((topic, partition as u32, behind));
            }
            Ok(lag)
        })
        .await
        .map_err(|e| kafka_error("lag", e))?
    }

    async fn rewind(&mut self) -> Result<()> {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let assignment = consumer.assignment().map_err(|e| kafka_error("assignment", e))?;
            if assignment.count() == 0 {
                return Ok(());
            }
            let committed = consumer
                .committed_offsets(assignment, Duration::from_secs(10))
                .map_err(|e| kafka_error("committed offsets", e))?;
            for element in committed.elements() {
                let offset = match element.offset() {
                    Offset::Offset(offset) => Offset::Offset(offset),
                    _ => Offset::Beginning,
                };
                consumer
                    .seek(element.topic(), element.partition(), offset, Duration::from_secs(10))
                    .map_err(|e| kafka_error("seek", e))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| kafka_error("rewind", e))?
    }

    fn assigned_share(&self) -> (u32, u32) {
        let owned = self.consumer.assignment().map(|a| a.count() as u32).unwrap_or(0);
        (owned, self.partitions)
    }
}
