//! The engine as partitions spread over instances (issue 11, engine side; no broker): a
//! generated city dealt over 6 input partitions without keys, as a mediation feed writes
//! them, read by 3 ingest stages that route every valid record to the partition stages
//! owning its keys; P = 6 partition stages exchange evidence through in-memory queues
//! standing in for the internal topics. Every message and every piece of evidence crosses a
//! queue encoded (the checkpoint codec), evidence arrives after seeded random delays (from
//! at once to several barriers late) and the stages read their queues at seeded random
//! paces. The findings must be those of `replay` (one engine) on the same records: the same
//! `deal_line` subjects, at least 95 % of the same (detector, subject) pairs, no alert id
//! twice. One partition with no delay gives exactly `replay`'s alerts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use linewatch::alert::Alert;
use linewatch::cells::CellMap;
use linewatch::checkpoint::{codec, Section};
use linewatch::config::Config;
use linewatch::engine::shard_of;
use linewatch::exchange::Evidence;
use linewatch::generate::{self, GenOptions};
use linewatch::replay::{self, Summary};
use linewatch::streams::ingest::IngestStage;
use linewatch::streams::message::Message;
use linewatch::streams::stage::{Progress, Stage, StageStats};

fn city(seed: u64, subscribers: usize, days: u32) -> (Vec<u8>, Arc<CellMap>) {
    let opts = GenOptions {
        seed,
        subscribers,
        days,
        ..GenOptions::default()
    };
    let (events, _, _) = generate::generate_in_memory(&opts).unwrap();
    let mut csv = Vec::new();
    generate::write_cells(&opts, &mut csv).unwrap();
    (events, CellMap::parse(&csv).unwrap().into())
}

/// The input as `replay` reads it: one record a line, blank lines skipped.
fn lines(events: &[u8]) -> Vec<&[u8]> {
    events
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}

/// How the cluster is wired and disturbed.
#[derive(Clone)]
struct Layout {
    seed: u64,
    /// Input partitions (records dealt over them at random, no key).
    inputs: usize,
    /// Ingest stages; stage `j` reads inputs `j`, `j + ingests`, ...
    ingests: usize,
    /// Partition stages.
    partitions: usize,
    /// Records an ingest reads per step, at most (at random from 1).
    batch: usize,
    /// Evidence arrives this many steps late at most (at random from 0).
    max_delay: usize,
    /// Each stage commits its outputs (alerts and evidence sent) every this many steps.
    commit_every: usize,
    /// Kill partition stage `.0` at step `.1`, restoring it from its last save.
    kill: Option<(usize, usize)>,
    /// A broken exchange, to show the measure catches it: the outboxes are thrown away.
    drop_outbox: bool,
    /// Partition `.0` moves to a new owner every `.1` steps, as the Kafka stage task
    /// rebuilds it: a new stage re-reads its queues from the start up to the positions
    /// committed with its last published outputs, dropping what that makes (the old owner
    /// published it), then goes on. The positions are [`Progress`]'s, what the stage task
    /// commits.
    rebuild: Option<(usize, usize)>,
    /// Each piece of evidence sent is delivered a second time, at its own delay, with this
    /// probability: at least once over Kafka, a partition's new owner publishes again what
    /// the old one sent after its last commit.
    repeat_evidence: f64,
}

/// A partition stage and its input queues, as a Kafka consumer sees them: logs and read
/// positions. What it made since its last commit is held back (an open transaction).
struct Node {
    stage: Stage,
    /// Routed records and marks, encoded.
    log: Vec<Vec<u8>>,
    read: usize,
    /// Evidence delivered to it, encoded.
    inbox: Vec<Vec<u8>>,
    delivered: usize,
    alerts: Vec<Alert>,
    outbox: Vec<(usize, Evidence)>,
    /// Its last save: sections and the two read positions.
    saved: Option<(Vec<Section>, usize, usize)>,
    /// For each piece of evidence in `inbox`, the log position read when it was delivered
    /// (a rebuild delivers it again at the same point).
    inbox_at: Vec<usize>,
    /// What of its queues may be committed, and the positions committed with its last
    /// published outputs (log, inbox).
    progress: Progress,
    committed: (usize, usize),
}

