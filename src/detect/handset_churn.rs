//! `handset_churn`: one handset used with many distinct SIMs within a sliding window.
//!
//! Burner handsets take a new SIM every day or so. The SIM pseudonyms are kept (they go in
//! `related`), with the line each SIM was used as, so the combined verdict can credit the
//! churn to those lines.

use serde::{Deserialize, Serialize};

use super::{Ctx, Detector, EventIds, StateStats};
use crate::alert::{Finding, SubjectKind};
use crate::checkpoint::codec;
use crate::config::{ChurnConfig, Config};
use crate::event::{Event, Millis};
use crate::evidence;
use crate::ids::{self, IdMap};

pub const NAME: &str = "handset_churn";

#[derive(Clone, Serialize, Deserialize)]
struct SimSeen {
    /// Hash of `sim`: compared first, so the strings are only read on a match.
    sim_id: u64,
    /// "SIM LINE" in one allocation (pseudonyms have no spaces): nearly every handset has
    /// one SIM, and one allocation instead of two is a third of its state.
    names: Box<str>,
    last_s: u32,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Handset {
    sims: Vec<SimSeen>,
    newest_s: u32,
    fired_s: Option<u32>,
}

#[derive(Clone)]
pub struct HandsetChurn {
    cfg: ChurnConfig,
    handsets: IdMap<Handset>,
    max_keys: usize,
    cap_hits: u64,
    heap_bytes: usize,
    /// Scratch for the windows a late record completes (kept to avoid an allocation each).
    times: Vec<u32>,
}

impl HandsetChurn {
    pub fn new(cfg: &Config, max_keys: usize) -> Self {
        HandsetChurn {
            cfg: cfg.handset_churn.clone(),
            handsets: IdMap::default(),
            max_keys,
            cap_hits: 0,
            heap_bytes: 0,
            times: Vec::new(),
        }
    }
}

impl SimSeen {
    fn new(sim_id: u64, sim: &str, line: &str, last_s: u32) -> Self {
        SimSeen {
            sim_id,
            names: format!("{sim} {line}").into_boxed_str(),
            last_s,
        }
    }

    fn sim(&self) -> &str {
        self.names.split_once(' ').map_or(&*self.names, |(s, _)| s)
    }

