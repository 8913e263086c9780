//! Durable engine state: checkpoints written with the input offsets they reflect, and
//! restored on start or assignment instead of re-reading a week of input.
//!
//! A checkpoint is the engine's sections ([`crate::engine::Engine::save_sections`]: engine
//! core, dedup, contact store, each detector) encoded as one body, cut into chunks that fit
//! under a broker's message limit, plus a manifest written **last**: a checkpoint without
//! its manifest does not exist. Every chunk carries the checkpoint id and its index, and
//! the manifest a checksum of every chunk and of itself, so a truncated, mixed or corrupt
//! checkpoint is recognised and the previous one used instead.
//!
//! Two slots alternate, so the previous complete checkpoint survives while the
//! next one is being written, in a compacted topic (keys overwrite) as in a directory.
//!
//! # Layout
//! - [`codec`]: the one serialisation used for state (postcard).
//! - this file: sections, chunks, manifest, verification, restore into an engine.
//! - [`store`]: where checkpoints live: a directory, or a compacted Kafka topic.
//! - [`snapshot`]: the state taken without stopping detection (a forked copy-on-write child
//!   encodes it).

pub mod codec;
pub mod metrics;
pub mod service;
pub mod snapshot;
pub mod store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::engine::Engine;
use crate::event::Millis;

/// Bumped whenever the encoding of any section changes: an older or newer checkpoint is
/// then `incompatible` and the service falls back to re-reading its input. 2: the manifest
/// names the input partitions it covers. 3: `handset_churn` keeps each handset's SIMs packed
/// in one byte string. 4: the contact store's entries are 12 bytes, their times relative to
/// the line's base; `handset_churn`'s SIMs hold no length (their packed names delimit
/// themselves). 5: sections per shard. 6: each cooldown entry names its detector, so its
/// subject (and owner) is known again and a checkpoint restores into any shard count. 7:
/// `line_handover`'s answers name the shard that sent them, and a tally holds the set. 8:
/// a `deal_line` verdict holds nine kinds of evidence (`successor_deal_line`). 9: ten
/// (`customer_callbacks`).
pub const FORMAT_VERSION: u32 = 9;

/// Chunk values stay at or under this: below the 1 MiB default message limit of brokers
/// and clients even with the key and framing added.
pub const MAX_CHUNK_BYTES: usize = 512 * 1024;

const MAGIC: &[u8; 4] = b"LWCK";
/// magic, format version, checkpoint id, chunk index.
const CHUNK_HEADER: usize = 4 + 4 + 8 + 4;

/// One named piece of engine state, encoded with [`codec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Section {
    pub fn new(name: &str, bytes: Vec<u8>) -> Self {
        Section {
            name: name.to_string(),
            bytes,
        }
    }
}

/// Where the input stood when the state was saved: the next offset to read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One input partition a checkpoint covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InputPartition {
    pub topic: String,
    pub partition: i32,
}

/// The partition set a checkpoint belongs to, as a short fixed-width name: the same set
/// (in any order) always gives the same name, so a member taking exactly that set finds it,
/// and members holding different sets never write under each other's keys.
pub fn set_id(partitions: &[InputPartition]) -> String {
    let mut sorted: Vec<&InputPartition> = partitions.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in sorted {
        // NUL cannot occur in a topic name: "a"+1 and "a1"+... never hash the same bytes.
        h.update(p.topic.as_bytes());
        h.update(&[0]);
        h.update(&p.partition.to_le_bytes());
    }
    format!("{:016x}", h.digest())
}

/// Length and checksum of one chunk value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMeta {
    pub len: u32,
    pub xxh3: u64,
}

/// What a checkpoint holds and how to verify it; written after all its chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Increases from one checkpoint to the next of a writer (wall ms at the start of the
    /// write, kept above the previous id): "newest" means the highest id.
    pub id: u64,
    pub created_ms: Millis,
    /// The configuration the state was built under, as JSON: restore builds an engine with
    /// it and then reconfigures to the one in force, as a live reload does.
    pub config_json: String,
    pub config_version: String,
    /// The input partitions whose state this is (the member's assignment when it was
    /// taken), sorted: restored only by a member assigned exactly these. Unkeyed input
    /// mixes every partition's records in one state, which cannot be split by partition.
    pub partitions: Vec<InputPartition>,
    /// Next offset to read per covered partition; a covered partition without one had
    /// none of its records in the state (it is re-read like a fresh one).
    pub offsets: Vec<SourceOffset>,
    pub chunks: Vec<ChunkMeta>,
    /// Encoded state bytes (the chunks without their headers).
    pub state_bytes: u64,
}

