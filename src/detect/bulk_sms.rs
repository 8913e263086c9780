//! `bulk_sms`: a line texts many distinct recipients within a sliding window.
//!
//! The window is evaluated on every text the line sends, ending at the line's newest event
//! time, so out-of-order records still count towards the window they belong to. The
//! recipients themselves live in the shared [`crate::state::Contacts`] store; this detector
//! keeps only when it last fired, for the few lines that ever do.

use serde_json::json;

use super::{Ctx, Detector, EventIds, StateStats};
use crate::alert::{Finding, SubjectKind};
use crate::checkpoint::codec;
use crate::config::{BulkSmsConfig, Config};
use crate::event::{Event, Kind, Millis};
use crate::evidence;
use crate::exchange::Role;
use crate::ids::{self, IdMap};
use crate::state::Contact;

pub const NAME: &str = "bulk_sms";

/// Per firing line: seconds of its last finding.
#[derive(Clone)]
pub struct BulkSms {
    cfg: BulkSmsConfig,
    repeat_gap_s: u32,
    fired: IdMap<u32>,
    max_keys: usize,
    cap_hits: u64,
    /// Scratch for the windows a late record completes (kept to avoid an allocation each).
    times: Vec<u32>,
}

/// What one window of a line holds.
struct Measured {
    recipients: usize,
    repeat: usize,
    oldest: u32,
}

impl BulkSms {
    pub fn new(cfg: &Config, max_keys: usize) -> Self {
        BulkSms {
            cfg: cfg.bulk_sms.clone(),
            repeat_gap_s: ids::span_secs(cfg.deal_line.repeat_gap_s),
            fired: IdMap::default(),
            max_keys,
            cap_hits: 0,
            times: Vec::new(),
        }
    }

    /// Recipients texted within `since_s..=end_s` (by each one's latest text), of whom how
    /// many were first texted at least the repeat gap before the window.
    fn measure(
        &self,
        contacts: impl Iterator<Item = Contact>,
        since_s: u32,
        end_s: u32,
    ) -> Measured {
        let mut m = Measured {
            recipients: 0,
            repeat: 0,
            oldest: end_s,
        };
        for c in contacts.filter(|c| c.last_s >= since_s && c.last_s <= end_s) {
            m.recipients += 1;
            m.oldest = m.oldest.min(c.last_s);
            if c.first_s.saturating_add(self.repeat_gap_s) <= since_s {
                m.repeat += 1;
            }
        }
        m
    }
}

impl Detector for BulkSms {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_event(&mut self, ev: &Event<'_>, ids: &EventIds, ctx: &mut Ctx<'_>) {
        // All of it is the sender's: its list (`contacts.get(from)`, already updated with
        // this text) and when it last fired. The recipient learns nothing here, so nothing
        // is sent (docs/sharding.md).
        if ctx.role != Role::Sender {
            return;
        }
        if !self.cfg.enabled || ev.kind != Kind::Sms {
            return;
        }
        let Some(rec) = ctx.contacts.get(ids.from) else {
            return;
        };
        let min = self.cfg.min_recipients as usize;
        // Most lines never texted this many numbers in the whole lookback: skip the count.
        if rec.contacts.len() < min {
            return;
        }
        let window_s = ids::span_secs(self.cfg.window_s);
        let s = ids::secs(ev.ts);
        let newest_s = rec.last_seen_s;
        // The window ending at the line's newest time, as every record arrives.
        let mut found = None;
        let since_s = newest_s.saturating_sub(window_s);
        if s >= since_s {
            let m = self.measure(rec.iter_contacts(), since_s, newest_s);
            if m.recipients >= min {
                found = Some((since_s, newest_s, m));
            }
        }
        // A late record may also complete a window that ends before the newest time.
        if found.is_none() && s < newest_s {
            let (lo, hi) = (s.saturating_sub(window_s), s.saturating_add(window_s));
            self.times.clear();
            self.times.extend(
                rec.iter_contacts()
                    .map(|c| c.last_s)
                    .filter(|&t| t >= lo && t <= hi),
            );
            if let Some(end_s) = super::completed_window(&mut self.times, s, window_s, min) {
                let since_s = end_s.saturating_sub(window_s);
                found = Some((
                    since_s,
                    end_s,
                    self.measure(rec.iter_contacts(), since_s, end_s),
                ));
            }
        }
        let Some((since_s, end_s, m)) = found else {
            return;
        };
        let Measured {
            recipients,
            repeat,
            oldest,
        } = m;
        if recipients < min {
            return;
        }
        if let Some(&last) = self.fired.get(&ids.from) {
            if last >= since_s {
                return; // already reported within this window
            }
        } else if self.fired.len() >= self.max_keys {
            self.cap_hits += 1;
            return;
        }
        self.fired.insert(ids.from, end_s);
        let repeat_audience = repeat as f64 / recipients as f64;
        let score = (recipients as f64 / (2.0 * min as f64)).min(1.0);
        ctx.out.push(Finding {
            detector: NAME,
            subject: ev.from.to_string(),
            subject_id: ids.from,
            subject_kind: SubjectKind::Line,
            score,
            event_time: ev.ts,
            window_start: ids::millis(oldest),
            window_end: ids::millis(end_s).max(ev.ts),
            related: Vec::new(),
            evidence: evidence! {
                "recipients" => recipients,
                "min_recipients" => min,
                "window_s" => self.cfg.window_s,
                "repeat_audience" => json!((repeat_audience * 1000.0).round() / 1000.0),
                "repeat_gap_s" => self.repeat_gap_s,
            },
            lines: vec![(ids.from, ev.from.to_string())],
        });
    }

