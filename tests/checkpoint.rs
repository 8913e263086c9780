//! Checkpoints: the engine's whole state saved part-way through a city and restored into a
//! fresh engine gives exactly the alerts of one uninterrupted replay; every kind of damage
//! to a checkpoint is recognised, never loaded.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use linewatch::alert::Alert;
use linewatch::checkpoint::store::{self, DirStore, Store};
use linewatch::checkpoint::{self, Fallback, SourceOffset};
use linewatch::config::Config;
use linewatch::engine::Engine;
use linewatch::generate::{self, GenOptions};
use linewatch::replay::{self, CollectSink};

/// A small city with every detector firing (deal networks, look-alikes, late, duplicate
/// and malformed records), generated once for all tests.
fn city() -> &'static [u8] {
    static CITY: OnceLock<Vec<u8>> = OnceLock::new();
    CITY.get_or_init(|| {
        let (events, _, _) = generate::generate_in_memory(&GenOptions {
            seed: 4,
            subscribers: 4_000,
            days: 4,
            ..GenOptions::default()
        })
        .expect("generate");
        events
    })
}

/// The city's cell map, so `runner_movement` holds state and fires too.
fn cells() -> Option<std::sync::Arc<linewatch::cells::CellMap>> {
    let mut csv = Vec::new();
    generate::write_cells(
        &GenOptions {
            seed: 4,
            subscribers: 4_000,
            days: 4,
            ..GenOptions::default()
        },
        &mut csv,
    )
    .unwrap();
    Some(std::sync::Arc::new(
        linewatch::cells::CellMap::parse(&csv).unwrap(),
    ))
}

/// An engine over `cfg` with the city's cell map.
fn engine(cfg: &Config) -> Engine {
    let mut e = Engine::new(cfg.clone());
    e.set_cells(cells());
    e
}

/// The city cut at its middle line.
fn halves() -> (&'static [u8], &'static [u8]) {
    let data = city();
    let mid = data.len() / 2;
    let cut = mid + data[mid..].iter().position(|&b| b == b'\n').unwrap() + 1;
    data.split_at(cut)
}

fn run(engine: &mut Engine, data: &[u8]) -> Vec<Alert> {
    let mut sink = CollectSink::default();
    replay::run(engine, data, &mut sink, |_| {}).unwrap();
    sink.alerts
}

/// Alerts without the wall-clock field, which differs from run to run by design.
fn comparable(alerts: Vec<Alert>) -> Vec<Alert> {
    alerts
        .into_iter()
        .map(|mut a| {
            a.detected_at = 0;
            a
        })
        .collect()
}

fn offsets() -> Vec<SourceOffset> {
    vec![SourceOffset {
        topic: "cdr".into(),
        partition: 0,
        offset: 12_345,
    }]
}

/// Small chunks, so a checkpoint of the test city is many chunks.
const CHUNK: usize = 16 * 1024;

fn encoded_after_first_half(cfg: &Config) -> (checkpoint::Encoded, Vec<Alert>) {
    let mut engine = engine(cfg);
    let first = run(&mut engine, halves().0);
    let enc = checkpoint::encode(&engine, offsets(), 7, 1_000, CHUNK).unwrap();
    (enc, first)
}

fn load(enc: &checkpoint::Encoded, current: &Config) -> Result<Engine, Fallback> {
    let m = checkpoint::decode_manifest(&enc.manifest_value)?;
    let sections = checkpoint::assemble(&m, |i| enc.chunks.get(i as usize).cloned())?;
    let mut e = checkpoint::restore_engine(&m, &sections, current)?;
    // The cell map is not state: the service gives the restored engine the one in force.
    e.set_cells(cells());
    Ok(e)
}