/// A checkpoint ready for a store: the manifest value and the chunk values.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub manifest: Manifest,
    pub manifest_value: Vec<u8>,
    pub chunks: Vec<Vec<u8>>,
}

/// Why a checkpoint was not used. Fixed codes: metric labels and log fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fallback {
    /// No checkpoint in the store (first start, or all were unusable).
    Missing,
    /// A chunk absent or shorter than the manifest says.
    Truncated,
    /// A checksum that does not match, or bytes that do not decode.
    Corrupt,
    /// Another format version, a configuration this build cannot read, or other input topics.
    Incompatible,
    /// The store could not be read at all.
    Unreadable,
    /// The group has checkpoints, but none of exactly the assigned partitions (partitions
    /// were added, or the group split them differently): the state of unkeyed input cannot
    /// be cut or joined by partition.
    OtherPartitions,
    /// The group's committed offsets are behind the checkpoint's by more than the service
    /// processes between commits, or gone: the group was rewound to re-process (or its
    /// offsets deleted or expired). The state is ahead of what will be read: restored, every
    /// re-read record would be late or a duplicate and no alert would come.
    Rewound,
}

impl Fallback {
    pub const ALL: [Fallback; 7] = [
        Fallback::Missing,
        Fallback::Truncated,
        Fallback::Corrupt,
        Fallback::Incompatible,
        Fallback::Unreadable,
        Fallback::OtherPartitions,
        Fallback::Rewound,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Fallback::Missing => "missing",
            Fallback::Truncated => "truncated",
            Fallback::Corrupt => "corrupt",
            Fallback::Incompatible => "incompatible",
            Fallback::Unreadable => "unreadable",
            Fallback::OtherPartitions => "other_partitions",
            Fallback::Rewound => "rewound",
        }
    }
}

/// Encodes the engine's whole state with the offsets it reflects, cut into chunk values of
/// at most `max_chunk_bytes` each; it covers the partitions of `offsets`.
pub fn encode(
    engine: &Engine,
    offsets: Vec<SourceOffset>,
    id: u64,
    created_ms: Millis,
    max_chunk_bytes: usize,
) -> Result<Encoded, codec::Error> {
    let partitions = offsets
        .iter()
        .map(|o| InputPartition {
            topic: o.topic.clone(),
            partition: o.partition,
        })
        .collect();
    encode_covering(engine, partitions, offsets, id, created_ms, max_chunk_bytes)
}

/// [`encode`] for the state of `partitions` (some of which may have no offset yet).
pub fn encode_covering(
    engine: &Engine,
    partitions: Vec<InputPartition>,
    offsets: Vec<SourceOffset>,
    id: u64,
    created_ms: Millis,
    max_chunk_bytes: usize,
) -> Result<Encoded, codec::Error> {
    let body = encode_body(engine)?;
    let meta = Meta {
        id,
        created_ms,
        partitions,
        offsets,
        config: engine.config().clone(),
        config_version: engine.config_version().to_string(),
    };
    package(&body, meta, max_chunk_bytes)
}

/// The state body of a checkpoint: every section, as one codec value. [`snapshot`] writes
/// exactly these bytes from a forked child.
pub fn encode_body(engine: &Engine) -> Result<Vec<u8>, codec::Error> {
    codec::encode(&engine.save_sections()?)
}

/// What a checkpoint says besides its state body, taken when the state is.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: u64,
    pub created_ms: Millis,
    /// The partitions the state covers (some of which may have no offset yet).
    pub partitions: Vec<InputPartition>,
    pub offsets: Vec<SourceOffset>,
    /// The configuration the state was built under.
    pub config: Config,
    pub config_version: String,
}