    fn expire(&mut self, watermark: Millis) {
        let cutoff = ids::secs(watermark).saturating_sub(ids::span_secs(self.cfg.window_s));
        self.fired.retain(|_, last| *last >= cutoff);
    }

    fn stats(&self) -> StateStats {
        StateStats {
            keys: self.fired.len(),
            bytes: ids::map_bytes(&self.fired),
            cap_hits: self.cap_hits,
        }
    }

    fn reconfigure(&mut self, cfg: &Config) {
        self.cfg = cfg.bulk_sms.clone();
        self.repeat_gap_s = ids::span_secs(cfg.deal_line.repeat_gap_s);
        self.max_keys = cfg.engine.max_keys_per_detector;
    }

    fn box_clone(&self) -> Box<dyn Detector> {
        Box::new(self.clone())
    }

    fn save_state(&self) -> Result<Vec<u8>, codec::Error> {
        codec::encode(&(&self.fired, self.cap_hits))
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), codec::Error> {
        (self.fired, self.cap_hits) = codec::decode(bytes)?;
        Ok(())
    }

    fn split(
        &mut self,
        parts: usize,
        owner: &dyn Fn(u64) -> usize,
        counted: usize,
    ) -> Vec<Box<dyn Detector>> {
        let cap_hits = std::mem::take(&mut self.cap_hits);
        super::split_map(&mut self.fired, parts, owner)
            .into_iter()
            .enumerate()
            .map(|(p, fired)| {
                Box::new(BulkSms {
                    cfg: self.cfg.clone(),
                    repeat_gap_s: self.repeat_gap_s,
                    fired,
                    max_keys: self.max_keys,
                    cap_hits: if p == counted { cap_hits } else { 0 },
                    times: Vec::new(),
                }) as Box<dyn Detector>
            })
            .collect()
    }

    fn merge(&mut self, part: Box<dyn Detector>) {
        let part = super::part_of::<Self>(part);
        super::absorb_map(&mut self.fired, part.fired);
        self.cap_hits += part.cap_hits;
    }

    #[cfg(test)]
    fn keys(&self) -> Vec<(&'static str, u64)> {
        super::named_keys("fired", &self.fired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::*;

    fn det(min: u32) -> BulkSms {
        let mut cfg = Config::default();
        cfg.bulk_sms.min_recipients = min;
        BulkSms::new(&cfg, 1000)
    }

    fn blast(h: &mut Harness, d: &mut BulkSms, t0: Millis, n: usize, step: Millis) -> Vec<Finding> {
        let mut all = Vec::new();
        for i in 0..n {
            let id = format!("e{t0}-{i}");
            let to = format!("c{i}");
            all.extend(h.feed(d, &sms(&id, t0 + i as Millis * step, "line", &to)));
        }
        all
    }

    #[test]
    fn fires_once_when_the_window_reaches_the_threshold() {
        let (mut h, mut d) = (Harness::new(), det(5));
        let f = blast(&mut h, &mut d, 0, 8, MIN);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].evidence["recipients"], 5);
        assert_eq!(f[0].event_time, 4 * MIN);
        assert_eq!(f[0].subject, "line");
    }

    #[test]
    fn a_window_past_u32_seconds_is_not_wrapped_to_nothing() {
        // The configuration refuses such a window; a detector built without it must still
        // treat it as "longer than all time", not as 2^32 mod 2^32 = 0 seconds.
        let mut cfg = Config::default();
        cfg.bulk_sms.min_recipients = 5;
        cfg.bulk_sms.window_s = 1 << 32;
        let (mut h, mut d) = (Harness::new(), BulkSms::new(&cfg, 1000));
        assert_eq!(blast(&mut h, &mut d, DAY, 8, MIN).len(), 1);
    }

    #[test]
    fn spread_beyond_the_window_does_not_fire() {
        let (mut h, mut d) = (Harness::new(), det(5));
        // One recipient every 20 minutes: never 5 within an hour.
        assert!(blast(&mut h, &mut d, 0, 10, 20 * MIN).is_empty());
    }