#[test]
fn restored_engine_gives_the_alerts_of_an_uninterrupted_replay() {
    let cfg = Config::default();
    let (whole, _) = replay::replay_bytes_with_cells(cfg.clone(), city(), cells());
    let (enc, mut alerts) = encoded_after_first_half(&cfg);
    assert!(enc.chunks.len() > 10, "{} chunks", enc.chunks.len());
    assert!(enc.chunks.iter().all(|c| c.len() <= CHUNK));
    let mut restored = load(&enc, &cfg).expect("restore");
    alerts.extend(run(&mut restored, halves().1));
    assert!(whole.len() > 100, "the city makes alerts of every kind");
    // runner_movement among them, from state that spans the cut.
    assert!(whole.iter().any(|a| a.detector == "runner_movement"));
    assert_eq!(comparable(alerts), comparable(whole));
    // Counters, watermark and every state size carry over too.
    let mut uninterrupted = engine(&cfg);
    run(&mut uninterrupted, city());
    assert_eq!(restored.counters(), uninterrupted.counters());
    assert_eq!(
        restored.state_stats().len(),
        uninterrupted.state_stats().len()
    );
    for ((n1, s1), (n2, s2)) in restored
        .state_stats()
        .iter()
        .zip(uninterrupted.state_stats())
    {
        assert_eq!((n1, s1.keys, s1.cap_hits), (&n2, s2.keys, s2.cap_hits));
    }
}

#[test]
fn reloaded_state_saves_again_to_sections_of_the_same_size() {
    let cfg = Config::default();
    let (enc, _) = encoded_after_first_half(&cfg);
    let restored = load(&enc, &cfg).unwrap();
    let again = restored.save_sections().unwrap();
    let m = checkpoint::decode_manifest(&enc.manifest_value).unwrap();
    let before = checkpoint::assemble(&m, |i| enc.chunks.get(i as usize).cloned()).unwrap();
    // Maps may be laid out differently after a reload; what they hold must be equal.
    assert_eq!(before.len(), again.len());
    for (a, b) in before.iter().zip(&again) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.bytes.len(), b.bytes.len(), "section {}", a.name);
    }
}

#[test]
fn changed_thresholds_keep_the_state_as_a_live_reload_does() {
    let cfg = Config::default();
    let mut changed = cfg.clone();
    changed.deal_line.threshold = 0.6;
    changed.bulk_sms.min_recipients = 25;
    // What a live reload at the cut gives...
    let mut live = engine(&cfg);
    let mut want = run(&mut live, halves().0);
    live.reconfigure(changed.clone());
    want.extend(run(&mut live, halves().1));
    // ...is what a restore under the changed configuration gives.
    let (enc, mut got) = encoded_after_first_half(&cfg);
    let mut restored = load(&enc, &changed).unwrap();
    assert_eq!(restored.config_version(), changed.version());
    got.extend(run(&mut restored, halves().1));
    assert_eq!(comparable(got), comparable(want));
}

#[test]
fn damaged_checkpoints_are_recognised_by_reason() {
    let cfg = Config::default();
    let (enc, _) = encoded_after_first_half(&cfg);

    let mut flipped = enc.clone();
    let c = &mut flipped.chunks[3];
    let at = c.len() / 2;
    c[at] ^= 0x40;
    assert_eq!(load(&flipped, &cfg).err(), Some(Fallback::Corrupt));

    let mut missing = enc.clone();
    missing.chunks.pop();
    assert_eq!(load(&missing, &cfg).err(), Some(Fallback::Truncated));

    let mut short = enc.clone();
    short.chunks[0].truncate(100);
    assert_eq!(load(&short, &cfg).err(), Some(Fallback::Truncated));

    // A chunk left over from another checkpoint under the same key.
    let (other, _) = {
        let mut e = Engine::new(cfg.clone());
        run(&mut e, &halves().0[..halves().0.len() / 2]);
        (
            checkpoint::encode(&e, offsets(), 8, 2_000, CHUNK).unwrap(),
            (),
        )
    };
    let mut mixed = enc.clone();
    mixed.chunks[1] = other.chunks[1].clone();
    assert_eq!(load(&mixed, &cfg).err(), Some(Fallback::Truncated));

    let mut torn = enc.manifest_value.clone();
    torn.truncate(torn.len() - 3);
    assert_eq!(
        checkpoint::decode_manifest(&torn).err(),
        Some(Fallback::Corrupt)
    );

    let mut future = enc.manifest_value.clone();
    future[4] = 99; // format version
    assert_eq!(
        checkpoint::decode_manifest(&future).err(),
        Some(Fallback::Incompatible)
    );

    // A manifest whose configuration this build cannot read.
    let mut m = enc.manifest.clone();
    m.config_json = r#"{"engine":{"no_such_key":1}}"#.into();
    let sections = checkpoint::assemble(&m, |i| enc.chunks.get(i as usize).cloned()).unwrap();
    assert_eq!(
        checkpoint::restore_engine(&m, &sections, &cfg).err(),
        Some(Fallback::Incompatible)
    );
}

