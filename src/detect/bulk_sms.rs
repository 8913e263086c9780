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
use crate::ids::{self, IdMap};

pub const NAME: &str = "bulk_sms";

/// Per firing line: seconds of its last finding.
#[derive(Clone)]
pub struct BulkSms {
    cfg: BulkSmsConfig,
    repeat_gap_s: u32,
    fired: IdMap<u32>,
    max_keys: usize,
    cap_hits: u64,
}

impl BulkSms {
    pub fn new(cfg: &Config, max_keys: usize) -> Self {
        BulkSms {
            cfg: cfg.bulk_sms.clone(),
            repeat_gap_s: ids::span_secs(cfg.deal_line.repeat_gap_s),
            fired: IdMap::default(),
            max_keys,
            cap_hits: 0,
        }
    }
}

impl Detector for BulkSms {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_event(&mut self, ev: &Event<'_>, ids: &EventIds, ctx: &mut Ctx<'_>) {
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
        let end_s = rec.last_seen_s;
        let since_s = end_s.saturating_sub(ids::span_secs(self.cfg.window_s));
        if ids::secs(ev.ts) < since_s {
            return;
        }
        let mut recipients = 0usize;
        let mut repeat = 0usize;
        let mut oldest = end_s;
        for c in rec.contacts.iter().filter(|c| c.last_s >= since_s) {
            recipients += 1;
            oldest = oldest.min(c.last_s);
            if c.first_s.saturating_add(self.repeat_gap_s) <= since_s {
                repeat += 1;
            }
        }
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
}