    #[test]
    fn repeated_texts_to_one_number_are_not_distinct() {
        let (mut h, mut d) = (Harness::new(), det(3));
        for i in 0..10 {
            let id = format!("e{i}");
            assert!(h
                .feed(&mut d, &sms(&id, i * MIN, "line", "same"))
                .is_empty());
        }
    }

    #[test]
    fn out_of_order_record_counts_in_its_window() {
        let (mut h, mut d) = (Harness::new(), det(3));
        assert!(h.feed(&mut d, &sms("a", 10 * MIN, "line", "x")).is_empty());
        assert!(h.feed(&mut d, &sms("b", 20 * MIN, "line", "y")).is_empty());
        // Arrives last but happened first, still inside the hour ending at 20 min.
        assert_eq!(h.feed(&mut d, &sms("c", 5 * MIN, "line", "z")).len(), 1);
    }

    #[test]
    fn repeat_audience_measures_the_same_list_a_day_later() {
        let (mut h, mut d) = (Harness::new(), det(5));
        let first = blast(&mut h, &mut d, 0, 6, MIN);
        assert_eq!(first[0].evidence["repeat_audience"], 0.0);
        let again = blast(&mut h, &mut d, DAY, 6, MIN);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].evidence["repeat_audience"], 1.0);
    }

    /// 29 recipients, a text at +70 min and one at +55 min, in the given order of the last
    /// two: the +55 one makes 30 within the hour ending at +55.
    fn late_completion(late_last: bool) -> Vec<Finding> {
        let (mut h, mut d) = (Harness::new(), det(30));
        let t0 = DAY;
        let mut all = blast(&mut h, &mut d, t0, 29, 1_000);
        assert!(all.is_empty());
        let at55 = sms("at55", t0 + 55 * MIN, "line", "n55");
        let at70 = sms("at70", t0 + 70 * MIN, "line", "n70");
        let order = if late_last {
            [at70, at55]
        } else {
            [at55, at70]
        };
        for ev in &order {
            all.extend(h.feed(&mut d, ev));
        }
        all
    }

    #[test]
    fn late_record_fires_in_its_own_window_whatever_the_order() {
        for late_last in [false, true] {
            let f = late_completion(late_last);
            assert_eq!(f.len(), 1, "late_last = {late_last}");
            assert_eq!(f[0].evidence["recipients"], 30);
            assert_eq!(f[0].event_time, DAY + 55 * MIN);
            assert_eq!(f[0].window_end, DAY + 55 * MIN);
        }
    }

    #[test]
    fn completed_window_finds_the_earliest_end() {
        let w = 3_600;
        // At 1000 s: the hour ending at 1000 holds 3, the one ending at 3000 holds 4 (the
        // ones ending at 3500 and 4000 hold 5 and 4, but end later).
        let mut t = vec![4000, 100, 200, 1000, 3000, 3500];
        assert_eq!(
            crate::detect::completed_window(&mut t, 1000, w, 4),
            Some(3000)
        );
        assert_eq!(
            crate::detect::completed_window(&mut t, 1000, w, 5),
            Some(3500)
        );
        assert_eq!(
            crate::detect::completed_window(&mut t, 1000, w, 3),
            Some(1000)
        );
        assert_eq!(crate::detect::completed_window(&mut t, 1000, w, 7), None);
    }

    /// The line's list is only on its own shard: shown the text as its recipient's or its
    /// handset's (on another shard, or here with the list in reach), bulk_sms neither fires
    /// nor sends, so the finding is made once, by the sender's shard.
    #[test]
    fn only_the_sender_role_judges_the_senders_list() {
        let (mut h, mut d) = (Harness::new(), det(5));
        assert_eq!(blast(&mut h, &mut d, 0, 5, MIN).len(), 1);
        let ev = sms("next", 5 * MIN, "line", "c5");
        let ids = crate::detect::EventIds::of(&ev);
        h.contacts
            .record_outbound(ids.from, Some(ids.to), ev.ts, None);
        let run = |d: &mut BulkSms, h: &mut Harness, role| {
            let (mut out, mut sent) = (Vec::new(), Vec::new());
            let mut ctx = Ctx {
                role,
                contacts: &mut h.contacts,
                stream_start: 0,
                out: &mut out,
                outbox: &mut sent,
                cells: None,
                cell: None,
                shards: 1,
                shard: 0,
            };
            d.on_event(&ev, &ids, &mut ctx);
            (out.len(), sent.len())
        };
        // A detector that has not fired yet, with six recipients in the window in reach.
        let mut fresh = det(5);
        for role in [Role::Recipient, Role::Handset, Role::Barrier] {
            assert_eq!(run(&mut fresh, &mut h, role), (0, 0), "{role:?}");
        }
        assert_eq!(run(&mut fresh, &mut h, Role::Sender), (1, 0));
    }
}