    fn line(&self) -> &str {
        self.names.split_once(' ').map_or("", |(_, l)| l)
    }
}

fn sim_bytes(s: &SimSeen) -> usize {
    std::mem::size_of::<SimSeen>() + s.names.len()
}

impl Detector for HandsetChurn {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_event(&mut self, ev: &Event<'_>, ids: &EventIds, ctx: &mut Ctx<'_>) {
        if !self.cfg.enabled {
            return;
        }
        let (Some(imei), Some(imsi), Some(imei_s)) =
            (ids.imei, ev.imsi.as_deref(), ev.imei.as_deref())
        else {
            return;
        };
        let s = ids::secs(ev.ts);
        if self.handsets.len() >= self.max_keys && !self.handsets.contains_key(&imei) {
            self.cap_hits += 1;
            return;
        }
        let h = self.handsets.entry(imei).or_default();
        h.newest_s = h.newest_s.max(s);
        let since_s = h.newest_s.saturating_sub(ids::span_secs(self.cfg.window_s));
        if s < since_s {
            return;
        }
        let sim_id = ids.imsi.unwrap_or_else(|| ids::id(imsi));
        match h
            .sims
            .iter_mut()
            .find(|x| x.sim_id == sim_id && x.sim() == imsi)
        {
            Some(x) => {
                if s >= x.last_s {
                    x.last_s = s;
                    if x.line() != ev.from.as_ref() {
                        self.heap_bytes = self.heap_bytes + ev.from.len() - x.line().len();
                        *x = SimSeen::new(sim_id, imsi, &ev.from, s);
                    }
                }
                return; // a known SIM cannot raise the count
            }
            None => {
                if h.sims.len() >= self.cfg.max_sims_per_handset as usize {
                    self.cap_hits += 1;
                    if let Some((i, _)) = h.sims.iter().enumerate().min_by_key(|(_, x)| x.last_s) {
                        self.heap_bytes -= sim_bytes(&h.sims[i]);
                        h.sims.swap_remove(i);
                    }
                }
                let seen = SimSeen::new(sim_id, imsi, &ev.from, s);
                self.heap_bytes += sim_bytes(&seen);
                h.sims.push(seen);
            }
        }
        let min = self.cfg.min_sims as usize;
        let window_s = ids::span_secs(self.cfg.window_s);
        // The window ending at the handset's newest time, as every record arrives.
        let mut found = None;
        if h.sims.iter().filter(|x| x.last_s >= since_s).count() >= min {
            found = Some((since_s, h.newest_s));
        } else if s < h.newest_s {
            // A late record may also complete a window that ends before the newest time.
            let (lo, hi) = (s.saturating_sub(window_s), s.saturating_add(window_s));
            self.times.clear();
            self.times.extend(
                h.sims
                    .iter()
                    .map(|x| x.last_s)
                    .filter(|&t| t >= lo && t <= hi),
            );
            if let Some(end_s) = super::completed_window(&mut self.times, s, window_s, min) {
                found = Some((end_s.saturating_sub(window_s), end_s));
            }
        }
        let Some((since_s, end_s)) = found else {
            return;
        };
        if h.fired_s.is_some_and(|f| f >= since_s) {
            return;
        }
        h.fired_s = Some(h.fired_s.map_or(end_s, |f| f.max(end_s)));
        let mut ordered: Vec<&SimSeen> = h
            .sims
            .iter()
            .filter(|x| x.last_s >= since_s && x.last_s <= end_s)
            .collect();
        ordered.sort_by(|a, b| a.last_s.cmp(&b.last_s).then_with(|| a.sim().cmp(b.sim())));
        let mut lines: Vec<(u64, String)> = Vec::new();
        for x in &ordered {
            let id = ids::id(x.line());
            if !lines.iter().any(|(l, _)| *l == id) {
                lines.push((id, x.line().to_string()));
            }
        }
        let sims = ordered.len();
        ctx.out.push(Finding {
            detector: NAME,
            subject: imei_s.to_string(),
            subject_id: imei,
            subject_kind: SubjectKind::Handset,
            score: (sims as f64 / (2.0 * min as f64)).min(1.0),
            event_time: ev.ts,
            window_start: ids::millis(ordered[0].last_s),
            window_end: ids::millis(end_s).max(ev.ts),
            related: ordered.iter().map(|x| x.sim().to_string()).collect(),
            evidence: evidence! {
                "sims" => sims,
                "min_sims" => min,
                "window_s" => self.cfg.window_s,
                "lines" => lines.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(),
            },
            lines,
        });
    }

    fn expire(&mut self, watermark: Millis) {
        let cutoff = ids::secs(watermark).saturating_sub(ids::span_secs(self.cfg.window_s));
        let mut heap = 0;
        self.handsets.retain(|_, h| {
            h.sims.retain(|x| x.last_s >= cutoff);
            heap += h.sims.iter().map(sim_bytes).sum::<usize>();
            !h.sims.is_empty()
        });
        if self.handsets.capacity() > 2 * self.handsets.len() + 1024 {
            self.handsets.shrink_to_fit();
        }
        self.heap_bytes = heap;
    }

    fn stats(&self) -> StateStats {
        StateStats {
            keys: self.handsets.len(),
            bytes: ids::map_bytes(&self.handsets) + self.heap_bytes,
            cap_hits: self.cap_hits,
        }
    }

    fn reconfigure(&mut self, cfg: &Config) {
        self.cfg = cfg.handset_churn.clone();
        self.max_keys = cfg.engine.max_keys_per_detector;
    }

    fn box_clone(&self) -> Box<dyn Detector> {
        Box::new(self.clone())
    }