/// A restore: the partition, whether from a save (else from nothing), and the messages of
/// its log it read again.
type Restore = (usize, bool, usize);

struct Outcome {
    alerts: Vec<Alert>,
    ingest: Vec<linewatch::engine::Counters>,
    stats: Vec<StageStats>,
    restores: Vec<Restore>,
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    codec::encode(v).expect("encode")
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> T {
    codec::decode(b).expect("a message or evidence decodes as it was encoded")
}

struct Cluster<'a> {
    cfg: Config,
    cells: Arc<CellMap>,
    layout: Layout,
    wall: i64,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    /// Evidence in flight: (step it arrives, partition, encoded).
    network: Vec<(usize, usize, Vec<u8>)>,
    committed: Vec<Alert>,
    ingests: Vec<IngestStage>,
    inputs: Vec<Vec<&'a [u8]>>,
    /// Each input record's event time (`i64::MIN` if it has none), as a consumer reads it
    /// from the Kafka record's timestamp without decoding the value.
    times: Vec<Vec<i64>>,
    at: Vec<usize>,
    restores: Vec<Restore>,
}

impl<'a> Cluster<'a> {
    fn new(cfg: &Config, cells: &Arc<CellMap>, records: &[&'a [u8]], layout: &Layout) -> Self {
        let wall = replay::wall_ms();
        let mut rng = ChaCha8Rng::seed_from_u64(layout.seed);
        let mut inputs: Vec<Vec<&[u8]>> = vec![Vec::new(); layout.inputs];
        let mut times: Vec<Vec<i64>> = vec![Vec::new(); layout.inputs];
        let opts = linewatch::event::DecodeOptions::default();
        for r in records {
            let i = rng.gen_range(0..layout.inputs);
            inputs[i].push(r);
            let ts = linewatch::event::decode(r, &opts).map_or(i64::MIN, |e| e.ts);
            times[i].push(ts);
        }
        let ingests = (0..layout.ingests)
            .map(|j| {
                let mut s = IngestStage::new(cfg.clone(), j as i32, layout.partitions);
                s.set_cells(Some(cells.clone()));
                for i in (j..layout.inputs).step_by(layout.ingests) {
                    s.assign_partition(i as i32, wall);
                }
                s
            })
            .collect();
        let nodes = (0..layout.partitions)
            .map(|p| Node {
                stage: Cluster::stage(cfg, cells, layout, p, wall),
                log: Vec::new(),
                read: 0,
                inbox: Vec::new(),
                delivered: 0,
                alerts: Vec::new(),
                outbox: Vec::new(),
                saved: None,
                inbox_at: Vec::new(),
                progress: Progress::default(),
                committed: (0, 0),
            })
            .collect();
        Cluster {
            cfg: cfg.clone(),
            cells: cells.clone(),
            layout: layout.clone(),
            wall,
            rng,
            nodes,
            network: Vec::new(),
            committed: Vec::new(),
            ingests,
            at: vec![0; layout.inputs],
            inputs,
            times,
            restores: Vec::new(),
        }
    }

    fn stage(cfg: &Config, cells: &Arc<CellMap>, l: &Layout, p: usize, wall: i64) -> Stage {
        let mut s = Stage::new(cfg, p, l.partitions);
        s.set_cells(Some(cells.clone()));
        // The sources are the input partitions, whichever ingest reads them.
        for i in 0..l.inputs {
            s.expect_source(i as i32, wall);
        }
        s
    }

    /// Ingest `j` reads up to `n` records, each from the input whose next record is the
    /// earliest (as a Kafka Streams task picks across its partitions); false once its
    /// inputs are read.
    fn ingest(&mut self, j: usize, n: usize) -> bool {
        let mut out = Vec::new();
        let mine: Vec<usize> = (j..self.layout.inputs)
            .step_by(self.layout.ingests)
            .collect();
        for _ in 0..n {
            let Some(&i) = mine
                .iter()
                .filter(|&&i| self.at[i] < self.inputs[i].len())
                .min_by_key(|&&i| (self.times[i][self.at[i]], i))
            else {
                return false;
            };
            let rec = self.inputs[i][self.at[i]];
            self.at[i] += 1;
            // Rejected records are counted by the ingest (its counters are compared).
            self.ingests[j].ingest(rec, i as i32, self.wall, &mut out);
        }
        for (p, m) in out {
            self.nodes[p].log.push(encode(&m));
        }
        true
    }

    /// Partition `p` reads up to `n` messages of its log.
    fn consume(&mut self, p: usize, n: usize) {
        let node = &mut self.nodes[p];
        let end = node.read.saturating_add(n).min(node.log.len());
        for i in node.read..end {
            let m: Message = decode(&node.log[i]);
            node.progress.read_message(m.source(), i as i64);
            node.stage.receive(m, self.wall, &mut node.alerts);
        }
        node.read = end;
        node.progress.sync(&node.stage, std::iter::empty());
        let out = node.stage.take_outbox();
        node.outbox.extend(out);
    }

    /// Evidence due by `step` arrives, in a random interleaving, and is delivered.
    fn arrive(&mut self, step: usize) {
        let (mut due, later): (Vec<_>, Vec<_>) = self.network.drain(..).partition(|x| x.0 <= step);
        self.network = later;
        for i in (1..due.len()).rev() {
            due.swap(i, self.rng.gen_range(0..=i));
        }
        for (_, q, bytes) in due {
            let node = &mut self.nodes[q];
            node.inbox.push(bytes);
            let e: Evidence = decode(&node.inbox[node.delivered]);
            node.progress.read_evidence(node.delivered as i64);
            node.inbox_at.push(node.read);
            node.delivered += 1;
            node.stage.deliver(e);
            node.progress.sync(&node.stage, std::iter::empty());
        }
    }

    /// Partition `p` commits: its alerts leave, its evidence is sent (each piece with its own
    /// delay), and with `save` its state is saved with its read positions.
    fn commit(&mut self, p: usize, step: usize, save: bool) {
        let node = &mut self.nodes[p];
        let out = node.stage.take_outbox();
        node.outbox.extend(out);
        self.committed.append(&mut node.alerts);
        for (q, e) in node.outbox.drain(..) {
            if self.layout.drop_outbox {
                continue;
            }
            let delay = self.rng.gen_range(0..=self.layout.max_delay);
            self.network.push((step + delay, q, encode(&e)));
            // (No draw without repeats: the other layouts' runs stay as they were.)
            if self.layout.repeat_evidence > 0.0 && self.rng.gen_bool(self.layout.repeat_evidence) {
                let delay = self.rng.gen_range(0..=self.layout.max_delay);
                self.network.push((step + delay, q, encode(&e)));
            }
        }
        if save {
            let sections = node.stage.save().expect("save");
            node.saved = Some((sections, node.read, node.delivered));
        }
        let (log, inbox) = node.progress.safe();
        node.committed = (
            log.map_or(0, |o| o as usize),
            inbox.map_or(0, |o| o as usize),
        );
    }

    /// Partition `p` moves to a new owner with nothing but the queues: its state is rebuilt
    /// by re-reading them up to the committed positions with the outputs dropped, then what
    /// was read after them is read again and published.
    fn rebuild(&mut self, p: usize) {
        let (l, wall) = (&self.layout, self.wall);
        let mut stage = Cluster::stage(&self.cfg, &self.cells, l, p, wall);
        let node = &mut self.nodes[p];
        let (log, inbox) = node.committed;
        let mut dropped = Vec::new();
        let mut e = 0;
        for i in 0..log {
            while e < inbox && node.inbox_at[e] <= i {
                stage.deliver(decode(&node.inbox[e]));
                e += 1;
            }
            stage.receive(decode(&node.log[i]), wall, &mut dropped);
        }
        while e < inbox {
            stage.deliver(decode(&node.inbox[e]));
            e += 1;
        }
        stage.take_outbox();
        node.alerts.clear();
        node.outbox.clear();
        self.restores
            .push((p, false, node.read.saturating_sub(log)));
        node.stage = stage;
        node.progress = Progress::default();
        node.read = log;
        node.inbox.truncate(node.delivered);
        node.inbox_at.truncate(inbox);
        // Evidence read after the committed position is read (and delivered) again.
        let again: Vec<Vec<u8>> = node.inbox.drain(inbox..).collect();
        node.delivered = inbox;
        for bytes in again {
            node.progress.read_evidence(node.delivered as i64);
            node.inbox_at.push(node.read);
            node.stage.deliver(decode(&bytes));
            node.inbox.push(bytes);
            node.delivered += 1;
        }
        node.progress.sync(&node.stage, std::iter::empty());
    }

    /// Partition `p` dies with what it had not committed, and comes back from its last save,
    /// re-reading its queues from the positions saved with it.
    fn kill(&mut self, p: usize) {
        let (l, wall) = (&self.layout, self.wall);
        let node = &mut self.nodes[p];
        node.alerts.clear();
        node.outbox.clear();
        let (stage, read, delivered) = match &node.saved {
            Some((sections, read, delivered)) => {
                let mut s = Stage::restore(&self.cfg, p, l.partitions, sections, l.partitions)
                    .expect("restore");
                s.set_cells(Some(self.cells.clone()));
                (s, *read, *delivered)
            }
            None => (Cluster::stage(&self.cfg, &self.cells, l, p, wall), 0, 0),
        };
        self.restores
            .push((p, node.saved.is_some(), node.read - read));
        node.stage = stage;
        node.read = read;
        node.delivered = delivered;
        // The evidence delivered after the save is read again.
        let node = &mut self.nodes[p];
        for i in node.delivered..node.inbox.len() {
            let e: Evidence = decode(&node.inbox[i]);
            node.stage.deliver(e);
        }
        node.delivered = node.inbox.len();
    }

    fn run(mut self) -> Outcome {
        let l = self.layout.clone();
        let mut step = 0;
        let mut reading: Vec<bool> = vec![true; l.ingests];
        while reading.iter().any(|&r| r) {
            step += 1;
            let live: Vec<usize> = (0..l.ingests).filter(|&j| reading[j]).collect();
            let j = live[self.rng.gen_range(0..live.len())];
            let n = self.rng.gen_range(1..=l.batch);
            reading[j] = self.ingest(j, n);
            if !reading[j] {
                let mut out = Vec::new();
                self.ingests[j].mark(self.wall, &mut out);
                for (p, m) in out {
                    self.nodes[p].log.push(encode(&m));
                }
            }
            for p in 0..l.partitions {
                let backlog = self.nodes[p].log.len() - self.nodes[p].read;
                let n = self.rng.gen_range(0..=backlog.min(3 * l.batch));
                self.consume(p, n);
            }
            self.arrive(step);
            for p in 0..l.partitions {
                if (step + p) % l.commit_every == 0 {
                    let save = l.kill.is_some_and(|k| k.0 == p);
                    self.commit(p, step, save);
                }
            }
            if let Some((p, at)) = l.kill {
                if at == step {
                    self.kill(p);
                }
            }
            if let Some((p, every)) = l.rebuild {
                if step % every == every / 2 {
                    self.rebuild(p);
                }
            }
        }
        // The input is read: every queue is drained (evidence still arriving late), then
        // the partitions flush until no evidence is left anywhere.
        while !self.network.is_empty() || self.nodes.iter().any(|n| n.read < n.log.len()) {
            step += 1;
            for p in 0..l.partitions {
                self.consume(p, usize::MAX);
                self.commit(p, step, false);
            }
            self.arrive(step);
        }
        for round in 0.. {
            assert!(
                round < 100,
                "evidence still making evidence after 100 flushes"
            );
            for p in 0..l.partitions {
                let node = &mut self.nodes[p];
                node.stage.flush(self.wall, &mut node.alerts);
                self.commit(p, step, false);
            }
            self.arrive(usize::MAX);
            let pending: usize = self.nodes.iter().map(|n| n.stage.pending_evidence()).sum();
            if pending == 0 && self.network.is_empty() {
                break;
            }
        }
        Outcome {
            alerts: self.committed,
            ingest: self.ingests.iter().map(|i| i.counters()).collect(),
            stats: self.nodes.iter().map(|n| n.stage.stats()).collect(),
            restores: self.restores,
        }
    }
}

fn run(cfg: &Config, events: &[u8], cells: &Arc<CellMap>, layout: &Layout) -> Outcome {
    let records = lines(events);
    Cluster::new(cfg, cells, &records, layout).run()
}

type Pairs = BTreeSet<(String, String)>;

fn pairs(alerts: &[Alert]) -> Pairs {
    alerts
        .iter()
        .map(|a| (a.detector.clone(), a.subject.clone()))
        .collect()
}

fn subjects(alerts: &[Alert], detector: &str) -> BTreeSet<String> {
    alerts
        .iter()
        .filter(|a| a.detector == detector)
        .map(|a| a.subject.clone())
        .collect()
}

/// How the cluster's findings compare with one engine's.
struct Agreement {
    /// Share of one engine's (detector, subject) pairs the cluster found, and of the
    /// cluster's that one engine found.
    recall: f64,
    precision: f64,
    /// Per detector: pairs found by both, by one engine only, by the cluster only.
    by_detector: BTreeMap<String, (usize, usize, usize)>,
    deal_same: bool,
    /// Alert ids the cluster gave twice.
    twice: usize,
}

fn agreement(one: &[Alert], many: &[Alert]) -> Agreement {
    let (a, b) = (pairs(one), pairs(many));
    let both = a.intersection(&b).count();
    let mut by_detector: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for x in a.union(&b) {
        let e = by_detector.entry(x.0.clone()).or_default();
        match (a.contains(x), b.contains(x)) {
            (true, true) => e.0 += 1,
            (true, false) => e.1 += 1,
            _ => e.2 += 1,
        }
    }
    let ids: BTreeSet<&str> = many.iter().map(|x| x.alert_id.as_str()).collect();
    Agreement {
        recall: both as f64 / a.len().max(1) as f64,
        precision: both as f64 / b.len().max(1) as f64,
        by_detector,
        deal_same: subjects(one, "deal_line") == subjects(many, "deal_line"),
        twice: many.len() - ids.len(),
    }
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pairs: {:.2} % of one engine's found, {:.2} % of the cluster's confirmed; \
             deal_line subjects the same: {}; alert ids twice: {}; per detector (both, one \
             engine only, cluster only): {:?}",
            100.0 * self.recall,
            100.0 * self.precision,
            self.deal_same,
            self.twice,
            self.by_detector
        )
    }
}