#[test]
fn newest_complete_checkpoint_wins_and_a_damaged_one_falls_back_to_the_previous() {
    let cfg = Config::default();
    let dir = tempfile::tempdir().unwrap();
    let mut store = DirStore::new(dir.path()).unwrap();
    let (first_half, _) = halves();
    let quarter = first_half.len() / 2;
    let quarter = quarter
        + first_half[quarter..]
            .iter()
            .position(|&b| b == b'\n')
            .unwrap()
        + 1;
    let mut engine = Engine::new(cfg.clone());
    run(&mut engine, &first_half[..quarter]);
    let older = checkpoint::encode(&engine, offsets(), 10, 1, CHUNK).unwrap();
    checkpoint::write(&mut store, "g", 0, &older).unwrap();
    run(&mut engine, &first_half[quarter..]);
    let newer = checkpoint::encode(&engine, offsets(), 11, 2, CHUNK).unwrap();
    checkpoint::write(&mut store, "g", 1, &newer).unwrap();

    let mut skipped = Vec::new();
    let entries = store.load("g/").unwrap();
    let got = checkpoint::restore_newest(&entries, "g", &cfg, |_| true, |f| skipped.push(f));
    assert_eq!(got.unwrap().manifest.id, 11);
    assert!(skipped.is_empty());

    // Corrupt one chunk of the newer checkpoint on disk: the older one is used.
    let path = dir.path().join("g/1/chunk/000002");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let entries = store.load("g/").unwrap();
    let got = checkpoint::restore_newest(&entries, "g", &cfg, |_| true, |f| skipped.push(f));
    assert_eq!(got.unwrap().manifest.id, 10);
    assert_eq!(skipped, vec![Fallback::Corrupt]);

    // Nothing under another group's name.
    let entries: BTreeMap<_, _> = store.load("other/").unwrap();
    assert!(entries.is_empty());
}

#[test]
fn a_copy_of_the_engine_saves_the_same_state_and_detects_the_same() {
    // The service encodes a copy on another thread: it must hold everything.
    let mut engine = Engine::new(Config::default());
    run(&mut engine, halves().0);
    let mut copy = engine.clone();
    assert_eq!(
        copy.save_sections().unwrap(),
        engine.save_sections().unwrap()
    );
    assert_eq!(
        comparable(run(&mut copy, halves().1)),
        comparable(run(&mut engine, halves().1))
    );
}

#[test]
fn a_write_cut_short_before_its_manifest_leaves_the_previous_checkpoint_in_use() {
    // Slot 1 holds checkpoint 9, slot 0 checkpoint 10; checkpoint 11 goes to slot 1 and
    // the process dies after its chunks, before its manifest (kill -9 mid-write).
    let cfg = Config::default();
    let dir = tempfile::tempdir().unwrap();
    let mut store = DirStore::new(dir.path()).unwrap();
    let mut engine = Engine::new(cfg.clone());
    let (first_half, rest) = halves();
    run(&mut engine, first_half);
    let nine = checkpoint::encode(&engine, offsets(), 9, 1, CHUNK).unwrap();
    checkpoint::write(&mut store, "g", 1, &nine).unwrap();
    let ten = checkpoint::encode(&engine, offsets(), 10, 2, CHUNK).unwrap();
    checkpoint::write(&mut store, "g", 0, &ten).unwrap();
    run(&mut engine, rest);
    let eleven = checkpoint::encode(&engine, offsets(), 11, 3, CHUNK).unwrap();
    for (i, c) in eleven.chunks.iter().enumerate() {
        store
            .put(&checkpoint::chunk_key("g", 1, i as u32), c)
            .unwrap();
    }
    let entries = store.load("g/").unwrap();
    let got = checkpoint::restore_newest(&entries, "g", &cfg, |_| true, |_| {});
    assert_eq!(got.unwrap().manifest.id, 10);
    // Had checkpoint 10 been unusable too, slot 1's manifest (9) no longer matches its
    // chunks: it is passed over as truncated, never loaded with 11's chunks.
    let mut entries = entries;
    entries.remove(&checkpoint::manifest_key("g", 0));
    let mut skipped = Vec::new();
    let got = checkpoint::restore_newest(&entries, "g", &cfg, |_| true, |f| skipped.push(f));
    assert!(got.is_none());
    assert_eq!(skipped, vec![Fallback::Truncated]);
}