    fn save_state(&self) -> Result<Vec<u8>, codec::Error> {
        codec::encode(&(&self.handsets, self.cap_hits))
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), codec::Error> {
        (self.handsets, self.cap_hits) = codec::decode(bytes)?;
        self.heap_bytes = self
            .handsets
            .values()
            .flat_map(|h| h.sims.iter().map(sim_bytes))
            .sum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::*;
    use std::borrow::Cow;

    fn with_sim<'a>(mut e: Event<'a>, imei: &'a str, imsi: &'a str) -> Event<'a> {
        e.imei = Some(Cow::Borrowed(imei));
        e.imsi = Some(Cow::Borrowed(imsi));
        e
    }

    #[test]
    fn third_sim_in_a_handset_fires_with_sims_related() {
        let mut d = HandsetChurn::new(&Config::default(), 100);
        let mut h = Harness::new();
        assert!(h
            .feed(&mut d, &with_sim(sms("1", 0, "l1", "x"), "h", "s1"))
            .is_empty());
        assert!(h
            .feed(&mut d, &with_sim(sms("2", DAY, "l2", "x"), "h", "s2"))
            .is_empty());
        assert!(h
            .feed(
                &mut d,
                &with_sim(sms("3", DAY + HOUR, "l2", "x"), "h", "s2")
            )
            .is_empty());
        let f = h.feed(&mut d, &with_sim(sms("4", 2 * DAY, "l3", "x"), "h", "s3"));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].subject, "h");
        assert_eq!(f[0].subject_kind, SubjectKind::Handset);
        assert_eq!(f[0].related, vec!["s1", "s2", "s3"]);
        assert_eq!(f[0].lines.len(), 3);
        assert_eq!(f[0].evidence["sims"], 3);
    }

    #[test]
    fn sims_spread_over_more_than_the_window_do_not_fire() {
        let mut d = HandsetChurn::new(&Config::default(), 100);
        let mut h = Harness::new();
        for (i, sim) in ["s1", "s2", "s3", "s4"].iter().enumerate() {
            let id = i.to_string();
            let f = h.feed(
                &mut d,
                &with_sim(sms(&id, i as Millis * 2 * DAY, "l", "x"), "h", sim),
            );
            assert!(f.is_empty());
        }
    }

    #[test]
    fn per_handset_cap_is_counted() {
        let mut cfg = Config::default();
        cfg.handset_churn.max_sims_per_handset = 3;
        let mut d = HandsetChurn::new(&cfg, 100);
        let mut h = Harness::new();
        for i in 0..5 {
            let (id, sim) = (i.to_string(), format!("s{i}"));
            h.feed(&mut d, &with_sim(sms(&id, i * MIN, "l", "x"), "h", &sim));
        }
        assert_eq!(d.stats().cap_hits, 2);
        assert_eq!(d.stats().keys, 1);
    }

    /// SIMs s1 and s2 at the start, s4 three days and 10 minutes on, and s3 15 minutes
    /// before s4, in the given order of the last two: s3 makes three within the three days
    /// ending at its own time.
    fn late_completion(late_last: bool) -> Vec<Finding> {
        let mut d = HandsetChurn::new(&Config::default(), 100);
        let mut h = Harness::new();
        let mut all = Vec::new();
        all.extend(h.feed(&mut d, &with_sim(sms("1", DAY, "l1", "x"), "h", "s1")));
        all.extend(h.feed(&mut d, &with_sim(sms("2", DAY + MIN, "l2", "x"), "h", "s2")));
        assert!(all.is_empty());
        let s3 = with_sim(sms("3", 4 * DAY - 5 * MIN, "l3", "x"), "h", "s3");
        let s4 = with_sim(sms("4", 4 * DAY + 10 * MIN, "l4", "x"), "h", "s4");
        let order = if late_last { [s4, s3] } else { [s3, s4] };
        for ev in &order {
            all.extend(h.feed(&mut d, ev));
        }
        all
    }

    #[test]
    fn late_sim_fires_in_its_own_window_whatever_the_order() {
        for late_last in [false, true] {
            let f = late_completion(late_last);
            assert_eq!(f.len(), 1, "late_last = {late_last}");
            assert_eq!(f[0].related, vec!["s1", "s2", "s3"]);
            assert_eq!(f[0].window_end, 4 * DAY - 5 * MIN);
        }
    }
}