/// The records a 3-day, 10,000-subscriber city with a cell map dealt over 6 inputs makes:
/// a barrier (60 s of event time) is this many steps of the cluster.
fn layout(seed: u64, records: usize, days: u32) -> Layout {
    let batch = 40;
    let per_epoch = records / (days as usize * 1440);
    let steps_per_epoch = (per_epoch * 2 / batch).max(1);
    Layout {
        seed,
        inputs: 6,
        ingests: 3,
        partitions: 6,
        batch,
        // Up to three barriers late.
        max_delay: 3 * steps_per_epoch,
        commit_every: 1,
        kill: None,
        drop_outbox: false,
        rebuild: None,
        repeat_evidence: 0.0,
    }
}

fn baseline(events: &[u8], cells: &Arc<CellMap>) -> (Vec<Alert>, Summary) {
    let (one, summary) =
        replay::replay_bytes_sharded(Config::default(), events, Some(cells.clone()), 1);
    for d in linewatch::detect::DETECTORS {
        assert!(
            one.iter().any(|a| a.detector == d),
            "no {d} alert on the city: the comparison would not cover it"
        );
    }
    (one, summary)
}

const DAYS: u32 = 3;
const SUBSCRIBERS: usize = 10_000;

fn assert_bar(what: &str, one: &[Alert], out: &Outcome) -> Agreement {
    let a = agreement(one, &out.alerts);
    eprintln!(
        "{what}: {} alerts against replay's {}; {a}; stage stats: {:?}",
        out.alerts.len(),
        one.len(),
        out.stats
    );
    assert!(a.deal_same, "{what}: deal_line subjects differ: {a}");
    assert!(a.recall >= 0.95 && a.precision >= 0.95, "{what}: {a}");
    assert_eq!(a.twice, 0, "{what}: {a}");
    a
}

