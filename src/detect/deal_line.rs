//! `deal_line`: the combined verdict on a line from the other detectors' findings.
//!
//! Each kind of evidence counts once per line, with its configured weight, while it is
//! younger than the lookback; the line is called a deal line when the sum reaches the
//! threshold. The weights are set so that what ordinary look-alikes do (one bulk send, a
//! day's replies, a repair shop's many SIMs, daily reminders to different people) stays
//! below it, and what a deal line does (the same customer list again and again, their
//! fan-in, a number handed over, burner handsets) goes above. Each contribution is listed
//! in the alert's evidence with its figures.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Ctx, Detector, StateStats};
use crate::alert::{Finding, SubjectKind};
use crate::checkpoint::codec;
use crate::config::{Config, DealLineConfig};
use crate::event::Millis;
use crate::exchange::{Body, Dest, Evidence, Sent};
use crate::ids::{self, IdMap};

pub const NAME: &str = "deal_line";

/// The kinds of evidence, in evidence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    BulkSms = 0,
    RepeatBulk = 1,
    FanIn = 2,
    RepeatFanIn = 3,
    Handover = 4,
    HandsetChurn = 5,
    Predecessor = 6,
    Runner = 7,
    Successor = 8,
    Callbacks = 9,
}

const PARTS: [Part; 10] = [
    Part::BulkSms,
    Part::RepeatBulk,
    Part::FanIn,
    Part::RepeatFanIn,
    Part::Handover,
    Part::HandsetChurn,
    Part::Predecessor,
    Part::Runner,
    Part::Successor,
    Part::Callbacks,
];

/// The kinds of evidence only a line in the trade keeps showing; with
/// `deal_line.require_sustained` (the default) a verdict needs one of them, whatever the
/// others add up to. The rest can each come from one ordinary event: a person who once texted
/// every friend (a festive greeting, a party) and later gets a new number and texts them all
/// "new number" shows a bulk send, the friends' replies as fan-in and a handover, 0.85 on the
/// old line, and on the new one the "new number" blast, the friends following it and the same
/// handover (`tests/new_number.rs`). Adverts sent again to the same list on a later day,
/// burner handsets, a runner, or a line across a handover already called a deal line are what
/// that person never shows. The last covers a network's first line handed over before it sent
/// its adverts again: once its successor is called a deal line, so is it ([`Part::Successor`]).
const SUSTAINED: [Part; 5] = [
    Part::RepeatBulk,
    Part::HandsetChurn,
    Part::Predecessor,
    Part::Runner,
    Part::Successor,
];

/// Whether a contribution's label (`repeat_bulk_sms`, ...) names a kind of evidence only a
/// line in the trade keeps showing (`SUSTAINED`): what `explain` lists as the kind a verdict
/// needed.
pub fn is_sustained(label: &str) -> bool {
    SUSTAINED.iter().any(|p| p.label() == label)
}

/// The label of the confirmed deals a `customer_fan_in` callback count gives a line
/// ([`callbacks_credit`]): with `deal_line.repeat_needs_callbacks`, what adverts sent again
/// need beside them to be evidence only the trade keeps showing.
pub const CALLBACKS: &str = "customer_callbacks";

/// What `customer_fan_in` tells line `line`'s verdict when the line (or its crew) has called
/// back `min_callbacks` distinct customers within the window, each within
/// `callback_within_s` of the customer's contact: the deals police practice counts as
/// confirmed. `detail` holds those figures.
///
/// It confirms rather than adds (`weight_callbacks` is 0 by default): an ordinary person
/// rings friends back too. What it separates is a line that texts the same list again and
/// then serves the replies (a deal line) from one that texts the same list again and only
/// reads them: a club organiser's "game on tonight? reply IN" twice a week, which scored
/// 0.85 on adverts sent again, fan-in and fan-in again (`tests/club_organiser.rs`).
pub fn callbacks_credit(line: &str, detail: Value) -> Body {
    let parts = vec![CreditPart::new(Part::Callbacks, detail)];
    Body::DealCredit(Credit::new(line, parts, None, None))
}

impl Part {
    fn label(self) -> &'static str {
        match self {
            Part::BulkSms => "bulk_sms",
            Part::RepeatBulk => "repeat_bulk_sms",
            Part::FanIn => "customer_fan_in",
            Part::RepeatFanIn => "repeat_customer_fan_in",
            Part::Handover => "line_handover",
            Part::HandsetChurn => "handset_churn",
            Part::Predecessor => "predecessor_deal_line",
            Part::Runner => "runner_movement",
            Part::Successor => "successor_deal_line",
            Part::Callbacks => CALLBACKS,
        }
    }

    fn weight(self, c: &DealLineConfig) -> f64 {
        match self {
            Part::BulkSms => c.weight_bulk_sms,
            Part::RepeatBulk => c.weight_repeat_bulk,
            Part::FanIn => c.weight_fan_in,
            Part::RepeatFanIn => c.weight_repeat_fan_in,
            Part::Handover => c.weight_handover,
            Part::HandsetChurn => c.weight_handset_churn,
            Part::Predecessor => c.weight_predecessor,
            Part::Runner => c.weight_runner,
            // The same tie as a predecessor's, seen from the other end.
            Part::Successor => c.weight_predecessor,
            Part::Callbacks => c.weight_callbacks,
        }
    }
}

/// Evidence for a line another shard owns ([`Body::DealCredit`]): what [`DealLine`] would
/// have folded into that line's verdict in place, applied there at the barrier as of the
/// producing record's time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credit {
    /// The line's pseudonym: its verdict names it, and the line may be new to that shard.
    line: Box<str>,
    parts: Vec<CreditPart>,
    /// Who joins the line's `related` (the handset, the other line of a handover).
    related: Option<Box<str>>,
    /// For a handover's earlier line: the new line, which is credited as this line's
    /// successor if this line's own score (before this credit) reaches the threshold. The
    /// earlier line's verdict lives on its own shard, so the answer goes back as evidence.
    successor: Option<(u64, Box<str>)>,
}

/// One kind of evidence with its figures, as in the verdict's contributions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CreditPart {
    part: Part,
    #[serde(with = "codec::json_text")]
    detail: Value,
}

/// Whether adverts sent again need confirmed deals to be sustained evidence (see
/// [`DealLine`]'s field).
fn repeat_needs_callbacks(cfg: &Config) -> bool {
    cfg.deal_line.repeat_needs_callbacks && cfg.customer_fan_in.enabled
}

/// Whether a score reaches the threshold (sums of weights, so compared with a little slack).
fn reaches(score: f64, threshold: f64) -> bool {
    score + 1e-9 >= threshold
}

/// A score as the evidence shows it: three decimals.
fn shown(score: f64) -> f64 {
    (score * 1000.0).round() / 1000.0
}

impl CreditPart {
    fn new(part: Part, detail: Value) -> Self {
        CreditPart { part, detail }
    }