/// Cuts a state body ([`encode_body`]) into chunk values of at most `max_chunk_bytes` and
/// makes their manifest.
pub fn package(body: &[u8], meta: Meta, max_chunk_bytes: usize) -> Result<Encoded, codec::Error> {
    let id = meta.id;
    let mut partitions = meta.partitions;
    partitions.sort();
    partitions.dedup();
    let per_chunk = max_chunk_bytes.saturating_sub(CHUNK_HEADER).max(1024);
    let mut chunks = Vec::with_capacity(body.len() / per_chunk + 1);
    let mut metas = Vec::with_capacity(chunks.capacity());
    for (i, data) in body.chunks(per_chunk).enumerate() {
        let mut v = Vec::with_capacity(CHUNK_HEADER + data.len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&(i as u32).to_le_bytes());
        v.extend_from_slice(data);
        metas.push(ChunkMeta {
            len: v.len() as u32,
            xxh3: xxhash_rust::xxh3::xxh3_64(&v),
        });
        chunks.push(v);
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        id,
        created_ms: meta.created_ms,
        // A Config always serialises to JSON: plain strings, numbers, maps with string keys.
        config_json: serde_json::to_string(&meta.config).unwrap_or_default(),
        config_version: meta.config_version,
        partitions,
        offsets: meta.offsets,
        chunks: metas,
        state_bytes: body.len() as u64,
    };
    let manifest_value = encode_manifest(&manifest)?;
    Ok(Encoded {
        manifest,
        manifest_value,
        chunks,
    })
}

fn encode_manifest(m: &Manifest) -> Result<Vec<u8>, codec::Error> {
    let body = codec::encode(m)?;
    let mut v = Vec::with_capacity(8 + body.len() + 8);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    v.extend_from_slice(&body);
    let sum = xxhash_rust::xxh3::xxh3_64(&v);
    v.extend_from_slice(&sum.to_le_bytes());
    Ok(v)
}

/// Reads and verifies a manifest value.
pub fn decode_manifest(v: &[u8]) -> Result<Manifest, Fallback> {
    if v.len() < 16 || &v[..4] != MAGIC {
        return Err(Fallback::Corrupt);
    }
    let (data, sum) = v.split_at(v.len() - 8);
    // The version comes before the checksum test: a manifest of another format may be
    // framed differently, and that is not corruption.
    let version = u32::from_le_bytes([v[4], v[5], v[6], v[7]]);
    if version != FORMAT_VERSION {
        return Err(Fallback::Incompatible);
    }
    let want = u64::from_le_bytes(sum.try_into().map_err(|_| Fallback::Corrupt)?);
    if xxhash_rust::xxh3::xxh3_64(data) != want {
        return Err(Fallback::Corrupt);
    }
    codec::decode(&data[8..]).map_err(|_| Fallback::Corrupt)
}

/// Verifies every chunk of a manifest (present, right length, right checkpoint, checksum)
/// and decodes the sections.
pub fn assemble(
    m: &Manifest,
    chunk: impl Fn(u32) -> Option<Vec<u8>>,
) -> Result<Vec<Section>, Fallback> {
    let mut body = Vec::with_capacity(m.state_bytes as usize);
    for (i, meta) in m.chunks.iter().enumerate() {
        let v = chunk(i as u32).ok_or(Fallback::Truncated)?;
        if v.len() < CHUNK_HEADER || &v[..4] != MAGIC {
            return Err(Fallback::Corrupt);
        }
        // A chunk of another checkpoint under the same key: this one was never finished
        // or was overwritten by a newer write that did not finish.
        if v[8..16] != m.id.to_le_bytes() || v[16..20] != (i as u32).to_le_bytes() {
            return Err(Fallback::Truncated);
        }
        if v.len() != meta.len as usize {
            return Err(Fallback::Truncated);
        }
        if xxhash_rust::xxh3::xxh3_64(&v) != meta.xxh3 {
            return Err(Fallback::Corrupt);
        }
        body.extend_from_slice(&v[CHUNK_HEADER..]);
    }
    codec::decode(&body).map_err(|_| Fallback::Corrupt)
}

/// An engine holding a checkpoint's state under the configuration `current`: built with
/// the configuration the state was saved under, loaded, then reconfigured exactly as a
/// live reload would (changed thresholds keep the state).
pub fn restore_engine(
    m: &Manifest,
    sections: &[Section],
    current: &Config,
) -> Result<Engine, Fallback> {
    let saved: Config = serde_json::from_str(&m.config_json).map_err(|_| Fallback::Incompatible)?;
    if saved.validate().is_err() {
        return Err(Fallback::Incompatible);
    }
    // Into the running shard count, whatever count wrote it: each shard takes the state
    // of its key groups (docs/sharding.md, "Checkpoints").
    let mut engine = Engine::with_shards(saved, current.service.shards);
    engine
        .load_sections(sections)
        .map_err(|_| Fallback::Corrupt)?;
    engine.reconfigure(current.clone());
    Ok(engine)
}