#[test]
fn six_partitions_over_three_ingests_find_what_one_engine_finds() {
    let (events, cells) = city(5, SUBSCRIBERS, DAYS);
    let (one, summary) = baseline(&events, &cells);
    let l = layout(11, summary.events_total as usize, DAYS);
    let out = run(&Config::default(), &events, &cells, &l);
    if std::env::var("LW_DEBUG_MISSED").is_ok() {
        let got = pairs(&out.alerts);
        for a in &one {
            if !got.contains(&(a.detector.clone(), a.subject.clone())) {
                eprintln!("MISSED {}", serde_json::to_string(a).unwrap());
            }
        }
    }
    assert_bar("6 partitions, 3 ingests", &one, &out);
    // Evidence did cross partitions, late, and every stage ran barriers of its own.
    let sent: u64 = out.stats.iter().map(|s| s.sent).sum();
    let received: u64 = out.stats.iter().map(|s| s.received).sum();
    assert!(sent > 100 && received == sent, "{:?}", out.stats);
    assert!(out
        .stats
        .iter()
        .all(|s| s.barriers > 1000 && s.misrouted == 0));
    // Every record validated once: the ingests' counters sum to replay's.
    let sum = |f: fn(&linewatch::engine::Counters) -> u64| out.ingest.iter().map(f).sum::<u64>();
    assert_eq!(sum(|c| c.events_total), summary.events_total);
    assert_eq!(sum(|c| c.events_malformed), summary.events_malformed);
    // A re-delivery read by another ingest task than its original is caught on the
    // partitions (once per record: on its sender's).
    let on_partitions: u64 = out.stats.iter().map(|s| s.duplicates).sum();
    eprintln!(
        "duplicates: {} by the ingests, {on_partitions} on the partitions, {} by replay; late: \
         {} by the ingests, {} by replay",
        sum(|c| c.events_duplicate),
        summary.events_duplicate,
        sum(|c| c.events_late),
        summary.events_late
    );
    assert!(on_partitions > 0);
    assert_eq!(
        sum(|c| c.events_duplicate) + on_partitions,
        summary.events_duplicate
    );
    assert!(summary.events_duplicate > 0 && summary.events_malformed > 0);
}