    /// A predecessor that was a deal line when the handover was found: its score, and the
    /// threshold it reached.
    fn predecessor(earlier_line: &str, earlier_score: f64, threshold: f64) -> Self {
        let es = shown(earlier_score);
        let d = json!({"earlier_line": earlier_line, "earlier_score": es, "threshold": threshold});
        CreditPart::new(Part::Predecessor, d)
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Contribution {
    at: Millis,
    /// The figures of the finding behind it (a small object).
    #[serde(with = "codec::json_text")]
    detail: Value,
}

/// A verdict's contributions, at most one of each [`Part`]: only those it has, in a list of
/// exactly their number (an array of all eight kinds, empty or not, was 320 bytes in every
/// verdict's table slot: on the 150,000-subscriber city, 2.3 of the detector's 3.6 MB).
/// Checkpoints keep an array of every kind (the format from before: either build reads the
/// other's).
#[derive(Clone, Default)]
struct Parts(Vec<(Part, Contribution)>);

impl Parts {
    fn get(&self, p: Part) -> Option<&Contribution> {
        self.0.iter().find(|(q, _)| *q == p).map(|(_, c)| c)
    }

    /// Sets `p`'s contribution unless it already holds a later one. Of two at the same
    /// event time (two runners of one line read at one barrier), the one whose figures
    /// come last as JSON text is kept, whichever came first: credits from other shards
    /// arrive in an order that depends on the shard count, and the verdict's explanation
    /// must not (on the 150,000-subscriber city, one `deal_line` alert of 12,671 named a
    /// different runner with one shard than with three).
    fn set(&mut self, p: Part, at: Millis, detail: Value) {
        match self.0.iter_mut().find(|(q, _)| *q == p) {
            Some((_, c)) if c.at > at => {}
            Some((_, c)) if c.at == at && json_text(&c.detail) >= json_text(&detail) => {}
            Some((_, c)) => *c = Contribution { at, detail },
            None => {
                self.0.reserve_exact(1);
                self.0.push((p, Contribution { at, detail }));
            }
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<(Part, Contribution)>()
    }

    fn as_array(&self) -> [Option<&Contribution>; 10] {
        let mut a = [None; 10];
        for (p, c) in &self.0 {
            a[*p as usize] = Some(c);
        }
        a
    }
}

impl Serialize for Parts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_array().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Parts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let a = <[Option<Contribution>; 10]>::deserialize(d)?;
        let mut v: Vec<(Part, Contribution)> = PARTS
            .into_iter()
            .zip(a)
            .filter_map(|(p, c)| c.map(|c| (p, c)))
            .collect();
        v.shrink_to_fit();
        Ok(Parts(v))
    }
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct LineVerdict {
    line: Box<str>,
    parts: Parts,
    /// Predecessor / successor lines and handsets, for `related`, each with the event time
    /// of the latest evidence that named it: it leaves with that evidence (after the
    /// lookback), and at most [`MAX_RELATED`] are kept, so a line active for months does
    /// not grow the list without end.
    related: Vec<(String, Millis)>,
    last_at: Millis,
    /// The earlier line of the latest handover in which this line took the customers over,
    /// and when: told when this line is called a deal line ([`Part::Successor`]). Kept
    /// apart from the handover's contribution, which a later handover of this line's own
    /// replaces (a network hands its lines on in a chain).
    earlier: Option<(Box<str>, Millis)>,
}

/// Most identities kept in one line's `related`: a deal line has a predecessor, a successor
/// and a few handsets; far more is a repair shop or a shared phone, and the oldest go first.
pub const MAX_RELATED: usize = 32;

#[derive(Clone)]
pub struct DealLine {
    cfg: DealLineConfig,
    /// Adverts sent again are sustained evidence only with confirmed deals beside them:
    /// `repeat_needs_callbacks`, and `customer_fan_in` enabled (which counts the callbacks;
    /// without it there is nothing to wait for, and the rule stands aside).
    repeat_needs_callbacks: bool,
    lines: IdMap<LineVerdict>,
    max_keys: usize,
    cap_hits: u64,
}

impl DealLine {
    pub fn new(cfg: &Config, max_keys: usize) -> Self {
        DealLine {
            cfg: cfg.deal_line.clone(),
            repeat_needs_callbacks: repeat_needs_callbacks(cfg),
            lines: IdMap::default(),
            max_keys,
            cap_hits: 0,
        }
    }

    fn verdict(&mut self, id: u64, line: &str) -> Option<&mut LineVerdict> {
        if self.lines.len() >= self.max_keys && !self.lines.contains_key(&id) {
            self.cap_hits += 1;
            return None;
        }
        Some(self.lines.entry(id).or_insert_with(|| LineVerdict {
            line: line.into(),
            ..LineVerdict::default()
        }))
    }

    /// Folds one finding into the verdict of its subject when that is a line (this shard
    /// owns it); every other line it names gets a [`Credit`] through `outbox`. Returns the
    /// lines touched here.
    fn absorb(&mut self, f: &Finding, outbox: &mut Vec<Sent>) -> Vec<u64> {
        let cfg = self.cfg.clone();
        let mut touched = Vec::new();
        let at = f.event_time;
        let ev = &f.evidence;
        let own = |id: u64| f.subject_kind == SubjectKind::Line && f.subject_id == id;
        match f.detector {
            super::bulk_sms::NAME => {
                let (id, line) = (f.subject_id, f.subject.as_str());
                let Some(v) = self.verdict(id, line) else {
                    return touched;
                };
                let repeat = ev
                    .get("repeat_audience")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                // Each figure next to the threshold it is compared with: the bulk rule's
                // `min_recipients`, and this detector's `repeat_audience_min`.
                let mut detail = json!({
                    "recipients": ev["recipients"],
                    "repeat_audience": repeat,
                    "repeat_audience_min": cfg.repeat_audience_min,
                });
                copy_present(&mut detail, ev, &["min_recipients"]);
                // A repeat is an earlier *bulk send*, on an earlier day, to largely the same
                // people. Audience overlap alone is not enough: a festive greeting reaches
                // friends texted all year, yet it is the line's only blast.
                let gap = ids::span_ms(cfg.repeat_gap_s);
                let earlier_bulk = v
                    .parts
                    .get(Part::BulkSms)
                    .map(|p| p.at)
                    .filter(|&e| e.saturating_add(gap) <= at);
                if let Some(earlier) = earlier_bulk.filter(|_| repeat >= cfg.repeat_audience_min) {
                    let d = repeat_detail(&detail, earlier, cfg.repeat_gap_s);
                    set(v, Part::RepeatBulk, at, d);
                }
                set(v, Part::BulkSms, at, detail);
                touched.push(id);
            }
            super::customer_fan_in::NAME => {
                let (id, line) = (f.subject_id, f.subject.as_str());
                let Some(v) = self.verdict(id, line) else {
                    return touched;
                };
                // The customers and the threshold of the rule that fired (`min_customers`;
                // the callback rule's `min_customers_with_callbacks` with its `callbacks` and
                // `min_callbacks`; the followers rule's `follow_min_customers`).
                let mut detail = json!({"customers": ev["customers"]});
                copy_present(&mut detail, ev, FAN_IN_FIGURES);
                let gap = ids::span_ms(cfg.repeat_gap_s);
                let earlier_fan_in = v
                    .parts
                    .get(Part::FanIn)
                    .map(|p| p.at)
                    .filter(|&e| e.saturating_add(gap) <= at);
                if let Some(earlier) = earlier_fan_in {
                    let d = repeat_detail(&detail, earlier, cfg.repeat_gap_s);
                    set(v, Part::RepeatFanIn, at, d);
                }
                set(v, Part::FanIn, at, detail);
                touched.push(id);
            }
            super::line_handover::NAME => {
                let [(new_id, new_line), (old_id, old_line)] = match f.lines.as_slice() {
                    [a, b] => [a.clone(), b.clone()],
                    _ => return touched,
                };
                let overlap = ev.get("overlap").cloned().unwrap_or(Value::Null);
                let mut new_detail =
                    json!({"role": "new_line", "earlier_line": old_line, "overlap": overlap});
                copy_present(&mut new_detail, ev, &["min_overlap"]);
                let mut old_detail =
                    json!({"role": "earlier_line", "new_line": new_line, "overlap": overlap});
                copy_present(&mut old_detail, ev, &["min_overlap"]);
                let new_part = CreditPart::new(Part::Handover, new_detail);
                let old_part = CreditPart::new(Part::Handover, old_detail);
                // The earlier line's own verdict carries over: a number that takes over a
                // deal line's customers is that deal line's successor. Its score is read
                // before this handover is credited to it, on the shard that owns it.
                if own(old_id) {
                    let earlier_score = self.lines.get(&old_id).map(|v| self.score(v, at));
                    if self.apply(old_id, &old_line, &[old_part], Some(&new_line), at) {
                        touched.push(old_id);
                    }
                    let mut parts = vec![new_part];
                    if let Some(es) = earlier_score.filter(|es| reaches(*es, cfg.threshold)) {
                        parts.push(CreditPart::predecessor(&old_line, es, cfg.threshold));
                    }
                    let c = Credit::new(&new_line, parts, Some(&old_line), None);
                    self.credit(new_id, c, at, own(new_id), outbox, &mut touched);
                } else {
                    let c = Credit::new(&new_line, vec![new_part], Some(&old_line), None);
                    self.credit(new_id, c, at, own(new_id), outbox, &mut touched);
                    let successor = Some((new_id, new_line.as_str().into()));
                    let c = Credit::new(&old_line, vec![old_part], Some(&new_line), successor);
                    outbox.push(Sent::new(Dest::Number(old_id), Body::DealCredit(c)));
                }
            }
            super::handset_churn::NAME => {
                let sims = ev.get("sims").and_then(Value::as_u64).unwrap_or(0);
                if sims > cfg.churn_max_sims as u64 {
                    return touched; // a test or repair handset, not a burner
                }
                // From the oldest SIM's last use to the finding: three SIMs within minutes
                // is a handset being tried with SIMs (a repair bench's first customers,
                // before it passes `churn_max_sims`), not a line's numbers one after another.
                let spread_s = (f.window_end.saturating_sub(f.window_start) / 1000).max(0) as u64;
                if spread_s < cfg.churn_min_spread_s {
                    return touched;
                }
                for (id, line) in &f.lines {
                    // Churn's own `min_sims`, and the most this detector counts as a burner.
                    let mut d = json!({
                        "handset": f.subject,
                        "sims": sims,
                        "churn_max_sims": cfg.churn_max_sims,
                        "sims_spread_s": spread_s,
                        "churn_min_spread_s": cfg.churn_min_spread_s,
                    });
                    copy_present(&mut d, ev, &["min_sims"]);
                    let parts = vec![CreditPart::new(Part::HandsetChurn, d)];
                    let c = Credit::new(line, parts, Some(&f.subject), None);
                    self.credit(*id, c, at, own(*id), outbox, &mut touched);
                }
            }
            super::runner_movement::NAME => {
                // `lines` holds only lines already carrying a verdict or a handover: a
                // runner names the line it works for, it does not make one a deal line.
                let switches = ev.get("switches").cloned().unwrap_or(Value::Null);
                for (id, line) in &f.lines {
                    let mut d = json!({"handset": f.subject, "switches": switches});
                    copy_present(&mut d, ev, &["min_switches"]);
                    let parts = vec![CreditPart::new(Part::Runner, d)];
                    let c = Credit::new(line, parts, Some(&f.subject), None);
                    self.credit(*id, c, at, own(*id), outbox, &mut touched);
                }
            }
            _ => {}
        }
        touched
    }

    /// Credits line `id` here if this shard owns it (`own`), else sends the credit there.
    fn credit(
        &mut self,
        id: u64,
        c: Credit,
        at: Millis,
        own: bool,
        outbox: &mut Vec<Sent>,
        touched: &mut Vec<u64>,
    ) {
        if !own {
            outbox.push(Sent::new(Dest::Number(id), Body::DealCredit(c)));
        } else if self.apply(id, &c.line, &c.parts, c.related.as_deref(), at) {
            touched.push(id);
        }
    }

    /// Folds parts into line `id`'s verdict; false if the key cap refused the line.
    fn apply(
        &mut self,
        id: u64,
        line: &str,
        parts: &[CreditPart],
        related: Option<&str>,
        at: Millis,
    ) -> bool {
        let Some(v) = self.verdict(id, line) else {
            return false;
        };
        for p in parts {
            set(v, p.part, at, p.detail.clone());
        }
        if let Some(r) = related {
            push_related(v, r, at);
        }
        true
    }

    /// Line `id`'s verdict as of `at`, if it reaches the threshold. A line that took over an
    /// earlier line's customers tells that line it is now a deal line ([`Part::Successor`]),
    /// as evidence, on whichever shard owns it.
    fn judge(&self, id: u64, at: Millis, out: &mut Vec<Finding>, outbox: &mut Vec<Sent>) {
        let Some(v) = self.lines.get(&id) else {
            return;
        };
        let score = self.score(v, at);
        if !reaches(score, self.cfg.threshold) {
            return;
        }
        let since = self.since(at);
        let earlier = v
            .earlier
            .as_ref()
            .filter(|(_, t)| *t >= since)
            .map(|(n, _)| &**n);
        if let Some(earlier) = earlier {
            let d = json!({"new_line": &*v.line, "new_score": shown(score), "threshold": self.cfg.threshold});
            let c = Credit::new(
                earlier,
                vec![CreditPart::new(Part::Successor, d)],
                Some(&v.line),
                None,
            );
            let body = Body::DealCredit(c);
            outbox.push(Sent::new(Dest::Number(ids::id(earlier)), body));
        }
        let mut contributions = Vec::new();
        let (mut start, mut end) = (Millis::MAX, Millis::MIN);
        for p in PARTS {
            if let Some(c) = v.parts.get(p).filter(|c| c.at >= since) {
                start = start.min(c.at);
                end = end.max(c.at);
                let mut item = json!({
                    "evidence": p.label(),
                    "weight": p.weight(&self.cfg),
                    "at": c.at,
                });
                if let (Value::Object(m), Value::Object(d)) = (&mut item, &c.detail) {
                    m.extend(d.clone());
                }
                contributions.push(item);
            }
        }
        let mut evidence = serde_json::Map::new();
        evidence.insert("score".into(), json!(shown(score)));
        evidence.insert("threshold".into(), json!(self.cfg.threshold));
        evidence.insert("lookback_s".into(), json!(self.cfg.lookback_s));
        evidence.insert(
            "require_sustained".into(),
            json!(self.cfg.require_sustained),
        );
        evidence.insert(
            "repeat_needs_callbacks".into(),
            json!(self.repeat_needs_callbacks),
        );
        evidence.insert("contributions".into(), Value::Array(contributions));
        out.push(Finding {
            detector: NAME,
            subject: v.line.to_string(),
            subject_id: id,
            subject_kind: SubjectKind::Line,
            score: score.min(1.0),
            event_time: at,
            window_start: start,
            window_end: end.max(start),
            related: related_of(v, since),
            evidence,
            lines: vec![(id, v.line.to_string())],
        });
    }

    /// The start of the lookback that ends at `at`: evidence older than this no longer counts.
    fn since(&self, at: Millis) -> Millis {
        at.saturating_sub(ids::span_ms(self.cfg.lookback_s))
    }

    fn score(&self, v: &LineVerdict, now: Millis) -> f64 {
        let since = self.since(now);
        let held = |p: &Part| v.parts.get(*p).is_some_and(|c| c.at >= since);
        let sum: f64 = PARTS
            .iter()
            .filter(|p| held(p))
            .map(|p| p.weight(&self.cfg))
            .sum();
        // Adverts sent again count as sustained once deals were seen confirmed (the line
        // rang its customers back): a club organiser repeats its texts too, and only reads
        // the replies.
        let sustained = |p: &Part| {
            held(p)
                && (*p != Part::RepeatBulk
                    || !self.repeat_needs_callbacks
                    || held(&Part::Callbacks))
        };
        if self.cfg.require_sustained && !SUSTAINED.iter().any(sustained) {
            // Only one-off behaviours: kept under the threshold (see [`SUSTAINED`]).
            return sum.min(self.cfg.threshold - 0.01);
        }
        sum
    }
}

impl Credit {
    fn new(
        line: &str,
        parts: Vec<CreditPart>,
        related: Option<&str>,
        successor: Option<(u64, Box<str>)>,
    ) -> Self {
        Credit {
            line: line.into(),
            parts,
            related: related.map(Into::into),
            successor,
        }
    }
}

/// The figures of a `customer_fan_in` finding a contribution carries besides `customers`,
/// whichever its rule has: each rule's threshold, and the callback rule's own figure.
const FAN_IN_FIGURES: &[&str] = &[
    "rule",
    "min_customers",
    "min_customers_with_callbacks",
    "callbacks",
    "min_callbacks",
    "follow_min_customers",
];

/// Copies into `detail` those of `keys` the finding's evidence `ev` has.
fn copy_present(detail: &mut Value, ev: &serde_json::Map<String, Value>, keys: &[&str]) {
    if let Value::Object(d) = detail {
        for k in keys {
            if let Some(x) = ev.get(*k) {
                d.insert((*k).to_string(), x.clone());
            }
        }
    }
}

/// A repeat's figures: the finding's, with when the earlier one was (`earlier_at`) and the
/// gap it had to be at least (`repeat_gap_s`).
fn repeat_detail(detail: &Value, earlier_at: Millis, repeat_gap_s: u64) -> Value {
    let mut d = detail.clone();
    if let Value::Object(m) = &mut d {
        m.insert("earlier_at".into(), json!(earlier_at));
        m.insert("repeat_gap_s".into(), json!(repeat_gap_s));
    }
    d
}

/// A contribution's figures as JSON text: the order that breaks a tie in [`Parts::set`].
fn json_text(v: &Value) -> String {
    v.to_string()
}

fn set(v: &mut LineVerdict, p: Part, at: Millis, detail: Value) {
    if p == Part::Handover && detail["role"] == "new_line" {
        if let Some(e) = detail["earlier_line"].as_str() {
            // The latest, and of two at one time the greater name: the same whatever order
            // the credits arrive in.
            if v.earlier.as_ref().is_none_or(|(n, t)| (at, e) > (*t, &**n)) {
                v.earlier = Some((e.into(), at));
            }
        }
    }
    v.parts.set(p, at, detail);
    v.last_at = v.last_at.max(at);
}

/// The identities in `related` named by evidence since `since`, in pseudonym order: credits
/// from other shards arrive at barriers, in an order that depends on the shard count, so
/// the order they came in is not shown (nor does it choose which goes at the cap).
fn related_of(v: &LineVerdict, since: Millis) -> Vec<String> {
    let mut related: Vec<String> = v
        .related
        .iter()
        .filter(|r| r.1 >= since)
        .map(|r| r.0.clone())
        .collect();
    related.sort_unstable();
    related
}

fn push_related(v: &mut LineVerdict, who: &str, at: Millis) {
    if *v.line == *who {
        return;
    }
    if let Some(r) = v.related.iter_mut().find(|r| r.0 == who) {
        r.1 = r.1.max(at);
        return;
    }
    v.related.push((who.to_string(), at));
    if v.related.len() > MAX_RELATED {
        // The oldest goes, of equals the last in pseudonym order: the same list whatever
        // order the credits came in.
        let least = (0..v.related.len())
            .min_by_key(|&i| (v.related[i].1, std::cmp::Reverse(&v.related[i].0)));
        if let Some(i) = least {
            v.related.remove(i);
        }
    }
}

impl Detector for DealLine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_findings(&mut self, at: Millis, findings: &[Finding], ctx: &mut Ctx<'_>) {
        if !self.cfg.enabled {
            return;
        }
        let mut touched = Vec::new();
        for f in findings {
            for id in self.absorb(f, ctx.outbox) {
                if !touched.contains(&id) {
                    touched.push(id);
                }
            }
        }
        for id in touched {
            self.judge(id, at, ctx.out, ctx.outbox);
        }
    }

    fn on_evidence(&mut self, e: &Evidence, ctx: &mut Ctx<'_>) {
        let (Body::DealCredit(c), Dest::Number(id)) = (&e.body, e.dest) else {
            return;
        };
        if !self.cfg.enabled {
            return;
        }
        if let Some((new_id, new_line)) = &c.successor {
            let threshold = self.cfg.threshold;
            let earlier_score = self.lines.get(&id).map(|v| self.score(v, e.at));
            if let Some(es) = earlier_score.filter(|es| reaches(*es, threshold)) {
                let parts = vec![CreditPart::predecessor(&c.line, es, threshold)];
                let answer = Credit::new(new_line, parts, Some(&c.line), None);
                let body = Body::DealCredit(answer);
                ctx.outbox.push(Sent::new(Dest::Number(*new_id), body));
            }
        }
        if let [CreditPart {
            part: Part::Successor,
            ..
        }] = c.parts.as_slice()
        {
            // A successor's verdict is told again at each of its later findings: it counts
            // once, and not at all for a line already a deal line on its own evidence (each
            // telling would make it fire again, an alert each cooldown while the successor
            // is active).
            let since = self.since(e.at);
            let known = self.lines.get(&id).is_some_and(|v| {
                v.parts.get(Part::Successor).is_some_and(|s| s.at >= since)
                    || reaches(self.score(v, e.at), self.cfg.threshold)
            });
            if known {
                return;
            }
        }
        if self.apply(id, &c.line, &c.parts, c.related.as_deref(), e.at) {
            self.judge(id, e.at, ctx.out, ctx.outbox);
        }
    }

    fn expire(&mut self, watermark: Millis) {
        let cutoff = self.since(watermark);
        self.lines.retain(|_, v| {
            v.related.retain(|r| r.1 >= cutoff);
            v.last_at >= cutoff
        });
    }

    fn stats(&self) -> StateStats {
        StateStats {
            keys: self.lines.len(),
            bytes: ids::map_bytes(&self.lines)
                + self
                    .lines
                    .values()
                    .map(|v| {
                        v.line.len()
                            + v.earlier.as_ref().map_or(0, |e| e.0.len())
                            + v.related.iter().map(|r| r.0.len() + 32).sum::<usize>()
                            + v.parts.heap_bytes()
                            + v.parts.len() * 96
                    })
                    .sum::<usize>(),
            cap_hits: self.cap_hits,
        }
    }

    fn reconfigure(&mut self, cfg: &Config) {
        self.cfg = cfg.deal_line.clone();
        self.repeat_needs_callbacks = repeat_needs_callbacks(cfg);
        self.max_keys = cfg.engine.max_keys_per_detector;
    }

    fn box_clone(&self) -> Box<dyn Detector> {
        Box::new(self.clone())
    }

    fn save_state(&self) -> Result<Vec<u8>, codec::Error> {
        codec::encode(&(&self.lines, self.cap_hits))
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), codec::Error> {
        (self.lines, self.cap_hits) = codec::decode(bytes)?;
        Ok(())
    }

    fn split(
        &mut self,
        parts: usize,
        owner: &dyn Fn(u64) -> usize,
        counted: usize,
    ) -> Vec<Box<dyn Detector>> {
        let cap_hits = std::mem::take(&mut self.cap_hits);
        super::split_map(&mut self.lines, parts, owner)
            .into_iter()
            .enumerate()
            .map(|(p, lines)| {
                Box::new(DealLine {
                    cfg: self.cfg.clone(),
                    repeat_needs_callbacks: self.repeat_needs_callbacks,
                    lines,
                    max_keys: self.max_keys,
                    cap_hits: if p == counted { cap_hits } else { 0 },
                }) as Box<dyn Detector>
            })
            .collect()
    }

    fn merge(&mut self, part: Box<dyn Detector>) {
        let part = super::part_of::<Self>(part);
        super::absorb_map(&mut self.lines, part.lines);
        self.cap_hits += part.cap_hits;
    }

    #[cfg(test)]
    fn keys(&self) -> Vec<(&'static str, u64)> {
        super::named_keys("lines", &self.lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::*;
    use crate::evidence;
    use crate::state::Contacts;

    fn finding(
        detector: &'static str,
        subject: &str,
        at: Millis,
        ev: serde_json::Map<String, Value>,
        lines: Vec<&str>,
    ) -> Finding {
        Finding {
            detector,
            subject: subject.into(),
            subject_id: ids::id(subject),
            subject_kind: match detector {
                crate::detect::handset_churn::NAME | crate::detect::runner_movement::NAME => {
                    SubjectKind::Handset
                }
                _ => SubjectKind::Line,
            },
            score: 1.0,
            event_time: at,
            // A churn finding's SIMs spread over two days, as a burner's do
            // (`churn_min_spread_s`); a test that wants less sets it.
            window_start: match detector {
                crate::detect::handset_churn::NAME => at - 2 * DAY,
                _ => at,
            },
            window_end: at,
            related: vec![],
            evidence: ev,
            lines: lines
                .into_iter()
                .map(|l| (ids::id(l), l.to_string()))
                .collect(),
        }
    }

    /// Shows `fs` to shard `shard` of `shards` (the one owning their subject) and returns
    /// the verdicts made and the evidence sent, stamped as the engine does for the
    /// `seq`-th call.
    fn show(
        shards: &mut [DealLine],
        shard: usize,
        at: Millis,
        fs: &[Finding],
        seq: u64,
    ) -> (Vec<Finding>, Vec<Evidence>) {
        let mut contacts = Contacts::new(10, 10, 10);
        let (mut out, mut sent) = (Vec::new(), Vec::new());
        let mut ctx = Ctx {
            role: crate::exchange::Role::Sender,
            contacts: &mut contacts,
            stream_start: 0,
            out: &mut out,
            outbox: &mut sent,
            cells: None,
            cell: None,
            shards: 1,
            shard: 0,
        };
        shards[shard].on_findings(at, fs, &mut ctx);
        let inbox = sent
            .into_iter()
            .enumerate()
            .map(|(k, x)| Evidence {
                dest: x.dest,
                at,
                event_id: format!("e{seq}").into(),
                order: [at as u64, seq, k as u64, 0],
                body: x.body,
            })
            .collect();
        (out, inbox)
    }

    /// Which of `n` shards owns a line.
    fn owner(id: u64, n: usize) -> usize {
        (id % n as u64) as usize
    }

    /// A barrier over `shards`: the evidence applied by the owner of its line, round after
    /// round as the engine does; the verdicts made.
    fn barrier(shards: &mut [DealLine], mut inbox: Vec<Evidence>) -> Vec<Finding> {
        let mut contacts = Contacts::new(10, 10, 10);
        let mut out = Vec::new();
        while !inbox.is_empty() {
            let mut round = std::mem::take(&mut inbox);
            round.sort_by_key(|e| e.order);
            for (rank, e) in round.iter().enumerate() {
                let Dest::Number(id) = e.dest else {
                    panic!("deal_line sends only to lines: {e:?}");
                };
                let n = shards.len();
                let mut sent = Vec::new();
                let mut ctx = Ctx {
                    role: crate::exchange::Role::Barrier,
                    contacts: &mut contacts,
                    stream_start: 0,
                    out: &mut out,
                    outbox: &mut sent,
                    cells: None,
                    cell: None,
                    shards: 1,
                    shard: 0,
                };
                shards[owner(id, n)].on_evidence(e, &mut ctx);
                for (k, x) in sent.into_iter().enumerate() {
                    inbox.push(Evidence {
                        dest: x.dest,
                        at: e.at,
                        event_id: e.event_id.clone(),
                        order: [rank as u64, x.hint[0], x.hint[1], k as u64],
                        body: x.body,
                    });
                }
            }
        }
        out
    }

    /// One shard: the findings shown, then a barrier; every verdict made.
    fn run(d: &mut DealLine, at: Millis, fs: &[Finding]) -> Vec<Finding> {
        let shards = std::slice::from_mut(d);
        let (mut out, inbox) = show(shards, 0, at, fs, 0);
        out.extend(barrier(shards, inbox));
        out
    }

    /// `customer_fan_in`'s word that `line` has rung four of its customers back, each
    /// within 10 minutes of their contact (deals confirmed), applied at a barrier at `at`:
    /// what `repeat_needs_callbacks` waits for before adverts sent again count as sustained.
    fn confirm(shards: &mut [DealLine], line: &str, at: Millis) -> Vec<Finding> {
        let detail = json!({"callbacks": 4, "min_callbacks": 4, "callback_within_s": 600,
            "window_s": 21600});
        let e = Evidence {
            dest: Dest::Number(ids::id(line)),
            at,
            event_id: "cb".into(),
            order: [at as u64, 0, 0, 0],
            body: callbacks_credit(line, detail),
        };
        barrier(shards, vec![e])
    }

    fn bulk(line: &str, at: Millis, repeat: f64) -> Finding {
        finding(
            bulk_sms_name(),
            line,
            at,
            evidence! {"recipients" => 80, "repeat_audience" => repeat},
            vec![line],
        )
    }

    fn bulk_sms_name() -> &'static str {
        crate::detect::bulk_sms::NAME
    }

    fn fan_in(line: &str, at: Millis) -> Finding {
        finding(
            crate::detect::customer_fan_in::NAME,
            line,
            at,
            evidence! {"customers" => 20},
            vec![line],
        )
    }

    /// `line_handover` finding `new` took `old`'s customers over at `at` (overlap 0.9).
    fn handover(new: &str, old: &str, at: Millis) -> Finding {
        finding(
            crate::detect::line_handover::NAME,
            new,
            at,
            evidence! {"overlap" => 0.9},
            vec![new, old],
        )
    }

    /// Every contribution carries its figures and the thresholds they met, as every other
    /// detector's evidence does: the bulk rule's and the repeat's, the fan-in rule's (the
    /// callback rule's callbacks too), the handover's, the churn's, the runner's and the
    /// predecessor's.
    #[test]
    fn every_contribution_carries_its_figures_and_their_thresholds() {
        let mut cfg = Config::default();
        cfg.deal_line.repeat_audience_min = 0.6;
        cfg.deal_line.churn_max_sims = 9;
        let dl = cfg.deal_line.clone();
        let mut d = DealLine::new(&cfg, 100);
        let bulk_at = |line: &str, at, repeat: f64| {
            let ev = evidence! {"recipients" => 31, "min_recipients" => 30,
            "repeat_audience" => repeat, "repeat_gap_s" => 43200, "window_s" => 3600};
            finding(bulk_sms_name(), line, at, ev, vec![line])
        };
        let callbacks = |line: &str, at| {
            let ev = evidence! {"customers" => 8, "min_customers_with_callbacks" => 8,
            "callbacks" => 5, "min_callbacks" => 4, "callback_within_s" => 1800};
            finding(
                crate::detect::customer_fan_in::NAME,
                line,
                at,
                ev,
                vec![line],
            )
        };
        run(&mut d, 0, &[bulk_at("old", 0, 0.0), callbacks("old", 0)]);
        assert!(confirm(std::slice::from_mut(&mut d), "old", DAY - HOUR).is_empty());
        let out = run(
            &mut d,
            DAY,
            &[bulk_at("old", DAY, 0.9), callbacks("old", DAY)],
        );
        assert_eq!(out.len(), 1);
        let t = DAY + HOUR;
        let churn = evidence! {"sims" => 3, "min_sims" => 3, "window_s" => 259200};
        let churn = finding(
            crate::detect::handset_churn::NAME,
            "burner",
            t,
            churn,
            vec!["old"],
        );
        run(&mut d, t, &[churn]);
        let t = DAY + 2 * HOUR;
        let runner = evidence! {"switches" => 3, "min_switches" => 2};
        let runner = finding(
            crate::detect::runner_movement::NAME,
            "runner",
            t,
            runner,
            vec!["old"],
        );
        run(&mut d, t, &[runner]);
        let h = evidence! {"overlap" => 0.9, "min_overlap" => 0.5};
        let h = finding(
            crate::detect::line_handover::NAME,
            "new",
            2 * DAY,
            h,
            vec!["new", "old"],
        );
        let out = run(&mut d, 2 * DAY, &[h]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].subject, "old");
        let t = 2 * DAY + HOUR;
        let mut out_new = run(&mut d, t, &[bulk_at("new", t, 0.0)]);
        assert_eq!(out_new.len(), 1);
        let mut c: Vec<Value> = out[0].evidence["contributions"].as_array().unwrap().clone();
        c.extend(
            out_new.remove(0).evidence["contributions"]
                .as_array()
                .unwrap()
                .clone(),
        );
        let of = |label: &str, line_role: Option<&str>| -> Value {
            c.iter()
                .find(|x| {
                    x["evidence"] == label
                        && line_role.is_none_or(|r| x["role"].as_str() == Some(r))
                })
                .cloned()
                .unwrap_or_else(|| panic!("no {label} in {c:?}"))
        };
        let has = |x: &Value, want: Value| {
            for (k, v) in want.as_object().unwrap() {
                assert_eq!(&x[k], v, "{k} in {x}");
            }
        };
        let bulk = of("bulk_sms", None);
        has(
            &bulk,
            json!({"recipients": 31, "min_recipients": 30, "repeat_audience": 0.9,
                "repeat_audience_min": 0.6}),
        );
        let repeat = of("repeat_bulk_sms", None);
        has(
            &repeat,
            json!({"recipients": 31, "min_recipients": 30, "repeat_audience": 0.9,
                "repeat_audience_min": 0.6, "earlier_at": 0, "repeat_gap_s": dl.repeat_gap_s}),
        );
        let fan_in = json!({"customers": 8, "min_customers_with_callbacks": 8,
            "callbacks": 5, "min_callbacks": 4});
        has(&of("customer_fan_in", None), fan_in.clone());
        let repeat = of("repeat_customer_fan_in", None);
        has(&repeat, fan_in);
        has(
            &repeat,
            json!({"earlier_at": 0, "repeat_gap_s": dl.repeat_gap_s}),
        );
        has(
            &of("handset_churn", None),
            json!({"handset": "burner", "sims": 3, "min_sims": 3, "churn_max_sims": 9,
                "sims_spread_s": 172_800, "churn_min_spread_s": dl.churn_min_spread_s}),
        );
        has(
            &of("runner_movement", None),
            json!({"handset": "runner", "switches": 3, "min_switches": 2}),
        );
        for role in ["earlier_line", "new_line"] {
            has(
                &of("line_handover", Some(role)),
                json!({"overlap": 0.9, "min_overlap": 0.5}),
            );
        }
        has(
            &of("customer_callbacks", None),
            json!({"callbacks": 4, "min_callbacks": 4, "callback_within_s": 600,
                "window_s": 21600, "at": DAY - HOUR, "weight": 0.0}),
        );
        let pred = of("predecessor_deal_line", None);
        has(
            &pred,
            json!({"earlier_line": "old", "threshold": dl.threshold}),
        );
        assert!(pred["earlier_score"].as_f64().unwrap() + 1e-9 >= dl.threshold);
        // The window rule's threshold, on a line of its own.
        let ev = evidence! {"customers" => 13, "min_customers" => 12, "window_s" => 21600};
        let f = finding(crate::detect::customer_fan_in::NAME, "w", 0, ev, vec!["w"]);
        run(&mut d, 2 * DAY, &[f]);
        let got = &d.lines[&ids::id("w")]
            .parts
            .get(Part::FanIn)
            .unwrap()
            .detail;
        assert_eq!(got, &json!({"customers": 13, "min_customers": 12}));
    }

    #[test]
    fn one_off_bulk_and_replies_stay_below_threshold() {
        let mut d = DealLine::new(&Config::default(), 100);
        assert!(run(&mut d, 0, &[bulk("greeter", 0, 0.1)]).is_empty());
        assert!(run(&mut d, HOUR, &[fan_in("greeter", HOUR)]).is_empty());
    }

    #[test]
    fn first_blast_to_old_friends_is_not_a_repeat() {
        let mut d = DealLine::new(&Config::default(), 100);
        // Half the audience was texted before, but this is the line's first bulk send.
        assert!(run(&mut d, 0, &[bulk("greeter", 0, 0.6), fan_in("greeter", 0)]).is_empty());
    }

    #[test]
    fn daily_reminders_to_new_people_with_replies_stay_below() {
        let mut d = DealLine::new(&Config::default(), 100);
        for day in 0..4 {
            let t = day * DAY;
            assert!(run(&mut d, t, &[bulk("dentist", t, 0.1)]).is_empty());
            assert!(run(&mut d, t + HOUR, &[fan_in("dentist", t + HOUR)]).is_empty());
        }
    }

    /// Adverts to the same list again, with the customers' fan-in, and deals confirmed
    /// (the line rang its customers back): a deal line. Without the callbacks this is also
    /// what a club organiser shows ("game on tonight?" to the same members twice a week, and
    /// their replies), so it waits for them; once they come it is called at once.
    #[test]
    fn same_list_again_with_fan_in_is_a_deal_line_once_deals_are_confirmed() {
        let mut d = DealLine::new(&Config::default(), 100);
        assert!(run(&mut d, 0, &[bulk("line", 0, 0.0)]).is_empty());
        assert!(run(&mut d, HOUR, &[fan_in("line", HOUR)]).is_empty());
        assert!(run(&mut d, DAY, &[bulk("line", DAY, 0.9)]).is_empty());
        assert!(run(&mut d, DAY + HOUR, &[fan_in("line", DAY + HOUR)]).is_empty());
        let out = confirm(std::slice::from_mut(&mut d), "line", DAY + 2 * HOUR);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event_time, DAY + 2 * HOUR);
        let c = out[0].evidence["contributions"].as_array().unwrap();
        let labels: Vec<_> = c.iter().map(|x| x["evidence"].as_str().unwrap()).collect();
        assert_eq!(
            labels,
            [
                "bulk_sms",
                "repeat_bulk_sms",
                "customer_fan_in",
                "repeat_customer_fan_in",
                "customer_callbacks"
            ]
        );
        assert_eq!(out[0].evidence["score"], 0.85);
        assert_eq!(out[0].evidence["repeat_needs_callbacks"], true);
    }

