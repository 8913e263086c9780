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
    /// Removes one key (a key that is not there is no error); durable on return.
    fn remove(&mut self, key: &str) -> Result<(), StoreError>;
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
        let mut p = self.root.clone();
        for seg in key.split('/') {
            p.push(encode_segment(seg));
        }
        p
    }
}

/// A key segment as a file name: bytes outside `[A-Za-z0-9_-]` as `%XX`, an empty segment
/// as `%`. Injective, so two keys never share a file (`dot.a` and `dot_a` were one, and
/// a group id was free to hold `..` or start with `/`), and no name is `.`, `..` or empty,
/// so nothing climbs out of the root. Keys made of the group name, hex ids, digits and
/// fixed words (every group of those characters) are their own file names, as before.
fn encode_segment(seg: &str) -> String {
    if seg.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(seg.len());
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// [`encode_segment`] undone; `None` for a name it cannot have made (a stray file).
fn decode_segment(name: &str) -> Option<String> {
    if name == "%" {
        return Some(String::new());
    }
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// A [`DirStore`] whose writes fail while `broken` is set, as on a full volume (removing
/// files still works): for tests of what a failing store does to checkpoints.
#[doc(hidden)]
pub struct WritesFail {
    pub inner: DirStore,
    pub broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for WritesFail {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Other("no space left on device".into()));
        }
        self.inner.put(key, value)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        self.inner.remove(key)
    }

    fn load_where(
        &mut self,
        prefix: &str,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        self.inner.load_where(prefix, keep)
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
        let written = fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(value)?;
            f.sync_data()?;
            fs::rename(&tmp, &path)
        });
        if let Err(e) = written {
            // A write that fails part way (a full volume, mostly) leaves no half file: left,
            // every failed checkpoint's chunks stayed behind and kept the volume full.
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if let Some(d) = path.parent().and_then(|d| fs::File::open(d).ok()) {
            let _ = d.sync_all();
        }
        // Folders the removal left empty go too (a swept partition set's), up to the root; a
        // folder still holding anything stays (`remove_dir` refuses it).
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.root && d.starts_with(&self.root)) {
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
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
                let e = e?;
                let p = e.path();
                // The entry itself, symlinks not followed: only folders and regular files
                // this store wrote are walked and read. A symlink (a loop made the whole
                // store unreadable), a FIFO or a device (a read would block the restore
                // for ever, shutdown included) is someone else's, and left alone.
                let ft = e.file_type()?;
                if ft.is_dir() {
                    walk(root, &p, keep, out)?;
                } else if ft.is_file() && p.extension().is_none_or(|x| x != "tmp") {
                    if let Ok(rel) = p.strip_prefix(root) {
                        // A file this store did not name (a stray, an editor's backup) is
                        // no key: left alone.
                        let key: Option<Vec<String>> = rel
                            .components()
                            .map(|c| decode_segment(&c.as_os_str().to_string_lossy()))
                            .collect();
                        if let Some(key) = key.map(|k| k.join("/")) {
                            if keep(&key) {
                                out.insert(key, fs::read(&p)?);
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        let mut out = BTreeMap::new();
        // The prefix names a folder ("group/"): its trailing '/' is no empty segment. The
        // keys found are still matched whole by the caller, so a walk that starts higher
        // (a group id ending in '/') finds no other group's checkpoint.
        walk(
            &self.root,
            &self.path(prefix.trim_end_matches('/')),
            keep,
            &mut out,
        )?;
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

    fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        // An empty value: `load_where` drops the key, and compaction keeps only it.
        self.put(key, &[])?;
        self.flush()
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

#[cfg(test)]
mod segment_tests {
    use super::{decode_segment, encode_segment, DirStore, Store};

    #[test]
    fn group_ids_map_to_distinct_names_inside_the_root() {
        for seg in [
            "linewatch",
            "dot.a",
            "dot_a",
            "..",
            "",
            "a%2E",
            "grüppe",
            "a b",
        ] {
            let e = encode_segment(seg);
            assert!(
                !e.is_empty() && e != "." && e != ".." && !e.contains('/'),
                "{seg}: {e}"
            );
            assert_eq!(decode_segment(&e).as_deref(), Some(seg));
        }
        assert_eq!(encode_segment("linewatch-0_a"), "linewatch-0_a");
        assert_ne!(encode_segment("dot.a"), encode_segment("dot_a"));
        assert_eq!(decode_segment("notes.txt"), None);
    }

    #[test]
    fn groups_that_differ_by_a_dot_or_start_with_a_slash_keep_their_own_files() {
        let d = tempfile::tempdir().unwrap();
        let mut s = DirStore::new(d.path()).unwrap();
        s.put("dot.a/set/0/manifest", b"A").unwrap();
        s.put("dot_a/set/0/manifest", b"B").unwrap();
        s.put("/escape/set/0/manifest", b"C").unwrap();
        let all = |s: &mut DirStore, p: &str| s.load_where(p, &|_| true).unwrap();
        let a = all(&mut s, "dot.a/");
        assert_eq!(a.len(), 1);
        assert_eq!(a["dot.a/set/0/manifest"], b"A");
        assert_eq!(all(&mut s, "dot_a/")["dot_a/set/0/manifest"], b"B");
        assert_eq!(all(&mut s, "/escape/")["/escape/set/0/manifest"], b"C");
        // Everything stayed under the root.
        assert!(d.path().join("%").is_dir());
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_loop_or_a_fifo_in_the_store_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let mut s = DirStore::new(d.path()).unwrap();
        s.put("g/set/0/manifest", b"A").unwrap();
        std::os::unix::fs::symlink("..", d.path().join("g/set/loop")).unwrap();
        let fifo = d.path().join("g/set/fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let got = s.load_where("g/", &|_| true).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got["g/set/0/manifest"], b"A");
    }

    #[test]
    fn a_write_that_fails_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let mut s = DirStore::new(d.path()).unwrap();
        s.put("g/set/0/manifest", b"A").unwrap();
        // The chunk's name is taken by a folder: the file is written, then its rename fails.
        std::fs::create_dir_all(d.path().join("g/set/0/chunk/x")).unwrap();
        assert!(s.put("g/set/0/chunk", &[7; 4096]).is_err());
        let names: Vec<String> = std::fs::read_dir(d.path().join("g/set/0"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        assert_eq!(s.load("g/").unwrap()["g/set/0/manifest"], b"A");
    }
}