#[test]
fn one_partition_with_no_delay_gives_exactly_replays_alerts() {
    let (events, cells) = city(5, 5_000, 2);
    let (one, summary) = baseline(&events, &cells);
    let l = Layout {
        seed: 1,
        inputs: 1,
        ingests: 1,
        partitions: 1,
        batch: 50,
        max_delay: 0,
        commit_every: 1,
        kill: None,
        drop_outbox: false,
        rebuild: None,
        repeat_evidence: 0.0,
    };
    let out = run(&Config::default(), &events, &cells, &l);
    let ids = |v: &[Alert]| v.iter().map(|a| a.alert_id.clone()).collect::<Vec<_>>();
    assert!(one.len() > 100, "{} alerts", one.len());
    assert!(
        ids(&one) == ids(&out.alerts),
        "{} alerts against replay's {}: {}",
        out.alerts.len(),
        one.len(),
        agreement(&one, &out.alerts)
    );
    // The whole alerts but the wall-clock time they were made at.
    let strip = |v: &[Alert]| {
        v.iter()
            .map(|a| Alert {
                detected_at: 0,
                ..a.clone()
            })
            .collect::<Vec<_>>()
    };
    assert!(strip(&one) == strip(&out.alerts));
    let c = &out.ingest[0];
    assert_eq!(
        (c.events_total, c.events_valid, c.events_late),
        (
            summary.events_total,
            summary.events_valid,
            summary.events_late
        )
    );
}