    /// Confirmed deals older than the lookback no longer confirm; and with the rule off
    /// (`repeat_needs_callbacks = false`), or with `customer_fan_in` disabled (nothing would
    /// ever count the callbacks), adverts sent again count alone, as before.
    #[test]
    fn the_callback_rule_has_a_lookback_and_a_switch_and_stands_aside_without_fan_in() {
        let mut d = DealLine::new(&Config::default(), 100);
        confirm(std::slice::from_mut(&mut d), "line", 0);
        run(
            &mut d,
            4 * DAY,
            &[bulk("line", 4 * DAY, 0.0), fan_in("line", 4 * DAY)],
        );
        let t = 5 * DAY + HOUR;
        assert!(run(&mut d, t, &[bulk("line", t, 0.9)]).is_empty());
        assert_eq!(confirm(std::slice::from_mut(&mut d), "line", t).len(), 1);
        let mut off = Config::default();
        off.deal_line.repeat_needs_callbacks = false;
        let mut no_fan_in = Config::default();
        no_fan_in.customer_fan_in.enabled = false;
        for cfg in [off, no_fan_in] {
            let mut d = DealLine::new(&cfg, 100);
            run(&mut d, 0, &[bulk("line", 0, 0.0), fan_in("line", 0)]);
            let out = run(&mut d, DAY, &[bulk("line", DAY, 0.9)]);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].evidence["repeat_needs_callbacks"], false);
        }
        // And a reconfiguration turns it back on.
        let mut d = DealLine::new(&no_fan_in_config(), 100);
        d.reconfigure(&Config::default());
        run(&mut d, 0, &[bulk("line", 0, 0.0), fan_in("line", 0)]);
        assert!(run(&mut d, DAY, &[bulk("line", DAY, 0.9)]).is_empty());
    }

    fn no_fan_in_config() -> Config {
        let mut c = Config::default();
        c.customer_fan_in.enabled = false;
        c
    }

    /// A person who once texted every friend, then got a new number and texted them all
    /// again, shows each one-off kind of evidence on both lines: no verdict on either. Once
    /// each line sends its adverts to the same list again, the handover counts for both,
    /// and each names the other.
    #[test]
    fn a_handover_with_only_one_off_evidence_is_no_verdict_until_adverts_repeat() {
        let mut d = DealLine::new(&Config::default(), 100);
        run(&mut d, 0, &[bulk("old", 0, 0.0), fan_in("old", 0)]);
        let h = handover("new", "old", DAY);
        // Bulk (0.25) + fan-in (0.25) + handover (0.35) on the old line: 0.85, all one-off.
        assert!(run(&mut d, DAY, &[h]).is_empty());
        let t = DAY + HOUR;
        assert!(run(&mut d, t, &[bulk("new", t, 0.0), fan_in("new", t)]).is_empty());
        confirm(std::slice::from_mut(&mut d), "old", DAY + HOUR);
        let out = run(&mut d, DAY + 2 * HOUR, &[bulk("old", DAY + 2 * HOUR, 0.9)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].subject, "old");
        assert_eq!(out[0].related, vec!["new"]);
        let labels = |f: &Finding| -> Vec<String> {
            let c = f.evidence["contributions"].as_array().unwrap();
            c.iter()
                .map(|x| x["evidence"].as_str().unwrap().to_string())
                .collect()
        };
        assert!(labels(&out[0]).contains(&"line_handover".to_string()));
        let t = 2 * DAY + HOUR;
        confirm(std::slice::from_mut(&mut d), "new", t - HOUR);
        let out = run(&mut d, t, &[bulk("new", t, 0.9)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].subject, "new");
        assert_eq!(out[0].related, vec!["old"]);
        assert!(labels(&out[0]).contains(&"line_handover".to_string()));
    }

    /// A network's first line handed over before it sent its adverts again: its own
    /// evidence is one-off, so it waits; once the new line is called a deal line (its adverts
    /// again, a day later) the earlier line learns it at the barrier and is called one too,
    /// naming the new line. Told again at the new line's next finding, it does not fire again.
    #[test]
    fn an_earlier_line_is_called_a_deal_line_once_its_successor_is() {
        let mut d = DealLine::new(&Config::default(), 100);
        run(&mut d, 0, &[bulk("old", 0, 0.0), fan_in("old", 0)]);
        let h = handover("new", "old", HOUR);
        assert!(run(&mut d, HOUR, &[h]).is_empty());
        assert!(run(&mut d, 2 * HOUR, &[bulk("new", 2 * HOUR, 0.0)]).is_empty());
        let t = DAY + 2 * HOUR;
        confirm(std::slice::from_mut(&mut d), "new", t - HOUR);
        let out = run(&mut d, t, &[bulk("new", t, 0.9)]);
        let subjects: Vec<&str> = out.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(subjects, ["new", "old"]);
        assert_eq!(out[1].related, vec!["new"]);
        let c = out[1].evidence["contributions"].as_array().unwrap();
        let successor = c
            .iter()
            .find(|x| x["evidence"] == "successor_deal_line")
            .expect("the old line names its successor's verdict");
        assert_eq!(successor["new_line"], "new");
        assert_eq!(successor["new_score"], 0.85);
        let out = run(&mut d, t + HOUR, &[fan_in("new", t + HOUR)]);
        let subjects: Vec<&str> = out.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(subjects, ["new"]);
    }

    /// A network hands its lines on in a chain, A to B to C, each before it sent its adverts
    /// again. B's own handover to C replaces its contribution from A's, but B still knows A:
    /// once C is a deal line, B is called one at the barrier, and then A.
    #[test]
    fn a_chain_of_lines_handed_on_is_called_back_to_its_first() {
        let mut d = DealLine::new(&Config::default(), 100);
        run(&mut d, 0, &[bulk("a", 0, 0.0), fan_in("a", 0)]);
        assert!(run(&mut d, HOUR, &[handover("b", "a", HOUR)]).is_empty());
        let t = 2 * HOUR;
        assert!(run(&mut d, t, &[bulk("b", t, 0.0), fan_in("b", t)]).is_empty());
        assert!(run(&mut d, 3 * HOUR, &[handover("c", "b", 3 * HOUR)]).is_empty());
        assert!(run(&mut d, 4 * HOUR, &[bulk("c", 4 * HOUR, 0.0)]).is_empty());
        let t = DAY + 4 * HOUR;
        confirm(std::slice::from_mut(&mut d), "c", t - HOUR);
        let out = run(&mut d, t, &[bulk("c", t, 0.9)]);
        let subjects: Vec<&str> = out.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(subjects, ["c", "b", "a"]);
    }

    #[test]
    fn successor_of_a_deal_line_inherits_its_verdict() {
        let mut d = DealLine::new(&Config::default(), 100);
        run(&mut d, 0, &[bulk("old", 0, 0.0), fan_in("old", 0)]);
        confirm(std::slice::from_mut(&mut d), "old", HOUR);
        assert_eq!(run(&mut d, DAY, &[bulk("old", DAY, 0.9)]).len(), 1);
        let h = handover("new", "old", 2 * DAY);
        run(&mut d, 2 * DAY, &[h]);
        // Handover (0.35) + inherited (0.25) + its own first advert (0.25): no fan-in needed.
        let out = run(&mut d, 2 * DAY + HOUR, &[bulk("new", 2 * DAY + HOUR, 0.0)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].subject, "new");
        let parts = out[0].evidence["contributions"].as_array().unwrap();
        assert!(
            parts
                .iter()
                .any(|c| c["evidence"] == "predecessor_deal_line"),
            "{parts:?}"
        );
    }

    #[test]
    fn repair_shop_handset_is_not_counted() {
        let mut d = DealLine::new(&Config::default(), 100);
        run(&mut d, 0, &[bulk("a", 0, 0.0), fan_in("a", 0)]);
        let churn = finding(
            crate::detect::handset_churn::NAME,
            "shop",
            HOUR,
            evidence! {"sims" => 40},
            vec!["a"],
        );
        assert!(run(&mut d, HOUR, &[churn]).is_empty());
        let burner = finding(
            crate::detect::handset_churn::NAME,
            "burner",
            HOUR,
            evidence! {"sims" => 3},
            vec!["a"],
        );
        assert_eq!(run(&mut d, HOUR, &[burner]).len(), 1);
    }

    /// A handset seen with three SIMs within minutes is being tried with SIMs (a repair
    /// bench's first customers, before it passes `churn_max_sims`), not carrying a line's
    /// numbers one after another: its churn is not counted, however few its SIMs. Spread
    /// over `churn_min_spread_s` it is; and 0 counts every spread.
    #[test]
    fn sims_tried_within_minutes_are_not_a_burner() {
        let bench = |at: Millis, spread: Millis| {
            let mut f = churn("bench", at, "a");
            f.window_start = at - spread;
            f
        };
        let mut d = DealLine::new(&Config::default(), 100);
        run(&mut d, 0, &[bulk("a", 0, 0.0), fan_in("a", 0)]);
        assert!(run(&mut d, HOUR, &[bench(HOUR, 8 * MIN)]).is_empty());
        assert!(d.lines[&ids::id("a")]
            .parts
            .get(Part::HandsetChurn)
            .is_none());
        let out = run(&mut d, 2 * HOUR, &[bench(2 * HOUR, 6 * HOUR)]);
        assert_eq!(out.len(), 1);
        let c = out[0].evidence["contributions"].as_array().unwrap();
        let churn = c.iter().find(|x| x["evidence"] == "handset_churn").unwrap();
        assert_eq!(churn["sims_spread_s"], 21_600);
        assert_eq!(churn["churn_min_spread_s"], 21_600);
        let mut cfg = Config::default();
        cfg.deal_line.churn_min_spread_s = 0;
        let mut d = DealLine::new(&cfg, 100);
        run(&mut d, 0, &[bulk("a", 0, 0.0), fan_in("a", 0)]);
        assert_eq!(run(&mut d, HOUR, &[bench(HOUR, 0)]).len(), 1);
    }

    #[test]
    fn evidence_older_than_the_lookback_does_not_count() {
        let mut d = DealLine::new(&Config::default(), 100);
        run(&mut d, 0, &[bulk("line", 0, 0.0), fan_in("line", 0)]);
        assert!(run(&mut d, 10 * DAY, &[bulk("line", 10 * DAY, 0.9)]).is_empty());
    }

    fn churn(handset: &str, at: Millis, line: &str) -> Finding {
        finding(
            crate::detect::handset_churn::NAME,
            handset,
            at,
            evidence! {"sims" => 3},
            vec![line],
        )
    }

    #[test]
    fn related_leaves_with_its_evidence_and_is_capped() {
        let mut d = DealLine::new(&Config::default(), 100);
        // A new burner handset every day for ten days; the line stays active.
        for day in 0..10 {
            run(
                &mut d,
                day * DAY,
                &[churn(&format!("h{day}"), day * DAY, "line")],
            );
        }
        let t = 10 * DAY;
        let out = run(&mut d, t, &[bulk("line", t, 0.0), fan_in("line", t)]);
        assert_eq!(out.len(), 1);
        // Only the handsets within the 4-day lookback, like the contributions.
        assert_eq!(out[0].related, ["h6", "h7", "h8", "h9"]);
        d.expire(t);
        assert_eq!(d.lines[&ids::id("line")].related.len(), 4);
        // Many handsets at once: the list stays bounded.
        for i in 0..100 {
            run(&mut d, t, &[churn(&format!("x{i}"), t, "line")]);
        }
        assert_eq!(d.lines[&ids::id("line")].related.len(), MAX_RELATED);
    }

    /// Credits reach a line's shard in an order that depends on the shard count: neither
    /// the list shown nor the entries the cap keeps may depend on it.
    #[test]
    fn related_does_not_depend_on_the_order_credits_came_in() {
        let t = DAY;
        let names: Vec<String> = (0..MAX_RELATED + 6).map(|i| format!("h{i:02}")).collect();
        let held = |order: &mut dyn Iterator<Item = &String>| {
            let mut d = DealLine::new(&Config::default(), 100);
            for h in order {
                run(&mut d, t, &[churn(h, t, "line")]);
            }
            let out = run(&mut d, t, &[bulk("line", t, 0.0), fan_in("line", t)]);
            assert_eq!(out.len(), 1);
            out[0].related.clone()
        };
        let forward = held(&mut names.iter());
        let backward = held(&mut names.iter().rev());
        assert_eq!(forward.len(), MAX_RELATED);
        assert_eq!(forward, backward);
        let mut sorted = forward.clone();
        sorted.sort();
        assert_eq!(forward, sorted);
    }

    /// A line whose hash falls on shard `shard` of `n`, named from `stem`.
    fn line_on(stem: &str, shard: usize, n: usize) -> String {
        (0..)
            .map(|i| format!("{stem}{i}"))
            .find(|l| owner(ids::id(l), n) == shard)
            .unwrap_or_default()
    }

    #[test]
    fn two_contributions_at_one_time_keep_the_same_figures_in_either_order() {
        let a = json!({"handset": "Ha", "switches": 2});
        let b = json!({"handset": "Hb", "switches": 2});
        let kept = |first: &Value, second: &Value| {
            let mut parts = Parts::default();
            parts.set(Part::Runner, HOUR, first.clone());
            parts.set(Part::Runner, HOUR, second.clone());
            parts.get(Part::Runner).map(|c| c.detail.clone())
        };
        assert_eq!(kept(&a, &b), Some(b.clone()));
        assert_eq!(kept(&b, &a), Some(b.clone()));
        // A later one still replaces, an earlier one still does not.
        let mut parts = Parts::default();
        parts.set(Part::Runner, HOUR, b.clone());
        parts.set(Part::Runner, HOUR + 1, a.clone());
        parts.set(Part::Runner, HOUR - 1, b.clone());
        assert_eq!(parts.get(Part::Runner).map(|c| c.detail.clone()), Some(a));
    }

    #[test]
    fn a_handset_findings_credit_waits_for_the_barrier_and_keeps_its_time() {
        let mut d = DealLine::new(&Config::default(), 100);
        run(&mut d, 0, &[bulk("a", 0, 0.0), fan_in("a", 0)]);
        let shards = std::slice::from_mut(&mut d);
        // The churn finding is the handset's: the line's credit is evidence, even on the
        // one shard that owns both.
        let (now, inbox) = show(shards, 0, HOUR, &[churn("burner", HOUR, "a")], 7);
        assert!(now.is_empty(), "{now:?}");
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].dest, Dest::Number(ids::id("a")));
        let out = barrier(shards, inbox);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].subject.as_str(), out[0].event_time), ("a", HOUR));
        assert_eq!(out[0].related, ["burner"]);
        let c = out[0].evidence["contributions"].as_array().unwrap();
        assert!(c
            .iter()
            .any(|c| c["evidence"] == "handset_churn" && c["at"] == HOUR));
    }

    /// The predecessor's verdict is on the earlier line's shard: its answer comes back in
    /// the barrier's next round, as of the handover's time.
    #[test]
    fn a_successor_learns_its_predecessors_verdict_at_the_barrier() {
        let n = 2;
        let (old, new) = (line_on("old", 0, n), line_on("new", 1, n));
        let mut shards = vec![DealLine::new(&Config::default(), 100); n];
        let mut seq = 0;
        let mut step = |shards: &mut [DealLine], at, fs: &[Finding]| {
            seq += 1;
            let shard = owner(fs[0].subject_id, n);
            let (mut out, inbox) = show(shards, shard, at, fs, seq);
            out.extend(barrier(shards, inbox));
            out
        };
        step(&mut shards, 0, &[bulk(&old, 0, 0.0), fan_in(&old, 0)]);
        confirm(&mut shards, &old, HOUR);
        assert_eq!(step(&mut shards, DAY, &[bulk(&old, DAY, 0.9)]).len(), 1);
        let h = handover(&new, &old, 2 * DAY);
        let out = step(&mut shards, 2 * DAY, &[h]);
        // The old line (on its shard) with the handover, then the new line with handover
        // and predecessor (0.6): both at the handover's time.
        let who: Vec<_> = out
            .iter()
            .map(|f| (f.subject.as_str(), f.event_time))
            .collect();
        assert_eq!(who, [(old.as_str(), 2 * DAY)]);
        assert!(shards[1].lines[&ids::id(&new)]
            .parts
            .get(Part::Predecessor)
            .is_some());
        assert!(!shards[0].lines.contains_key(&ids::id(&new)));
        let out = step(
            &mut shards,
            2 * DAY + HOUR,
            &[bulk(&new, 2 * DAY + HOUR, 0.0)],
        );
        assert_eq!(out.len(), 1, "{out:?}");
        let parts = out[0].evidence["contributions"].as_array().unwrap();
        assert!(parts
            .iter()
            .any(|c| c["evidence"] == "predecessor_deal_line"));
    }

    /// Every verdict of a run of findings over lines on different shards, as
    /// (time, subject, evidence) in a fixed order.
    fn verdicts_with(n: usize, barrier_every: usize) -> Vec<(Millis, String, String)> {
        let mut shards = vec![DealLine::new(&Config::default(), 100); n];
        // The same names whatever `n`: on alternate shards of two.
        let l: Vec<String> = (0..4)
            .map(|i| line_on(&format!("l{i}-"), i % 2, 2))
            .collect();
        let handover = |new: &str, old: &str, at| {
            finding(
                crate::detect::line_handover::NAME,
                new,
                at,
                evidence! {"overlap" => 0.8},
                vec![new, old],
            )
        };
        let runner = |at, lines: Vec<&str>| {
            finding(
                crate::detect::runner_movement::NAME,
                "runner",
                at,
                evidence! {"switches" => 3},
                lines,
            )
        };
        let mut plan: Vec<(Millis, Vec<Finding>)> = vec![
            (0, vec![bulk(&l[0], 0, 0.0), fan_in(&l[0], 0)]),
            (HOUR, vec![churn("burner", HOUR, &l[0])]),
            (2 * HOUR, vec![churn("burner", 2 * HOUR, &l[1])]),
            (DAY, vec![bulk(&l[0], DAY, 0.9)]),
            (DAY + MIN, vec![handover(&l[1], &l[0], DAY + MIN)]),
            (
                DAY + 2 * MIN,
                vec![runner(DAY + 2 * MIN, vec![&l[0], &l[1], &l[2]])],
            ),
            (DAY + HOUR, vec![bulk(&l[1], DAY + HOUR, 0.0)]),
            (2 * DAY, vec![handover(&l[3], &l[1], 2 * DAY)]),
            (2 * DAY + MIN, vec![fan_in(&l[3], 2 * DAY + MIN)]),
            (2 * DAY + HOUR, vec![fan_in(&l[2], 2 * DAY + HOUR)]),
        ];
        let mut out = Vec::new();
        let mut inbox = Vec::new();
        for (seq, (at, fs)) in plan.iter_mut().enumerate() {
            let shard = owner(fs[0].subject_id, n);
            let (now, sent) = show(&mut shards, shard, *at, fs, seq as u64);
            out.extend(now);
            inbox.extend(sent);
            if (seq + 1) % barrier_every == 0 {
                out.extend(barrier(&mut shards, std::mem::take(&mut inbox)));
            }
        }
        out.extend(barrier(&mut shards, inbox));
        let mut v: Vec<_> = out
            .iter()
            .map(|f| {
                (
                    f.event_time,
                    f.subject.clone(),
                    Value::Object(f.evidence.clone()).to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Whatever shard owns which line, the same verdicts: each line's state is read and
    /// written only where it lives, the rest travels as evidence.
    #[test]
    fn verdicts_are_the_same_on_one_two_and_three_shards() {
        for every in [1, 3] {
            let one = verdicts_with(1, every);
            let subjects: Vec<&str> = one.iter().map(|v| v.1.as_str()).collect();
            assert!(subjects.len() >= 4, "{one:?}");
            assert!(
                one.iter().any(|v| v.2.contains("predecessor_deal_line")),
                "{one:?}"
            );
            for n in [2, 3] {
                assert_eq!(
                    verdicts_with(n, every),
                    one,
                    "{n} shards, barrier every {every}"
                );
            }
        }
    }

    /// The verdict as checkpoints hold it (since before its contributions became a list):
    /// every kind's slot in an array, of ten since `customer_callbacks` (format 9).
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct ArrayVerdict {
        line: Box<str>,
        parts: [Option<(Millis, String)>; 10],
        related: Vec<(String, Millis)>,
        last_at: Millis,
        earlier: Option<(Box<str>, Millis)>,
    }

    #[test]
    fn a_verdicts_checkpoint_keeps_the_array_of_kinds_both_ways() {
        let mut v = LineVerdict {
            line: "L1".into(),
            last_at: 0,
            ..Default::default()
        };
        set(&mut v, Part::Runner, 30, json!({"trips": 2}));
        set(&mut v, Part::Successor, 28, json!({"new_score": 0.85}));
        set(&mut v, Part::BulkSms, 10, json!({"recipients": 40}));
        // An earlier figure does not replace a later one; a later one does.
        set(&mut v, Part::BulkSms, 5, json!({"recipients": 1}));
        set(&mut v, Part::FanIn, 20, json!({"customers": 12}));
        set(&mut v, Part::FanIn, 25, json!({"customers": 13}));
        set(&mut v, Part::Callbacks, 26, json!({"callbacks": 4}));
        assert_eq!(v.parts.len(), 5);
        let bytes = codec::encode(&v).unwrap();
        let old: ArrayVerdict = codec::decode(&bytes).unwrap();
        let mut want: [Option<(Millis, String)>; 10] = Default::default();
        want[Part::BulkSms as usize] = Some((10, r#"{"recipients":40}"#.into()));
        want[Part::FanIn as usize] = Some((25, r#"{"customers":13}"#.into()));
        want[Part::Runner as usize] = Some((30, r#"{"trips":2}"#.into()));
        want[Part::Successor as usize] = Some((28, r#"{"new_score":0.85}"#.into()));
        want[Part::Callbacks as usize] = Some((26, r#"{"callbacks":4}"#.into()));
        assert_eq!(old.parts, want);
        assert_eq!(old.last_at, 30);
        // And an array written by the older build reads back as the same list.
        let back: LineVerdict = codec::decode(&codec::encode(&old).unwrap()).unwrap();
        assert_eq!(codec::encode(&back).unwrap(), bytes);
        let kinds: Vec<Part> = PARTS
            .into_iter()
            .filter(|p| back.parts.get(*p).is_some())
            .collect();
        assert_eq!(
            kinds,
            [
                Part::BulkSms,
                Part::FanIn,
                Part::Runner,
                Part::Successor,
                Part::Callbacks
            ]
        );
        assert_eq!(
            back.parts.get(Part::FanIn).unwrap().detail,
            json!({"customers": 13})
        );
    }
}
