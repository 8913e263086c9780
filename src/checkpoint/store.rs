//! Where checkpoints live. A store is a small key-value interface (a compacted topic is
//! one: the newest value per key wins, an empty value deletes), so the chunk/manifest
//! logic in the parent module is the same for both stores.
//!
//! - [`DirStore`]: a local directory, one file per key, written to a temporary name and
//!   renamed, so a file is either whole or absent. The faster first choice when a pod keeps
//!   its volume across restarts.
//! - [`KafkaStore`]: a compacted topic (`service.state_topic`), created when missing, so any
//!   instance of the group on any host can restore without shared disk.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::kafka::{KafkaSettings, Role};

/// A store failed: the checkpoint write is abandoned (the previous one stands) or the
/// restore falls back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("state topic: {0}")]
    Kafka(#[from] KafkaError),
    #[error("state topic: {0}")]
    Other(String),
}

/// A key-value store of checkpoint chunks and manifests.
pub trait Store: Send {
    /// `dir` or `kafka`, for logs and metric labels.
    fn kind(&self) -> &'static str;
    /// Writes one value (not yet necessarily durable).
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Makes every value put so far durable.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// The current value of every key under `prefix`.
    fn load(&mut self, prefix: &str) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        self.load_where(prefix, &|_| true)
    }
    /// The current value of every key under `prefix` that `keep` accepts: a restore reads
    /// one partition set's chunks and only the manifests of the others.
    fn load_where(
        &mut self,
        prefix: &str,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError>;
}

/// One file per key under a root directory.
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(DirStore { root })
    }

    fn path(&self, key: &str) -> PathBuf {
        // Keys are made of the group name, digits and fixed words: '/' nests, nothing else
        // can climb out of the root.
        let safe: String = key
            .chars()
            .map(|c| if c == '.' || c == '\\' { '_' } else { c })
            .collect();
        self.root.join(safe)
    }
}

impl Store for DirStore {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(value)?;
        f.sync_data()?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        // Each put already synced its file; the renames are made durable with the directory.
        if let Ok(d) = fs::File::open(&self.root) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn load_where(
        &mut self,
        prefix: &str,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        fn walk(
            root: &Path,
            dir: &Path,
            keep: &dyn Fn(&str) -> bool,
            out: &mut BTreeMap<String, Vec<u8>>,
        ) -> std::io::Result<()> {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            for e in entries {
                let p = e?.path();
                if p.is_dir() {
                    walk(root, &p, keep, out)?;
                } else if p.extension().is_none_or(|x| x != "tmp") {
                    if let Ok(rel) = p.strip_prefix(root) {
                        let key = rel.to_string_lossy().replace('\\', "/");
                        if keep(&key) {
                            out.insert(key, fs::read(&p)?);
                        }
                    }
                }
            }
            Ok(())
        }
        let mut out = BTreeMap::new();
        walk(&self.root, &self.path(prefix), keep, &mut out)?;
        Ok(out)
    }
}

/// Remembers the first delivery failure of the state producer.
#[derive(Default, Clone)]
struct DeliveryWatch(Arc<Mutex<Option<KafkaError>>>);

impl ClientContext for DeliveryWatch {}

impl ProducerContext for DeliveryWatch {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut slot = crate::service::source::lock(&self.0);
            slot.get_or_insert_with(|| e.clone());
        }
    }
}

/// A compacted topic of checkpoint chunks, keyed like [`DirStore`]'s files.
pub struct KafkaStore {
    settings: KafkaSettings,
    topic: String,
    producer: BaseProducer<DeliveryWatch>,
    watch: DeliveryWatch,
    timeout: Duration,
}

/// Topic settings for the state topic: compacted (the newest value per key is what
/// matters), and segments small enough that compaction runs while the service does.
pub const STATE_TOPIC_CONFIG: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("segment.bytes", "67108864"),
    ("min.cleanable.dirty.ratio", "0.5"),
    // Chunks are at most [`super::MAX_CHUNK_BYTES`]; 2 MiB leaves room for the key and
    // batch framing above the broker's 1 MiB default.
    ("max.message.bytes", "2097152"),
];

impl KafkaStore {
    /// Connects, creating the topic (one partition, compacted) when it is missing.
    pub fn open(
        settings: &KafkaSettings,
        topic: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        ensure_topic(settings, topic, timeout)?;
        let watch = DeliveryWatch::default();
        let mut cfg = settings.client_config(Role::Producer);
        // Chunks are large and compress well (fingerprints and times); lz4 is cheap.
        cfg.set("compression.type", "lz4");
        cfg.set("message.max.bytes", "2097152");
        let producer: BaseProducer<DeliveryWatch> = cfg.create_with_context(watch.clone())?;
        Ok(KafkaStore {
            settings: settings.clone(),
            topic: topic.to_string(),
            producer,
            watch,
            timeout,
        })
    }
}

fn ensure_topic(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<(), StoreError> {
    let admin: AdminClient<DefaultClientContext> =
        settings.client_config(Role::Producer).create()?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1));
    let new = STATE_TOPIC_CONFIG.iter().fold(new, |t, (k, v)| t.set(k, v));
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StoreError::Io)?;
    let results = rt.block_on(admin.create_topics([&new], &opts))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(StoreError::Kafka(KafkaError::AdminOp(code))),
        }
    }
    Ok(())
}

impl Store for KafkaStore {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.timeout;
        let mut record = BaseRecord::to(&self.topic).key(key).payload(value);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if Instant::now() < deadline =>
                {
                    record = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.producer.flush(self.timeout)?;
        match crate::service::source::lock(&self.watch.0).take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn load_where(
        &mut self,
        prefix: &str,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let mut cfg = self.settings.client_config(Role::Consumer);
        // Reads by assignment, never joins a group: a static member id must not be reused.
        cfg.remove("group.instance.id");
        cfg.set("group.id", "linewatch-state-reader");
        cfg.set("enable.partition.eof", "true");
        let consumer: BaseConsumer = cfg.create()?;
        let md = consumer.fetch_metadata(Some(&self.topic), self.timeout)?;
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for t in md.topics() {
            for p in t.partitions() {
                let (lo, hi) = consumer.fetch_watermarks(&self.topic, p.id(), self.timeout)?;
                if hi > lo {
                    tpl.add_partition_offset(&self.topic, p.id(), Offset::Beginning)?;
                    ends.insert(p.id(), hi);
                }
            }
        }
        let mut out = BTreeMap::new();
        if ends.is_empty() {
            return Ok(out);
        }
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + self.timeout * 4;
        while !ends.is_empty() {
            if Instant::now() > deadline {
                return Err(StoreError::Other(
                    "timed out reading the state topic".into(),
                ));
            }
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = match msg {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(p)) => {
                    ends.remove(&p);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if msg.offset() + 1 >= ends.get(&msg.partition()).copied().unwrap_or(0) {
                ends.remove(&msg.partition());
            }
            let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            if !key.starts_with(prefix) || !keep(key) {
                continue;
            }
            match msg.payload() {
                Some(v) if !v.is_empty() => {
                    out.insert(key.to_string(), v.to_vec());
                }
                _ => {
                    out.remove(key);
                }
            }
        }
        Ok(out)
    }
}