#[test]
fn a_partition_killed_and_restored_from_its_save_still_meets_the_bar() {
    let (events, cells) = city(5, SUBSCRIBERS, DAYS);
    let (one, summary) = baseline(&events, &cells);
    let mut l = layout(12, summary.events_total as usize, DAYS);
    let steps = summary.events_total as usize * 2 / l.batch;
    // Outputs leave at commits every few barriers; partition 2 dies half way, half way
    // between two of its commits (it commits at steps with (step + 2) % every == 0).
    let every = l.max_delay.max(4);
    l.commit_every = every;
    l.kill = Some((2, (steps / 2 / every + 1) * every + every / 2 - 2));
    let out = run(&Config::default(), &events, &cells, &l);
    let [(2, true, again)] = out.restores[..] else {
        panic!("{:?}", out.restores);
    };
    assert!(again > 0, "nothing read again");
    assert_bar("6 partitions, partition 2 killed", &one, &out);
    // The whole city's share would hide a partition's loss (a sixth of the keys): on the
    // subjects partition 2 owns, the bar holds too. (Restored empty instead of from its
    // save, the cluster kept the bar over the whole city, 95.6 %, but found 71.1 % of
    // replay's pairs on partition 2's subjects.)
    let mine = |v: &[Alert]| -> Vec<Alert> {
        v.iter()
            .filter(|a| shard_of(linewatch::ids::id(&a.subject), l.partitions) == 2)
            .cloned()
            .collect()
    };
    let (one2, many2) = (mine(&one), mine(&out.alerts));
    assert!(one2.len() > 20, "{} alerts on partition 2", one2.len());
    assert_bar(
        "partition 2's subjects",
        &one2,
        &Outcome {
            alerts: many2,
            ingest: Vec::new(),
            stats: Vec::new(),
            restores: Vec::new(),
        },
    );
}

