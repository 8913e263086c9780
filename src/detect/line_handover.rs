//! `line_handover`: a new line reaches a customer base that largely overlaps an earlier
//! line's ("new number" texted to the old list).
//!
//! Lines that text at least `min_recipients` distinct numbers within `burst_window_s` (a
//! blast, as the "new number" text and adverts are) get a MinHash sketch of their audience
//! (`sketch_size` 32-bit minima, 256 bytes at the default): bounded memory whatever the list
//! size. A line first seen after the warm-up is compared with every sketched earlier line
//! when it is sketched and again each time its audience grows by a quarter, until it
//! matches. The sketches only pick candidates (any shared minimum): MinHash overlap
//! estimates between a list of 15 and one of 300 are too noisy to decide on, so the overlap
//! of a candidate is then counted exactly against its contact list, which the store still
//! holds within its retention (the sketch estimate is the fallback when the earlier list has
//! expired). The candidate scan is over sketched lines only, the few that blast; banded LSH
//! would replace it if that population grew to millions.
//!
//! Split by key (`docs/sharding.md`): a line's sketch lives on the shard owning the line
//! and is kept in its sender role. The comparison with every earlier line is the design's
//! one broadcast: the new line sends [`Body::AudienceQuery`] (its minima and its recipients'
//! fingerprints) to every shard; at the barrier each shard scans the lines it owns and
//! answers with its best candidate at or above `min_overlap` as [`Body::AudienceMatch`], or
//! [`Body::AudienceNone`], naming itself. The new line's shard tallies the answers
//! (`Tallies`, each sender once: at least once, an answer can arrive twice) and
//! decides the earliest-sent query with a match (the one a scan of every line at each
//! record would have matched on) once every shard has answered it and every earlier query,
//! taking its best answer (highest overlap, then lowest id); it decides in the next round,
//! makes the finding as of that query's record, and ignores the rest. In one engine every
//! shard's answers come in one round; across partitions (`[streams]`) they come when each
//! partition gets to them, and deciding on the first match to arrive named whichever
//! earlier line's partition was quickest.

use serde::{Deserialize, Serialize};

use super::{Ctx, Detector, EventIds, StateStats};
use crate::alert::{Finding, SubjectKind};
use crate::checkpoint::codec;
use crate::config::{Config, HandoverConfig};
use crate::event::{Event, Kind, Millis};
use crate::evidence;
use crate::exchange::{Body, Dest, Evidence, Role, Sent};
use crate::ids::{self, IdMap};

pub const NAME: &str = "line_handover";

#[derive(Clone, Serialize, Deserialize)]
struct Sketched {
    line: Box<str>,
    first_seen_s: u32,
    last_text_s: u32,
    /// Distinct recipients when last updated.
    recipients: u32,
    /// Distinct recipients within `burst_window_s` when the line qualified for a sketch:
    /// the figure `min_recipients` was checked against (the total above may be larger and
    /// spread over days).
    burst_recipients: u32,
    handset_fp: u32,
    mins: Box<[u32]>,
    /// Compare again once the audience reaches this size (u32::MAX: matched or too old).
    next_eval: u32,
    /// An answer to one of its queries made the finding: the other answers (to that query,
    /// or to later ones sent before the barrier) are not looked at.
    matched: bool,
    /// Queries sent (the last one's number).
    queries: u32,
    /// Unused since answers are tallied ([`LineHandover::tallies`]), always `None`: kept
    /// because a checkpoint's sketches are encoded field by field, and older checkpoints
    /// have it.
    pending: Option<Box<Body>>,
}

/// A new line's audience queries as their answers come in: every shard answers every
/// query ([`Body::AudienceMatch`] or [`Body::AudienceNone`]), and a query is decided only
/// once all have answered it and every earlier one. In one engine all of a query's answers
/// come in one round, as before; across partitions they come when each partition gets to
/// them, and the first to come is not the best.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Tallies {
    /// Every query up to this one had all its answers and no match.
    settled: u32,
    open: Vec<Tally>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Tally {
    query: u32,
    /// The shards (stage partitions) that have answered, one bit each (at most 256): an
    /// answer delivered twice counts once. Counting deliveries, a partition rebuilt after
    /// a kill (at least once: it sends again what it sent after its last commit) made one
    /// shard's answer stand for another's, and the query was decided before the shard
    /// holding the right earlier line had answered: the line's handover was missed.
    answered: [u64; 4],
    /// The query's event time (its answers carry it): the finding's.
    at: Millis,
    /// The best match so far (highest overlap, then lowest earlier line id).
    best: Option<Box<Body>>,
}

impl Tally {
    /// Notes shard `from`'s answer; false if it had answered already.
    fn answer_from(&mut self, from: u16) -> bool {
        let (word, bit) = (usize::from(from / 64) % 4, from % 64);
        let new = self.answered[word] & (1 << bit) == 0;
        self.answered[word] |= 1 << bit;
        new
    }

    /// How many shards have answered.
    fn answers(&self) -> u32 {
        self.answered.iter().map(|w| w.count_ones()).sum()
    }
}

impl Tallies {
    /// The earliest query with a match whose answers, and every earlier query's, are all
    /// in (`shards` each); settles the complete queries before it that had none. A query
    /// still short of answers `stale_ms` of event time after it was sent (`now`) counts as
    /// complete: an answer lost, or a checkpoint from before the tallies, must not hold
    /// the line's later queries for ever (in one engine every query completes in its round).
    fn decidable(&mut self, sent: u32, shards: u32, now: Millis, stale_ms: Millis) -> Option<u32> {
        while self.settled < sent {
            let next = self.settled + 1;
            let t = self.open.iter().find(|t| t.query == next)?;
            if t.answers() < shards && now.saturating_sub(t.at) <= stale_ms {
                return None;
            }
            if t.best.is_some() {
                return Some(next);
            }
            self.settled = next;
            self.open.retain(|t| t.query != next);
        }
        None
    }
}