/// A snapshot by fork: the child encodes the engine as it was at the fork, whatever the
/// parent does next.
#[cfg(target_os = "linux")]
mod forked {
    use super::*;
    use linewatch::checkpoint::metrics::CheckpointMetrics;
    use linewatch::checkpoint::service::{self, Checkpointer, Cover, SnapshotMode};
    use linewatch::checkpoint::snapshot::{self, Fault};
    use prometheus::Registry;

    #[test]
    fn a_forked_snapshot_is_the_state_a_copy_gives_and_restores_to_the_same_alerts() {
        let cfg = Config::default();
        let (whole, _) = replay::replay_bytes_with_cells(cfg.clone(), city(), cells());
        let mut engine = engine(&cfg);
        let mut alerts = run(&mut engine, halves().0);
        let copied = checkpoint::encode_body(&engine.clone()).unwrap();
        let child = snapshot::fork_encode(&engine, None).expect("fork");
        // The parent goes on detecting while the child encodes: the snapshot is still the
        // state at the fork.
        let mut parent = engine.clone();
        let second = run(&mut engine, halves().1);
        let body = child.collect(0).expect("snapshot");
        assert_eq!(body.len(), copied.len());
        assert!(body == copied, "the forked body differs from the copy's");

        let meta = checkpoint::Meta {
            id: 7,
            created_ms: 1_000,
            partitions: vec![checkpoint::InputPartition {
                topic: "cdr".into(),
                partition: 0,
            }],
            offsets: offsets(),
            config: cfg.clone(),
            config_version: cfg.version(),
        };
        let enc = checkpoint::package(&body, meta, CHUNK).unwrap();
        let mut restored = load(&enc, &cfg).expect("restore");
        alerts.extend(run(&mut restored, halves().1));
        assert_eq!(comparable(alerts), comparable(whole));
        assert_eq!(comparable(second), comparable(run(&mut parent, halves().1)));
        assert_eq!(restored.counters(), engine.counters());
    }

    fn config(dir: &std::path::Path) -> Config {
        let mut cfg = Config::default();
        cfg.service.state_dir = dir.to_string_lossy().into_owned();
        cfg
    }

    fn the_partition(cfg: &Config) -> checkpoint::InputPartition {
        checkpoint::InputPartition {
            topic: cfg.service.input_topics[0].clone(),
            partition: 0,
        }
    }

    fn cover(cfg: &Config, offset: i64) -> Cover {
        Cover {
            partitions: vec![the_partition(cfg)],
            offsets: vec![SourceOffset {
                topic: cfg.service.input_topics[0].clone(),
                partition: 0,
                offset,
            }],
        }
    }