/// At least once, evidence can arrive twice: a partition's new owner publishes again what
/// the old one sent after its last commit, as the broker tests' kills make it do. With every
/// piece delivered a second time, each copy at its own delay, on the broker tests' city
/// (3,000 subscribers, 3 days), the bar holds, every `deal_line` subject included. Before
/// `line_handover` counted each answering partition once, a repeated answer stood for a
/// partition that had not answered yet, a query was settled before the partition holding
/// the right earlier line answered, and the handover was missed, and the `deal_line` built
/// on it: here 4 of 5 handovers and 7 of 8 deal lines with both layouts, the signature of
/// the kill test's failure in CI on 2026-12-07.
#[test]
fn evidence_delivered_twice_finds_what_one_engine_finds() {
    let (events, cells) = city(5, 3_000, DAYS);
    let (one, summary) = baseline(&events, &cells);
    for seed in [11, 13] {
        let mut l = layout(seed, summary.events_total as usize, DAYS);
        l.repeat_evidence = 1.0;
        let out = run(&Config::default(), &events, &cells, &l);
        let what = format!("6 partitions, every piece of evidence twice, layout {seed}");
        let a = assert_bar(&what, &one, &out);
        assert_eq!(
            a.by_detector.get("line_handover").map(|x| (x.1, x.2)),
            Some((0, 0)),
            "{what}: {a}"
        );
        let sent: u64 = out.stats.iter().map(|s| s.sent).sum();
        let received: u64 = out.stats.iter().map(|s| s.received).sum();
        assert!(received > sent * 3 / 2, "{what}: {:?}", out.stats);
    }
}

/// The bar is not met by luck: with the evidence between partitions thrown away, what one
/// engine finds is not found.
#[test]
fn without_the_outbox_the_bar_is_not_met() {
    let (events, cells) = city(5, SUBSCRIBERS, DAYS);
    let (one, summary) = baseline(&events, &cells);
    let mut l = layout(11, summary.events_total as usize, DAYS);
    l.drop_outbox = true;
    let out = run(&Config::default(), &events, &cells, &l);
    let a = agreement(&one, &out.alerts);
    eprintln!("outbox dropped: {a}");
    // The detectors that judge across keys lose what the others told them: no handover is
    // found (the audience queries never reach the earlier lines), runners and deal lines
    // go missing. The per-key detectors are as before, so the pair share alone stays high.
    assert!(!a.deal_same, "{a}");
    let lost = |d: &str| a.by_detector.get(d).map_or(0, |x| x.1);
    assert!(
        lost("line_handover") > 0 && lost("runner_movement") > 0,
        "{a}"
    );
    assert_eq!(
        a.by_detector.get("line_handover").map(|x| x.0),
        Some(0),
        "{a}"
    );
}