#[derive(Clone)]
pub struct LineHandover {
    cfg: HandoverConfig,
    sketches: IdMap<Sketched>,
    /// Keyed by new line (on its shard): its queries' answers so far.
    tallies: IdMap<Tallies>,
    cap_hits: u64,
}

/// The i-th hash of a recipient fingerprint: a splitmix64 finaliser over fp and slot.
#[inline]
fn slot_hash(fp: u32, i: usize) -> u32 {
    let mut z = (fp as u64) ^ ((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}

fn add(mins: &mut [u32], fp: u32) {
    for (i, m) in mins.iter_mut().enumerate() {
        let h = slot_hash(fp, i);
        if h < *m {
            *m = h;
        }
    }
}

/// Estimated Jaccard similarity of two audiences.
fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len().max(1) as f64
}

/// Fraction of the new audience (size `na`) that is also in the earlier one (size `nb`).
fn containment(j: f64, na: u32, nb: u32) -> f64 {
    let inter = j / (1.0 + j) * (na as f64 + nb as f64);
    (inter / na.max(1) as f64).min(1.0)
}

impl LineHandover {
    pub fn new(cfg: &Config) -> Self {
        LineHandover {
            cfg: cfg.line_handover.clone(),
            sketches: IdMap::default(),
            tallies: IdMap::default(),
            cap_hits: 0,
        }
    }

    /// Answers an audience query from the lines this shard owns: the earlier line whose
    /// audience holds most of the new line's, if that reaches `min_overlap` (the new line's
    /// shard takes the best answer of every shard, so a weaker one is never needed).
    fn answer(&self, e: &Evidence, ctx: &mut Ctx<'_>) {
        let Body::AudienceQuery {
            line,
            query,
            first_seen_s,
            recipients,
            handset_fp,
            ref mins,
            ref fps,
        } = e.body
        else {
            return;
        };
        // The earlier list as it was when the query was sent: texts after it are in the
        // store by the barrier, and the one-thread scan could not have counted them.
        let asked_s = ids::secs(e.at);
        let mut best: Option<(u64, &Sketched, f64, f64, bool)> = None;
        for (&other, o) in &self.sketches {
            if other == line || o.first_seen_s >= first_seen_s {
                continue;
            }
            let j = jaccard(mins, &o.mins);
            if j == 0.0 {
                continue;
            }
            let (c, exact) = match ctx.contacts.get(other) {
                Some(rec) if !fps.is_empty() => {
                    let shared = rec
                        .iter_contacts()
                        .filter(|c| c.first_s <= asked_s && fps.binary_search(&c.fp).is_ok())
                        .count();
                    (shared as f64 / fps.len() as f64, true)
                }
                _ => (containment(j, recipients, o.recipients), false),
            };
            // Ties go to the lower id so the choice does not depend on map order (the
            // answers' hints order the shards' bests the same way).
            let better = match best {
                None => true,
                Some((bid, _, bc, _, _)) => c > bc || (c == bc && other < bid),
            };
            if better {
                best = Some((other, o, c, j, exact));
            }
        }
        let found = best.filter(|b| b.2 >= self.cfg.min_overlap);
        let Some((earlier, o, overlap, jaccard, exact)) = found else {
            // Nothing here: said, so the new line knows this shard has answered.
            let from = ctx.shard as u16;
            let body = Body::AudienceNone { query, from };
            ctx.outbox
                .push(Sent::hinted(Dest::Number(line), body, [u64::MAX, u64::MAX]));
            return;
        };
        let body = Body::AudienceMatch {
            query,
            recipients,
            first_seen_s,
            earlier,
            earlier_line: o.line.clone(),
            earlier_first_seen_s: o.first_seen_s,
            earlier_last_text_s: o.last_text_s,
            earlier_recipients: o.recipients,
            overlap,
            jaccard,
            exact,
            shared_handset: handset_fp != 0 && handset_fp == o.handset_fp,
            from: ctx.shard as u16,
        };
        // A non-negative f64's bits order as the value does: best overlap first, then the
        // lower id, across every shard's answers.
        let hint = [u64::MAX - overlap.to_bits(), earlier];
        ctx.outbox
            .push(Sent::hinted(Dest::Number(line), body, hint));
    }
}

impl LineHandover {
    /// The finding an answer makes for `line`, judged as of the query's event time `at`.
    fn finding(&self, line: u64, answer: &Body, at: Millis) -> Option<Finding> {
        let Body::AudienceMatch {
            recipients,
            first_seen_s,
            earlier,
            ref earlier_line,
            earlier_first_seen_s,
            earlier_last_text_s,
            earlier_recipients,
            overlap,
            jaccard,
            exact,
            shared_handset,
            ..
        } = *answer
        else {
            return None;
        };
        let me = self.sketches.get(&line)?;
        Some(Finding {
            detector: NAME,
            subject: me.line.to_string(),
            subject_id: line,
            subject_kind: SubjectKind::Line,
            score: overlap,
            event_time: at,
            window_start: ids::millis(earlier_first_seen_s),
            window_end: at,
            related: vec![earlier_line.to_string()],
            evidence: evidence! {
                "overlap" => (overlap * 1000.0).round() / 1000.0,
                "min_overlap" => self.cfg.min_overlap,
                "overlap_counted" => if exact { "exact" } else { "minhash_estimate" },
                "sketch_jaccard" => (jaccard * 1000.0).round() / 1000.0,
                "new_line_recipients" => recipients,
                "earlier_line_recipients" => earlier_recipients,
                "burst_recipients" => me.burst_recipients,
                "min_recipients" => self.cfg.min_recipients,
                "burst_window_s" => self.cfg.burst_window_s,
                "new_line_first_seen" => ids::millis(first_seen_s),
                "earlier_line_first_seen" => ids::millis(earlier_first_seen_s),
                "earlier_line_last_text" => ids::millis(earlier_last_text_s),
                "shared_handset" => shared_handset,
                "new_line_max_age_s" => self.cfg.new_line_max_age_s,
            },
            lines: vec![
                (line, me.line.to_string()),
                (earlier, earlier_line.to_string()),
            ],
        })
    }
}

/// The query a line sends when its audience reaches its next evaluation point.
fn query(line: u64, me: &Sketched, rec: &crate::state::LineRecord) -> Body {
    // The store keeps a line's contacts sorted by fingerprint: the answering shards
    // binary-search them.
    let mut fps: Vec<u32> = rec.contacts.iter().map(|c| c.fp).collect();
    fps.sort_unstable();
    fps.dedup();
    Body::AudienceQuery {
        line,
        query: me.queries,
        first_seen_s: me.first_seen_s,
        recipients: me.recipients,
        handset_fp: me.handset_fp,
        mins: me.mins.clone(),
        fps: fps.into_boxed_slice(),
    }
}

impl Detector for LineHandover {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_event(&mut self, ev: &Event<'_>, ids: &EventIds, ctx: &mut Ctx<'_>) {
        // A record only touches its sending line's own state (sketch, contact list): the
        // sender role. Other lines are reached through the audience query.
        if ctx.role != Role::Sender || !self.cfg.enabled || ev.kind != Kind::Sms {
            return;
        }
        let Some(rec) = ctx.contacts.get(ids.from) else {
            return;
        };
        let n = rec.contacts.len() as u32;
        let s = ids::secs(ev.ts);
        let k = self.cfg.sketch_size as usize;
        let me = match self.sketches.get_mut(&ids.from) {
            Some(me) => {
                add(&mut me.mins, ids::fp(ids.to));
                me.recipients = me.recipients.max(n);
                me.last_text_s = me.last_text_s.max(s);
                me.first_seen_s = me.first_seen_s.min(rec.first_seen_s);
                me.handset_fp = rec.handset_fp;
                me
            }
            None => {
                if n < self.cfg.min_recipients {
                    return;
                }
                let since = rec
                    .last_seen_s
                    .saturating_sub(ids::span_secs(self.cfg.burst_window_s));
                let burst = u32::try_from(rec.recipients_since(since)).unwrap_or(u32::MAX);
                if burst < self.cfg.min_recipients {
                    return;
                }
                if self.sketches.len() >= self.cfg.max_sketched_lines {
                    self.cap_hits += 1;
                    return;
                }
                let mut mins = vec![u32::MAX; k].into_boxed_slice();
                for c in &rec.contacts {
                    add(&mut mins, c.fp);
                }
                let stream_start_s = ids::secs(ctx.stream_start);
                let is_new = rec.first_seen_s
                    >= stream_start_s.saturating_add(ids::span_secs(self.cfg.warmup_s));
                self.sketches.entry(ids.from).or_insert(Sketched {
                    line: ev.from.as_ref().into(),
                    first_seen_s: rec.first_seen_s,
                    last_text_s: s,
                    recipients: n,
                    burst_recipients: burst,
                    handset_fp: rec.handset_fp,
                    mins,
                    next_eval: if is_new {
                        self.cfg.min_recipients
                    } else {
                        u32::MAX
                    },
                    matched: false,
                    queries: 0,
                    pending: None,
                })
            }
        };
        let age = s.saturating_sub(me.first_seen_s);
        if me.recipients < me.next_eval {
            return;
        }
        if age as u64 > self.cfg.new_line_max_age_s {
            me.next_eval = u32::MAX;
            return;
        }
        me.next_eval = me.recipients + (me.recipients / 4).max(5);
        me.queries += 1;
        let q = query(ids.from, me, rec);
        ctx.outbox.push(Sent::new(Dest::Every, q));
    }

    fn on_evidence(&mut self, e: &Evidence, ctx: &mut Ctx<'_>) {
        if !self.cfg.enabled {
            return;
        }
        // What a tally needs: the answers a query gets, and when one short of them is stale.
        let shards = ctx.shards.max(1) as u32;
        let stale_ms = ids::span_ms(self.cfg.new_line_max_age_s);
        match (&e.body, e.dest) {
            (Body::AudienceQuery { .. }, _) => self.answer(e, ctx),
            (
                Body::AudienceMatch { query, from, .. } | Body::AudienceNone { query, from },
                Dest::Number(line),
            ) => {
                let Some(me) = self.sketches.get(&line) else {
                    return;
                };
                if me.matched {
                    return;
                }
                let tallies = self.tallies.entry(line).or_default();
                if *query <= tallies.settled {
                    return;
                }
                let i = match tallies.open.iter().position(|t| t.query == *query) {
                    Some(i) => i,
                    None => {
                        tallies.open.push(Tally {
                            query: *query,
                            answered: [0; 4],
                            at: e.at,
                            best: None,
                        });
                        tallies.open.len() - 1
                    }
                };
                let t = &mut tallies.open[i];
                if !t.answer_from(*from) {
                    // Delivered again (at least once): already counted, and its match, if
                    // any, already weighed.
                    return;
                }
                if let Body::AudienceMatch {
                    overlap, earlier, ..
                } = &e.body
                {
                    // As the answers' hints order them: best overlap, then the lower id.
                    let better = match t.best.as_deref() {
                        Some(Body::AudienceMatch {
                            overlap: bo,
                            earlier: be,
                            ..
                        }) => overlap > bo || (overlap == bo && earlier < be),
                        _ => true,
                    };
                    if *overlap >= self.cfg.min_overlap && better {
                        t.best = Some(Box::new(e.body.clone()));
                    }
                }
                // Decided in the next round, once every answer it needs is in: the message
                // carries the event time and id of the answer that completed them (in one
                // engine, the decided query's own last answer, as before the tallies).
                if let Some(q) = tallies.decidable(me.queries, shards, e.at, stale_ms) {
                    let body = Body::AudienceDecide { query: q };
                    ctx.outbox.push(Sent::new(Dest::Number(line), body));
                }
            }
            (Body::AudienceDecide { query }, Dest::Number(line)) => {
                let Some(me) = self.sketches.get_mut(&line) else {
                    return;
                };
                if me.matched {
                    return;
                }
                let Some(tallies) = self.tallies.get_mut(&line) else {
                    return;
                };
                let q = *query;
                if tallies.decidable(me.queries, shards, e.at, stale_ms) != Some(q) {
                    return;
                }
                let Some(t) = tallies.open.iter_mut().find(|t| t.query == q) else {
                    return;
                };
                let (Some(answer), at) = (t.best.take(), t.at) else {
                    return;
                };
                self.tallies.remove(&line);
                me.matched = true;
                me.next_eval = u32::MAX;
                if let Some(f) = self.finding(line, &answer, at) {
                    ctx.out.push(f);
                }
            }
            _ => {}
        }
    }

    fn expire(&mut self, watermark: Millis) {
        let cutoff = ids::secs(watermark).saturating_sub(ids::span_secs(self.cfg.retention_s));
        self.sketches.retain(|_, s| s.last_text_s >= cutoff);
        let sketches = &self.sketches;
        self.tallies
            .retain(|line, _| sketches.get(line).is_some_and(|s| !s.matched));
    }

    fn stats(&self) -> StateStats {
        StateStats {
            keys: self.sketches.len(),
            bytes: ids::map_bytes(&self.sketches)
                + self
                    .sketches
                    .values()
                    .map(|s| s.mins.len() * 4 + s.line.len())
                    .sum::<usize>()
                + ids::map_bytes(&self.tallies)
                + self
                    .tallies
                    .values()
                    .map(|t| t.open.len() * (std::mem::size_of::<Tally>() + 128))
                    .sum::<usize>(),
            cap_hits: self.cap_hits,
        }
    }

    fn reconfigure(&mut self, cfg: &Config) {
        // A new sketch size applies to lines sketched from now on; old sketches of another
        // size would compare wrongly, so they are dropped.
        if cfg.line_handover.sketch_size != self.cfg.sketch_size {
            self.sketches.clear();
        }
        self.cfg = cfg.line_handover.clone();
    }

    fn box_clone(&self) -> Box<dyn Detector> {
        Box::new(self.clone())
    }

    fn save_state(&self) -> Result<Vec<u8>, codec::Error> {
        codec::encode(&(&self.sketches, self.cap_hits, &self.tallies))
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), codec::Error> {
        // A checkpoint from before the tallies has none (queries then in flight are
        // decided by the answers still to come, or never: a line keeps querying).
        match codec::decode(bytes) {
            Ok(v) => (self.sketches, self.cap_hits, self.tallies) = v,
            Err(_) => {
                (self.sketches, self.cap_hits) = codec::decode(bytes)?;
                self.tallies = IdMap::default();
            }
        }
        Ok(())
    }

    fn split(
        &mut self,
        parts: usize,
        owner: &dyn Fn(u64) -> usize,
        counted: usize,
    ) -> Vec<Box<dyn Detector>> {
        let cap_hits = std::mem::take(&mut self.cap_hits);
        let tallies = super::split_map(&mut self.tallies, parts, owner);
        super::split_map(&mut self.sketches, parts, owner)
            .into_iter()
            .zip(tallies)
            .enumerate()
            .map(|(p, (sketches, tallies))| {
                Box::new(LineHandover {
                    cfg: self.cfg.clone(),
                    sketches,
                    tallies,
                    cap_hits: if p == counted { cap_hits } else { 0 },
                }) as Box<dyn Detector>
            })
            .collect()
    }

    fn merge(&mut self, part: Box<dyn Detector>) {
        let part = super::part_of::<Self>(part);
        super::absorb_map(&mut self.sketches, part.sketches);
        super::absorb_map(&mut self.tallies, part.tallies);
        self.cap_hits += part.cap_hits;
    }

    #[cfg(test)]
    fn keys(&self) -> Vec<(&'static str, u64)> {
        let mut keys = super::named_keys("sketches", &self.sketches);
        keys.extend(super::named_keys("tallies", &self.tallies));
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::*;

    /// Texts from `line` to `c{i}` for each i, one a second from `t`; then a barrier. No
    /// finding may come before the barrier: the earlier lines are reached by evidence.
    fn texts(
        h: &mut Harness,
        d: &mut LineHandover,
        line: &str,
        t: Millis,
        range: std::ops::Range<usize>,
    ) -> Vec<Finding> {
        for i in range {
            let (id, to) = (format!("{line}-{t}-{i}"), format!("c{i}"));
            let f = h.feed(d, &sms(&id, t + i as Millis * 1000, line, &to));
            assert!(f.is_empty(), "a finding before the barrier: {f:?}");
        }
        h.barrier(d)
    }

    fn setup() -> (Harness, LineHandover) {
        let mut h = Harness::new();
        // Something at t=0 starts the stream so later lines are past the warm-up.
        h.feed(
            &mut LineHandover::new(&Config::default()),
            &sms("start", 0, "x", "y"),
        );
        (h, LineHandover::new(&Config::default()))
    }

    /// Across partitions the answers to a new line's queries come in whatever order the
    /// partitions get to them. A later query's match, complete, must wait for an earlier
    /// query still unanswered somewhere (its match is the one a single scan makes), and a
    /// query is decided only once every shard has answered it. Before the tallies the first
    /// match to arrive decided: here that named `later` instead of `earlier`.
    #[test]
    fn a_query_is_decided_only_once_every_shard_has_answered_it_and_every_earlier_one() {
        let cfg = Config::default();
        let mut d = LineHandover::new(&cfg);
        let new = ids::id("newline");
        d.sketches.insert(
            new,
            Sketched {
                line: "newline".into(),
                first_seen_s: 1_000,
                last_text_s: 2_000,
                recipients: 20,
                burst_recipients: 20,
                handset_fp: 0,
                mins: vec![0; 4].into_boxed_slice(),
                next_eval: 30,
                matched: false,
                queries: 2,
                pending: None,
            },
        );
        let answer = |query: u32, earlier: &str, overlap: f64, from: u16| Body::AudienceMatch {
            query,
            recipients: 20,
            first_seen_s: 1_000,
            earlier: ids::id(earlier),
            earlier_line: earlier.into(),
            earlier_first_seen_s: 10,
            earlier_last_text_s: 900,
            earlier_recipients: 40,
            overlap,
            jaccard: 0.1,
            exact: true,
            shared_handset: false,
            from,
        };
        let none = |query: u32, from: u16| Body::AudienceNone { query, from };
        let at = |query: u32| 1_000_000 + Millis::from(query) * 60_000;
        let mut contacts = crate::state::Contacts::new(1_000, 64, 86_400);
        // Applies one piece on the new line's shard of 3; returns (findings, decisions sent).
        let mut apply = |d: &mut LineHandover, body: Body, when: Millis| {
            let (mut out, mut sent) = (Vec::new(), Vec::new());
            let mut ctx = Ctx {
                role: Role::Barrier,
                contacts: &mut contacts,
                stream_start: 0,
                out: &mut out,
                outbox: &mut sent,
                cells: None,
                cell: None,
                shards: 3,
                shard: 0,
            };
            let e = Evidence {
                dest: Dest::Number(new),
                at: when,
                event_id: "q".into(),
                order: [0; 4],
                body,
            };
            d.on_evidence(&e, &mut ctx);
            let decide: Vec<u32> = sent
                .iter()
                .filter_map(|x| match x.body {
                    Body::AudienceDecide { query } => Some(query),
                    _ => None,
                })
                .collect();
            (out, decide)
        };
        // Query 2, complete, with a match: query 1 is not answered yet, so nothing is decided.
        for b in [answer(2, "later", 0.9, 0), none(2, 1), none(2, 2)] {
            assert_eq!(apply(&mut d, b, at(2)).1, Vec::<u32>::new());
        }
        let (f, _) = apply(&mut d, Body::AudienceDecide { query: 2 }, at(2));
        assert!(f.is_empty(), "decided before query 1 was answered: {f:?}");
        // Query 1's answers: its match, weaker than another shard's, then the last "none".
        assert!(apply(&mut d, answer(1, "weaker", 0.6, 0), at(1))
            .1
            .is_empty());
        assert!(apply(&mut d, answer(1, "earlier", 0.8, 1), at(1))
            .1
            .is_empty());
        assert_eq!(apply(&mut d, none(1, 2), at(1)).1, vec![1]);
        let (f, _) = apply(&mut d, Body::AudienceDecide { query: 1 }, at(1));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].related, ["earlier"]);
        assert_eq!(f[0].event_time, at(1));
        // Decided: the tallies are gone, and nothing more is decided.
        assert!(d.tallies.is_empty());
        assert!(apply(&mut d, Body::AudienceDecide { query: 2 }, at(2))
            .0
            .is_empty());

        // A query one shard never answers holds the later ones only until it is older than
        // `new_line_max_age_s` (an answer lost must not hold the line for ever).
        let me = d.sketches.get_mut(&new).unwrap();
        (me.matched, me.queries) = (false, 4);
        let max_age = ids::span_ms(cfg.line_handover.new_line_max_age_s);
        for from in 0..3 {
            apply(&mut d, none(1, from), at(1));
            apply(&mut d, none(2, from), at(2));
        }
        assert!(apply(&mut d, none(3, 0), at(3)).1.is_empty());
        let late = at(3) + max_age;
        assert!(apply(&mut d, answer(4, "later", 0.9, 0), late).1.is_empty());
        assert!(
            apply(&mut d, none(4, 1), late).1.is_empty(),
            "query 3 not yet stale"
        );
        assert_eq!(
            apply(&mut d, none(4, 2), late + 1).1,
            vec![4],
            "query 3 stale"
        );

        // At least once, an answer can come twice (a partition rebuilt after a kill sends
        // again what it sent after its last commit): it counts once. Counting deliveries,
        // shard 0's "none" twice and shard 1's made three answers of three shards, query 5
        // was settled with no match, and shard 2's match, the right earlier line, came
        // too late to count.
        let me = d.sketches.get_mut(&new).unwrap();
        (me.matched, me.queries) = (false, 5);
        d.tallies.clear();
        d.tallies.entry(new).or_default().settled = 4;
        for b in [none(5, 0), none(5, 0), none(5, 1)] {
            assert!(apply(&mut d, b, at(5)).1.is_empty());
        }
        assert_eq!(
            apply(&mut d, answer(5, "earlier", 0.8, 2), at(5)).1,
            vec![5],
            "the third shard's answer completes the query"
        );
        // Its match delivered again changes nothing.
        assert!(apply(&mut d, answer(5, "earlier", 0.8, 2), at(5))
            .1
            .is_empty());
        let (f, _) = apply(&mut d, Body::AudienceDecide { query: 5 }, at(5));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].related, ["earlier"]);
    }

    #[test]
    fn evidence_separates_the_burst_from_the_total() {
        // 10 of the old list texted in the morning, 15 more in the evening: only the evening's
        // 15 were within the burst window when the line qualified, though 25 were texted.
        let (mut h, mut d) = setup();
        assert!(texts(&mut h, &mut d, "old", HOUR, 0..60).is_empty());
        assert!(texts(&mut h, &mut d, "new", DAY + 7 * HOUR, 0..10).is_empty());
        let f = texts(&mut h, &mut d, "new", DAY + 20 * HOUR, 10..25);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].evidence["new_line_recipients"], 25);
        assert_eq!(f[0].evidence["burst_recipients"], 15);
    }

    #[test]
    fn new_line_texting_the_old_list_is_a_handover() {
        let (mut h, mut d) = setup();
        assert!(texts(&mut h, &mut d, "old", HOUR, 0..60).is_empty());
        let f = texts(&mut h, &mut d, "new", DAY, 0..60);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].subject, "new");
        assert_eq!(f[0].related, vec!["old"]);
        assert!(f[0].score >= 0.8, "overlap {}", f[0].score);
        // Fires as soon as enough of the old list is reached, once.
        assert_eq!(f[0].evidence["new_line_recipients"], 15);
    }

    #[test]
    fn disjoint_audience_is_not_a_handover() {
        let (mut h, mut d) = setup();
        texts(&mut h, &mut d, "old", HOUR, 0..60);
        assert!(texts(&mut h, &mut d, "new", DAY, 100..160).is_empty());
    }

    #[test]
    fn small_list_sharing_a_few_numbers_with_a_big_one_is_not_a_handover() {
        let (mut h, mut d) = setup();
        texts(&mut h, &mut d, "old", HOUR, 0..300);
        // 4 of 16 recipients are the old line's customers: the sketches may share a slot,
        // the exact count says 25%.
        let f = texts(&mut h, &mut d, "new", DAY, 296..312);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn everyday_texting_spread_over_days_gets_no_sketch() {
        let (mut h, mut d) = setup();
        texts(&mut h, &mut d, "old", HOUR, 0..60);
        // The same numbers, one every two hours: never a burst.
        for i in 0..30 {
            let (id, to) = (format!("n{i}"), format!("c{i}"));
            assert!(h
                .feed(&mut d, &sms(&id, DAY + i as Millis * 2 * HOUR, "new", &to))
                .is_empty());
        }
        assert_eq!(d.stats().keys, 1);
    }

    #[test]
    fn lines_seen_during_warm_up_are_not_new() {
        let mut h = Harness::new();
        let mut d = LineHandover::new(&Config::default());
        texts(&mut h, &mut d, "a", 0, 0..60);
        assert!(texts(&mut h, &mut d, "b", HOUR, 0..60).is_empty());
    }

    /// The warm-up is a day at the default: a stream that starts at midnight meets most of
    /// its subscribers only after they wake, and a number first seen then is not new. (On
    /// a six-hour warm-up the texter below, first seen at 08:00, was a "new number" of the
    /// line whose customers it greeted: demo seeds 2 and 15.)
    #[test]
    fn a_number_first_seen_on_the_first_morning_is_not_new() {
        let (mut h, mut d) = setup();
        texts(&mut h, &mut d, "old", HOUR, 0..60);
        // First seen at 08:00; the next evening it greets 60 friends, 40 of them the old
        // line's customers.
        let greet = sms("g-0", 8 * HOUR, "texter", "friend-0");
        assert!(h.feed(&mut d, &greet).is_empty());
        let f = texts(&mut h, &mut d, "texter", DAY + 20 * HOUR, 20..80);
        assert!(f.is_empty(), "{f:?}");
        // A number first seen after the first day is still a candidate.
        let f = texts(&mut h, &mut d, "new", DAY + 22 * HOUR, 0..60);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].related, vec!["old"]);
    }

    #[test]
    fn fires_at_the_barrier_as_of_the_record_that_reached_the_evaluation_point() {
        let (mut h, mut d) = setup();
        texts(&mut h, &mut d, "old", HOUR, 0..60);
        for i in 0..40 {
            let (id, to) = (format!("new-{i}"), format!("c{i}"));
            let f = h.feed(&mut d, &sms(&id, DAY + i as Millis * 1000, "new", &to));
            assert!(f.is_empty(), "{f:?}");
        }
        // The 15th recipient's record sent the first query; growing by a quarter sent more
        // (20, 25, 31, 38) before the barrier.
        let queries: Vec<&Evidence> = h
            .inbox
            .iter()
            .filter(|e| matches!(e.body, Body::AudienceQuery { .. }))
            .collect();
        assert_eq!(queries.len(), 5, "{queries:?}");
        assert!(queries.iter().all(|e| e.dest == Dest::Every));
        assert_eq!(&*queries[0].event_id, "new-14");
        assert_eq!(queries[0].at, DAY + 14_000);
        let f = h.barrier(&mut d);
        // One finding (the answers to the later queries are ignored), judged as of the
        // record that reached 15 recipients, as the one-thread scan judged it.
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].subject, "new");
        assert_eq!(f[0].subject_id, ids::id("new"));
        assert_eq!(f[0].event_time, DAY + 14_000);
        assert_eq!(f[0].window_end, DAY + 14_000);
        assert_eq!(f[0].evidence["new_line_recipients"], 15);
        assert_eq!(f[0].evidence["overlap_counted"], "exact");
        assert_eq!(f[0].related, vec!["old"]);
        assert_eq!(
            f[0].lines,
            vec![
                (ids::id("new"), "new".to_string()),
                (ids::id("old"), "old".to_string())
            ]
        );
        // Matched: later texts send no query.
        assert!(texts(&mut h, &mut d, "new", DAY + HOUR, 40..80).is_empty());
        assert!(h.inbox.is_empty());
    }

    #[test]
    fn a_query_sent_later_for_an_earlier_record_does_not_take_the_match() {
        let (mut h, mut d) = setup();
        texts(&mut h, &mut d, "old", HOUR, 0..60);
        // The 15th recipient (query 1) at DAY + 114 s; then five records that arrive late,
        // stamped before it, bring 20 (query 2, whose event time is the earlier).
        for i in 0..15 {
            let (id, to) = (format!("new-{i}"), format!("c{i}"));
            h.feed(
                &mut d,
                &sms(&id, DAY + (100 + i) as Millis * 1000, "new", &to),
            );
        }
        for i in 15..20 {
            let (id, to) = (format!("new-{i}"), format!("c{i}"));
            h.feed(&mut d, &sms(&id, DAY + i as Millis * 1000, "new", &to));
        }
        let f = h.barrier(&mut d);
        // The scan at each record matched on the first query: its event time and figures.
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].event_time, DAY + 114_000);
        assert_eq!(f[0].evidence["new_line_recipients"], 15);
        assert_eq!(
            f[0].evidence["new_line_first_seen"],
            serde_json::json!(DAY + 100_000)
        );
    }

    #[test]
    fn the_earlier_list_is_counted_as_it_was_when_the_query_was_sent() {
        let (mut h, mut d) = setup();
        // The old line texts c0..c5 and blasts c100..c160; the new line blasts c0..c15.
        texts(&mut h, &mut d, "old", HOUR, 100..160);
        texts(&mut h, &mut d, "old", 2 * HOUR, 0..5);
        for i in 0..15 {
            let (id, to) = (format!("new-{i}"), format!("c{i}"));
            h.feed(&mut d, &sms(&id, DAY + i as Millis, "new", &to));
        }
        // After the query, before the barrier, the old line texts the rest of the new
        // line's audience: the scan at the query's record could not have counted those.
        for i in 5..15 {
            let (id, to) = (format!("late-{i}"), format!("c{i}"));
            h.feed(&mut d, &sms(&id, DAY + 30_000, "old", &to));
        }
        let f = h.barrier(&mut d);
        assert!(f.is_empty(), "5 of 15 at the query: {f:?}");
    }

    /// This detector on `n` shards as the engine runs it (`shardkit`).
    type Shards = crate::detect::shardkit::Shards<LineHandover>;

    /// Earlier lines with overlapping audiences, new lines texting some of them, interleaved
    /// so several queries meet at one barrier; a barrier every minute of event time.
    fn handovers(n: usize) -> (Vec<Finding>, Shards) {
        let mut s = Shards::new(LineHandover::new(&Config::default()), n, None);
        let mut out = Vec::new();
        let feed = |s: &mut Shards, id: String, t: Millis, from: &str, to: String| {
            let f = s.feed(&sms(&id, t, from, &to));
            assert!(f.is_empty(), "a finding before the barrier: {f:?}");
        };
        feed(&mut s, "start".into(), 0, "x", "y".into());
        let earlier = [
            ("o1", 0..40),
            ("o2", 20..60),
            ("o3", 100..160),
            ("o4", 0..40), // the same audience as o1: ties go to the lower id
            ("o5", 300..320),
            // 10 of n2's first 15 (an answer above min_overlap, but not the best: o2 has 15)
            ("o6", 35..45),
            ("o6", 400..420),
        ];
        for (j, (line, range)) in earlier.into_iter().enumerate() {
            for i in range {
                let t = HOUR * (j as Millis + 1) + i as Millis * 1000;
                feed(&mut s, format!("{line}-{i}"), t, line, format!("c{i}"));
            }
        }
        out.extend(s.barrier());
        let new = [
            ("n1", 0..30),
            ("n2", 35..70),
            ("n3", 120..140),
            ("n4", 200..230),
            ("n5", 305..340), // o5's audience at its first query, new numbers after
        ];
        let mut t = DAY;
        for i in 0..40 {
            for (line, range) in &new {
                if let Some(c) = range.clone().nth(i) {
                    t += 7_000;
                    feed(&mut s, format!("{line}-{i}"), t, line, format!("c{c}"));
                    if t % MIN < 7_000 {
                        out.extend(s.barrier());
                    }
                }
            }
        }
        out.extend(s.barrier());
        (out, s)
    }

    fn summary(f: &Finding) -> String {
        let ev = serde_json::to_string(&f.evidence).unwrap();
        format!(
            "{} {} {:?} {} {} {ev} {:?}",
            f.subject, f.subject_id, f.related, f.event_time, f.score, f.lines
        )
    }

    #[test]
    fn any_number_of_shards_finds_what_one_finds() {
        let (one, _) = handovers(1);
        let mut got: Vec<(&str, &str)> = one
            .iter()
            .map(|f| (f.subject.as_str(), f.related[0].as_str()))
            .collect();
        got.sort();
        let tie = if ids::id("o1") < ids::id("o4") {
            "o1"
        } else {
            "o4"
        };
        assert_eq!(
            got,
            vec![("n1", tie), ("n2", "o2"), ("n3", "o3"), ("n5", "o5")],
            "{one:?}"
        );
        let one: Vec<String> = one.iter().map(summary).collect();
        for n in [2, 3, 8] {
            let (found, s) = handovers(n);
            // The test is only worth it if some handover crosses shards.
            let crossing = found
                .iter()
                .filter(|f| s.owner(f.lines[0].0) != s.owner(f.lines[1].0))
                .count();
            assert!(crossing > 0, "{n} shards: no handover crosses shards");
            let found: Vec<String> = found.iter().map(summary).collect();
            assert_eq!(found, one, "{n} shards");
        }
    }

    #[test]
    fn a_query_is_small() {
        let (mut h, mut d) = setup();
        texts(&mut h, &mut d, "old", HOUR, 100..160);
        for i in 0..15 {
            let (id, to) = (format!("new-{i}"), format!("c{i}"));
            h.feed(&mut d, &sms(&id, DAY + i as Millis, "new", &to));
        }
        assert_eq!(h.inbox.len(), 1);
        let bytes = codec::encode(&h.inbox[0].body).unwrap().len();
        // 64 minima and 15 fingerprints of 4 bytes, varint-encoded (larger values take 5),
        // plus the line id and three counts.
        let k = Config::default().line_handover.sketch_size as usize;
        assert!(bytes <= (k + 15) * 5 + 4 * 10, "{bytes} bytes");
        assert!(bytes >= (k + 15) * 3, "{bytes} bytes");
    }

    /// How many audience queries a generated city sends, and their size. Not a check (a
    /// figure for the README): `LW_SUBSCRIBERS=20000 cargo test --release --lib
    /// queries_per_million -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn queries_per_million_records() {
        use crate::event::{decode, DecodeOptions};
        use crate::generate::{generate_in_memory, GenOptions};
        let subscribers = std::env::var("LW_SUBSCRIBERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let days = std::env::var("LW_DAYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let opts = GenOptions {
            subscribers,
            days,
            ..GenOptions::default()
        };
        let n = std::env::var("LW_SHARDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let (events, _, _) = generate_in_memory(&opts).unwrap();
        let mut s = Shards::new(LineHandover::new(&Config::default()), n, None);
        let (mut records, mut findings, mut epoch) = (0u64, 0, 0);
        let decode_opts = DecodeOptions::default();
        for line in events.split(|&b| b == b'\n') {
            let Ok(ev) = decode(line, &decode_opts) else {
                continue;
            };
            records += 1;
            // The engine's barriers follow the watermark; a minute of the records' own time
            // is close enough for counting.
            if ev.ts / MIN != epoch {
                epoch = ev.ts / MIN;
                findings += s.barrier().len();
            }
            s.feed(&ev);
        }
        findings += s.barrier().len();
        let per_m = |n: u64| n as f64 * 1e6 / records as f64;
        let sent = |name: &str| s.sent.get(name).copied().unwrap_or(0);
        let (queries, matches, nones, decisions) = (
            sent("AudienceQuery"),
            sent("AudienceMatch"),
            sent("AudienceNone"),
            sent("AudienceDecide"),
        );
        let (query_bytes, largest_query) =
            s.bytes.get("AudienceQuery").copied().unwrap_or_default();
        let sketched: usize = s.d.iter().map(|d| d.stats().keys).sum();
        println!(
            "{subscribers} subscribers x {days} days, {n} shards: {records} records, \
             {queries} queries ({:.1} per million records), {:.0} bytes each on average \
             (largest {}), {:.0} query bytes per million records; {matches} matches, \
             {nones} \"none\" answers, {decisions} decisions, {findings} findings, \
             {sketched} sketched lines",
            per_m(queries),
            query_bytes as f64 / queries.max(1) as f64,
            largest_query,
            per_m(query_bytes),
        );
        assert!(records > 0 && findings > 0);
    }

    #[test]
    fn minhash_estimate_is_close() {
        let k = 256;
        let (mut a, mut b) = (vec![u32::MAX; k], vec![u32::MAX; k]);
        for i in 0..300u32 {
            add(&mut a, ids::fp(ids::id(&i.to_string())));
        }
        for i in 150..450u32 {
            add(&mut b, ids::fp(ids::id(&i.to_string())));
        }
        let j = jaccard(&a, &b);
        assert!((j - 1.0 / 3.0).abs() < 0.08, "jaccard {j}");
        assert!((containment(j, 300, 300) - 0.5).abs() < 0.1);
    }
}