    fn wait_idle(c: &Checkpointer) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !c.idle() {
            assert!(
                std::time::Instant::now() < deadline,
                "checkpoint writer stuck"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn counter(r: &Registry, name: &str, label: (&str, &str)) -> f64 {
        r.gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == label.0 && l.value() == label.1)
            })
            .map(|m| m.get_counter().get_value())
            .sum()
    }

    /// The checkpoint the directory restores: its first offset and the engine's counters.
    fn standing(cfg: &Config) -> (i64, linewatch::engine::Counters) {
        let mut stores: Vec<Box<dyn Store>> =
            vec![Box::new(DirStore::new(&cfg.service.state_dir).unwrap())];
        let m = CheckpointMetrics::register(&Registry::new());
        let r = service::restore(&mut stores, cfg, &[the_partition(cfg)], &m)
            .expect("a checkpoint stands");
        (r.manifest.offsets[0].offset, r.engine.counters().clone())
    }

    #[test]
    fn a_store_that_missed_a_checkpoint_does_not_restore_its_older_one_first() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("first"), dir.path().join("second"));
        let cfg = config(&first);
        let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stores: Vec<Box<dyn Store>> = vec![
            Box::new(store::WritesFail {
                inner: DirStore::new(&first).unwrap(),
                broken: broken.clone(),
            }),
            // Stands in for the state topic: tried second.
            Box::new(DirStore::new(&second).unwrap()),
        ];
        let metrics = CheckpointMetrics::register(&Registry::new());
        let mut c = Checkpointer::start(stores, &cfg, metrics);
        let mut engine = engine(&cfg);
        run(&mut engine, halves().0);
        c.take(&engine, cover(&cfg, 100));
        wait_idle(&c);
        // The first store's volume fills; the second takes the next two checkpoints.
        broken.store(true, std::sync::atomic::Ordering::SeqCst);
        run(&mut engine, halves().1);
        for offset in [200, 300] {
            c.take(&engine, cover(&cfg, offset));
            wait_idle(&c);
        }
        let restore = || {
            let mut stores: Vec<Box<dyn Store>> = vec![
                Box::new(DirStore::new(&first).unwrap()),
                Box::new(DirStore::new(&second).unwrap()),
            ];
            let m = CheckpointMetrics::register(&Registry::new());
            let r = service::restore(&mut stores, &cfg, &[the_partition(&cfg)], &m)
                .expect("a checkpoint stands");
            r.manifest.offsets[0].offset
        };
        // Not the first store's checkpoint at 100: a restart would re-read from there.
        assert_eq!(restore(), 300);
        // The first store recovers: its next checkpoint is the newest again, and restored
        // from it.
        broken.store(false, std::sync::atomic::Ordering::SeqCst);
        c.take(&engine, cover(&cfg, 400));
        wait_idle(&c);
        std::fs::remove_dir_all(&second).unwrap();
        assert_eq!(restore(), 400);
    }

    /// A checkpoint of `partitions` made at wall time `created_ms`, written to slot 0 of
    /// `namespace` in `store`.
    fn write_at(store: &mut dyn Store, cfg: &Config, namespace: &str, created_ms: i64) {
        let meta = checkpoint::Meta {
            id: created_ms as u64,
            created_ms,
            partitions: vec![the_partition(cfg)],
            offsets: Vec::new(),
            config: cfg.clone(),
            config_version: cfg.version(),
        };
        // The state of the city's first few thousand records: a body of several chunks.
        static BODY: OnceLock<Vec<u8>> = OnceLock::new();
        let body = BODY.get_or_init(|| {
            let data = city();
            let end = data[..300_000].iter().rposition(|&b| b == b'\n').unwrap() + 1;
            let mut e = engine(cfg);
            run(&mut e, &data[..end]);
            checkpoint::encode_body(&e).unwrap()
        });
        // Small chunks: a set is several keys, and every one must go.
        let cp = checkpoint::package(body, meta, 4096).unwrap();
        assert!(cp.chunks.len() > 1);
        checkpoint::write(store, namespace, 0, &cp).unwrap();
    }

    fn keys_under(root: &std::path::Path, prefix: &str) -> usize {
        DirStore::new(root)
            .unwrap()
            .load_where(prefix, &|_| true)
            .unwrap()
            .len()
    }

    /// Every assignment a member checkpoints leaves its partition set behind when the group
    /// moves on. A set nobody has written for `service.rebuild_state_s` is removed, whole;
    /// the writer's own set, fresh sets, other groups' sets, the stage checkpoints and a
    /// set whose manifest cannot be read (its age unknown) stay.
    #[test]
    fn partition_sets_nobody_writes_any_more_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let group = cfg.service.group_id.clone();
        let now = linewatch::replay::wall_ms();
        let max_age = service::stale_after_ms(&cfg);
        assert_eq!(max_age, 7 * 86_400_000, "service.rebuild_state_s");
        let set = |n: u32| format!("{group}/{n:016x}");
        let old = now - max_age - 60_000;
        let mut store = DirStore::new(dir.path()).unwrap();
        write_at(&mut store, &cfg, &set(1), old); // the writer's own: kept
        write_at(&mut store, &cfg, &set(2), old); // abandoned: removed
        write_at(&mut store, &cfg, &set(3), now - max_age + 60_000); // kept
        write_at(&mut store, &cfg, &format!("other/{:016x}", 4), old); // another group's
        write_at(
            &mut store,
            &cfg,
            &format!("{group}-stages/stage-0-of-4"),
            old,
        );
        write_at(&mut store, &cfg, &set(5), old);
        store
            .put(&format!("{}/1/manifest", set(5)), b"not a manifest")
            .unwrap();
        let before = |p: &str| keys_under(dir.path(), p);
        let (own, gone, fresh, garbled) = (
            before(&set(1)),
            before(&set(2)),
            before(&set(3)),
            before(&set(5)),
        );
        assert!(gone > 2, "{gone} keys");

        let removed = service::sweep_stale(&mut store, &group, &set(1), now, max_age).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(keys_under(dir.path(), &format!("{}/", set(2))), 0);
        // Its folders went with it: nothing of the set is left on the volume.
        assert!(!dir.path().join(&group).join(format!("{:016x}", 2)).exists());
        assert_eq!(before(&set(1)), own);
        assert_eq!(before(&set(3)), fresh);
        assert_eq!(before(&set(5)), garbled);
        assert!(keys_under(dir.path(), "other/") > 2);
        assert!(keys_under(dir.path(), &format!("{group}-stages/")) > 2);
        // Nothing more to do.
        assert_eq!(
            service::sweep_stale(&mut store, &group, &set(1), now, max_age).unwrap(),
            0
        );
    }

    /// The writer sweeps after the first checkpoint it writes, and counts what it removed.
    #[test]
    fn the_checkpoint_writer_sweeps_abandoned_sets() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let group = cfg.service.group_id.clone();
        let abandoned = format!("{group}/{:016x}", 2);
        let long_ago = linewatch::replay::wall_ms() - service::stale_after_ms(&cfg) - 1;
        write_at(
            &mut DirStore::new(dir.path()).unwrap(),
            &cfg,
            &abandoned,
            long_ago,
        );
        let registry = Registry::new();
        let metrics = CheckpointMetrics::register(&registry);
        let stores: Vec<Box<dyn Store>> = vec![Box::new(DirStore::new(dir.path()).unwrap())];
        let mut c = Checkpointer::start(stores, &cfg, metrics.clone());
        let mut engine = engine(&cfg);
        run(&mut engine, halves().0);
        c.take(&engine, cover(&cfg, 100));
        wait_idle(&c);
        assert_eq!(keys_under(dir.path(), &format!("{abandoned}/")), 0);
        assert_eq!(metrics.sets_removed_count("dir"), 1);
        assert_eq!(
            counter(
                &registry,
                "linewatch_checkpoint_sets_removed_total",
                ("store", "dir")
            ),
            1.0
        );
        // The writer's own checkpoint stands.
        assert_eq!(standing(&cfg).0, 100);
    }

    #[test]
    fn a_failed_snapshot_leaves_the_previous_checkpoint_counted_and_never_stops_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let registry = Registry::new();
        let metrics = CheckpointMetrics::register(&registry);
        let stores: Vec<Box<dyn Store>> = vec![Box::new(DirStore::new(dir.path()).unwrap())];
        let mut c = Checkpointer::start(stores, &cfg, metrics).with_mode(SnapshotMode::Fork);

        let mut engine = engine(&cfg);
        run(&mut engine, halves().0);
        let good = engine.counters().clone();
        c.take(&engine, cover(&cfg, 100));
        wait_idle(&c);
        assert_eq!(standing(&cfg), (100, good.clone()));

        run(&mut engine, halves().1);
        let faults = [
            (Fault::ChildKilled, "died"),
            (Fault::EncodeError, "encode"),
            (Fault::Truncated, "truncated"),
            (Fault::PipeBroken, "pipe"),
        ];
        for (i, (fault, reason)) in faults.into_iter().enumerate() {
            c.inject_fault(fault);
            c.take(&engine, cover(&cfg, 200 + i as i64));
            wait_idle(&c);
            assert_eq!(
                counter(
                    &registry,
                    "linewatch_checkpoint_snapshot_failures_total",
                    ("reason", reason)
                ),
                1.0,
                "{fault:?}"
            );
            // Nothing of the failed checkpoint was written: the first one stands.
            assert_eq!(standing(&cfg), (100, good.clone()), "{fault:?}");
        }
        // The writer goes on: the next snapshot is taken and stored.
        c.take(&engine, cover(&cfg, 300));
        wait_idle(&c);
        assert_eq!(standing(&cfg), (300, engine.counters().clone()));
        for f in snapshot::Failure::ALL {
            let n = counter(
                &registry,
                "linewatch_checkpoint_snapshot_failures_total",
                ("reason", f.code()),
            );
            let want = if matches!(f.code(), "fork" | "timeout") {
                0.0
            } else {
                1.0
            };
            assert_eq!(n, want, "{}", f.code());
        }
    }
}