/// What a rebalance calls: partition p of P restored from a checkpoint written by another
/// layout holds exactly what the engine's own restore into P shards gives shard p (every
/// component's keys, cap hits and counters), for 2 → 3, 3 → 2 and 1 → 6.
#[test]
fn a_partition_restores_its_key_groups_from_another_layouts_save() {
    use linewatch::engine::{Engine, PartShard};
    let (events, cells) = city(6, 3_000, 2);
    let records = lines(&events);
    let cfg = Config::default();
    let wall = replay::wall_ms();
    for (saved, n) in [(2, 3), (3, 2), (1, 6)] {
        let mut e = Engine::with_shards(cfg.clone(), saved);
        e.set_cells(Some(cells.clone()));
        let mut alerts = Vec::new();
        for r in &records[..records.len() / 2] {
            e.process(r, 0, wall, &mut alerts);
        }
        assert!(!alerts.is_empty());
        let sections = e.save_sections().unwrap();
        let mut whole = Engine::with_shards(cfg.clone(), n);
        whole.load_sections(&sections).unwrap();
        let mut keys = BTreeMap::new();
        let mut alerts_total = 0;
        for p in 0..n {
            // Only the saved shards sharing key groups with p are needed.
            let part = PartShard::restore(&cfg, p, n, &sections, saved).unwrap();
            alerts_total += part.counters().alerts_total;
            for (name, s) in part.state_stats() {
                let k: &mut (usize, u64) = keys.entry(name).or_default();
                k.0 += s.keys;
                k.1 += s.cap_hits;
            }
        }
        let expected: BTreeMap<_, _> = whole
            .state_stats()
            .into_iter()
            .filter(|(name, _)| *name != "dedup")
            .map(|(name, s)| (name, (s.keys, s.cap_hits)))
            .collect();
        assert_eq!(keys, expected, "{saved} -> {n}");
        assert!(expected.values().filter(|v| v.0 > 0).count() >= 6);
        assert_eq!(
            alerts_total,
            whole.counters().alerts_total,
            "{saved} -> {n}"
        );
    }
}

/// A partition that keeps moving to a new owner, rebuilt as the Kafka stage task does:
/// from its queues up to the positions committed with its published outputs ([`Progress`]),
/// those outputs dropped, then what was read after them read again and published: the bar
/// holds on the whole city and on the moved partition's own subjects, and an alert repeats
/// only as at least once allows (the old owner's outputs after the committed positions).
/// (Committing every message read instead, what the stage task did, lost nothing more in
/// this model: its queues hold little in flight at a commit, while over Kafka evidence
/// waited up to `allowed_lateness_s` of event time for the watermark; the broker test is
/// what showed that loss.)
#[test]
fn a_partition_rebuilt_from_its_committed_positions_loses_nothing() {
    let (events, cells) = city(5, SUBSCRIBERS, DAYS);
    let (one, summary) = baseline(&events, &cells);
    let steps = summary.events_total as usize * 2 / 40;
    let mut l = layout(13, summary.events_total as usize, DAYS);
    l.rebuild = Some((2, steps / 12));
    let out = run(&Config::default(), &events, &cells, &l);
    assert!(out.restores.len() >= 10, "{:?}", out.restores);
    let check = |what: &str, one: &[Alert], many: &[Alert]| {
        let a = agreement(one, many);
        eprintln!("{what}, rebuilt {} times: {a}", out.restores.len());
        assert!(
            a.deal_same && a.recall >= 0.95 && a.precision >= 0.95,
            "{what}: {a}"
        );
        // At least once, as over Kafka (the broker test's bound): the rebuilt partition's
        // outputs after its committed positions are made again (7 of its 45 in the runs).
        assert!(a.twice * 5 < many.len(), "{what}: {a}");
    };
    let mine = |v: &[Alert]| -> Vec<Alert> {
        v.iter()
            .filter(|a| shard_of(linewatch::ids::id(&a.subject), l.partitions) == 2)
            .cloned()
            .collect()
    };
    check("6 partitions, partition 2 rebuilt", &one, &out.alerts);
    check("partition 2's subjects", &mine(&one), &mine(&out.alerts));
}