/// A restored checkpoint: the engine and the offsets to resume from.
pub struct Restored {
    pub engine: Engine,
    pub manifest: Manifest,
    /// The slot it was read from (the next write goes to the other).
    pub slot: u8,
}

impl std::fmt::Debug for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The engine is the whole window state: far too much to print.
        f.debug_struct("Restored")
            .field("checkpoint_id", &self.manifest.id)
            .field("partitions", &self.manifest.partitions)
            .field("slot", &self.slot)
            .finish()
    }
}

/// The newest usable checkpoint among the store's manifests, newest first; each one
/// passed over is reported to `skipped` with its reason. `accept` decides whether a
/// manifest's offsets fit what is assigned (else `incompatible`).
pub fn restore_newest(
    entries: &BTreeMap<String, Vec<u8>>,
    namespace: &str,
    current: &Config,
    accept: impl Fn(&Manifest) -> bool,
    skipped: impl FnMut(Fallback),
) -> Option<Restored> {
    newest_usable(
        entries,
        namespace,
        accept,
        |m, sections| restore_engine(m, sections, current),
        skipped,
    )
    .map(|(engine, manifest, slot)| Restored {
        engine,
        manifest,
        slot,
    })
}

/// [`restore_newest`] for any state: the newest checkpoint under `namespace` whose manifest
/// `accept`s, whose chunks verify, and whose sections `load` turns into a `T`, with its
/// manifest and slot; each one passed over is reported to `skipped` with its reason. The
/// `[streams]` stage partitions' checkpoints (`crate::service::stage_state`) use it.
pub fn newest_usable<T>(
    entries: &BTreeMap<String, Vec<u8>>,
    namespace: &str,
    accept: impl Fn(&Manifest) -> bool,
    load: impl Fn(&Manifest, &[Section]) -> Result<T, Fallback>,
    mut skipped: impl FnMut(Fallback),
) -> Option<(T, Manifest, u8)> {
    let mut manifests = Vec::new();
    for slot in 0..SLOTS {
        let Some(v) = entries.get(&manifest_key(namespace, slot)) else {
            continue;
        };
        match decode_manifest(v) {
            Ok(m) => manifests.push((slot, m)),
            Err(f) => skipped(f),
        }
    }
    manifests.sort_by_key(|m| std::cmp::Reverse(m.1.id));
    for (slot, m) in manifests {
        if !accept(&m) {
            skipped(Fallback::Incompatible);
            continue;
        }
        let got = assemble(&m, |i| entries.get(&chunk_key(namespace, slot, i)).cloned())
            .and_then(|sections| load(&m, &sections));
        match got {
            Ok(t) => return Some((t, m, slot)),
            Err(f) => skipped(f),
        }
    }
    None
}

/// Slots that alternate, so the previous checkpoint is whole while the next is written.
pub const SLOTS: u8 = 2;

pub fn manifest_key(namespace: &str, slot: u8) -> String {
    format!("{namespace}/{slot}/manifest")
}

pub fn chunk_key(namespace: &str, slot: u8, i: u32) -> String {
    format!("{namespace}/{slot}/chunk/{i:06}")
}

/// Writes a checkpoint to `slot`: every chunk, made durable, then the manifest. A crash
/// before the manifest lands leaves the slot's previous manifest, whose chunks no longer
/// match it (checkpoint id in each chunk): it is then passed over as `truncated`, and the
/// other slot's checkpoint is used.
pub fn write(
    store: &mut dyn store::Store,
    namespace: &str,
    slot: u8,
    cp: &Encoded,
) -> Result<(), store::StoreError> {
    for (i, c) in cp.chunks.iter().enumerate() {
        store.put(&chunk_key(namespace, slot, i as u32), c)?;
    }
    store.flush()?;
    store.put(&manifest_key(namespace, slot), &cp.manifest_value)?;
    store.flush()
}