fn partition(topic: &str, partition: i32) -> checkpoint::InputPartition {
    checkpoint::InputPartition {
        topic: topic.into(),
        partition,
    }
}

#[test]
fn a_partition_set_is_named_the_same_in_any_order_and_apart_from_any_other() {
    let a = [partition("cdr", 0), partition("cdr", 1)];
    let b = [partition("cdr", 1), partition("cdr", 0)];
    assert_eq!(checkpoint::set_id(&a), checkpoint::set_id(&b));
    for other in [
        vec![partition("cdr", 0)],
        vec![partition("cdr", 1)],
        vec![partition("cdr", 0), partition("cdr", 2)],
        // Topic and partition must not run together ("cdr1" partition 0 vs "cdr" 10).
        vec![partition("cdr1", 0), partition("cdr", 1)],
    ] {
        assert_ne!(
            checkpoint::set_id(&a),
            checkpoint::set_id(&other),
            "{other:?}"
        );
    }
}

#[test]
fn restore_takes_the_checkpoint_of_exactly_the_assigned_set_and_says_why_when_none() {
    use linewatch::checkpoint::metrics::CheckpointMetrics;
    use linewatch::checkpoint::service::{self as svc, Cover};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.service.group_id = "g".into();
    let registry = prometheus::Registry::new();
    let metrics = CheckpointMetrics::register(&registry);
    let fallbacks = |reason: &str| -> u64 {
        use prometheus::Encoder;
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let series = format!("linewatch_checkpoint_fallbacks_total{{reason=\"{reason}\"}} ");
        String::from_utf8(text)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or(0)
    };
    let mut stores: Vec<Box<dyn Store>> = vec![Box::new(DirStore::new(dir.path()).unwrap())];
    assert!(svc::restore(&mut stores, &cfg, &[partition("cdr", 0)], &metrics).is_none());
    assert_eq!(
        fallbacks("missing"),
        1,
        "the group has no checkpoint at all"
    );

    // Two members' checkpoints in one group: partition 0's state and partition 1's.
    let mut engine = Engine::new(cfg.clone());
    run(&mut engine, halves().0);
    for (p, offset, id) in [(0, 100, 5), (1, 200, 6)] {
        let cover = Cover {
            partitions: vec![partition("cdr", p)],
            offsets: vec![SourceOffset {
                topic: "cdr".into(),
                partition: p,
                offset,
            }],
        };
        let enc = checkpoint::encode_covering(
            &engine,
            cover.partitions.clone(),
            cover.offsets,
            id,
            1_000,
            CHUNK,
        )
        .unwrap();
        let ns = svc::namespace("g", &cover.partitions);
        checkpoint::write(stores[0].as_mut(), &ns, 0, &enc).unwrap();
    }
    for (p, offset) in [(0, 100), (1, 200)] {
        let r = svc::restore(&mut stores, &cfg, &[partition("cdr", p)], &metrics)
            .expect("the set's own checkpoint");
        assert_eq!(r.manifest.partitions, vec![partition("cdr", p)]);
        assert_eq!(r.manifest.offsets[0].offset, offset);
    }
    // Both partitions on one member (the other went): no checkpoint covers the pair.
    let both = [partition("cdr", 1), partition("cdr", 0)];
    assert!(svc::restore(&mut stores, &cfg, &both, &metrics).is_none());
    assert_eq!(fallbacks("other_partitions"), 1);
    assert_eq!(fallbacks("missing"), 1, "unchanged");
}
