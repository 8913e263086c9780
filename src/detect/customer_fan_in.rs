//! `customer_fan_in`: many distinct customers of a line contact it within a sliding window.
//!
//! A customer of line L is a number L texted within the lookback (adverts go to customers),
//! before the contact. Texts count; calls count only between the configured durations, since
//! calls of a few seconds are missed or dropped and long calls are conversations.
//!
//! Two rules fire it: `min_customers` distinct customers in the window; or, for a small
//! line, `min_customers_with_callbacks` of them of whom `min_callbacks` were called (or
//! texted) back by the line within `callback_within_s` of their contact: the callback
//! pattern police practice counts as a deal confirmed. A number the line called (a line
//! with at least `crew_min_customers` customers) is its crew for `crew_retention_s`: a
//! runner ringing the customer to meet counts as the line's callback.
//!
//! A third rule follows a new number: a line that `line_handover` names as an earlier
//! line's new number fires when `follow_min_customers` of its customers contact it within
//! `follow_within_s` of the handover. A number replaced late in the data lives hours, with
//! a handful of customers; that they ring the new number is the fan-in.
//!
//! # Roles (`docs/sharding.md`)
//!
//! All state is the line's but the crew entry, which is the runner's. A record F→T:
//! - as **recipient** (T's key): the customer's contact is noted on T's list, kept pending
//!   on T for a callback, and the window, callback and followers rules are judged for T;
//! - as **sender** (F's key): F calling back a customer pending on F is a callback, judged
//!   at once; F with a customer list enrols T as its crew ([`Body::CrewEnrol`] to T); F
//!   being some line's crew tells that line whom it rang ([`Body::CrewCallback`] to the
//!   line), which the line's shard judges against its pending contacts at the barrier.

use super::{Ctx, Detector, EventIds, StateStats};
use crate::alert::{Finding, SubjectKind};
use crate::checkpoint::codec;
use crate::config::{Config, FanInConfig};
use crate::event::{Event, Kind, Millis};
use crate::evidence;
use crate::exchange::{Body, Dest, Evidence, Role, Sent};
use crate::ids::{self, IdBuild, IdMap};
use crate::state::Contact;

pub const NAME: &str = "customer_fan_in";

/// A customer's contact awaiting a callback, as a key: the line's id and the customer's
/// fingerprint, in 12 bytes with 4-byte alignment, so an entry with its time is 16 bytes in
/// one flat table. (A list per line cost a table slot of 33 bytes, a list of at least four
/// entries and an allocation per line with anything pending: on the 150,000-subscriber city,
/// 70,000 lines at the end of a run, 1.9 contacts each.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendKey {
    lo: u32,
    hi: u32,
    fp: u32,
}

impl PendKey {
    #[inline]
    fn new(line: u64, fp: u32) -> Self {
        PendKey {
            lo: line as u32,
            hi: (line >> 32) as u32,
            fp,
        }
    }

    #[inline]
    fn line(&self) -> u64 {
        (self.hi as u64) << 32 | self.lo as u64
    }
}

impl std::hash::Hash for PendKey {
    /// The line's id is already a well-mixed hash ([`IdBuild`] passes it through); the
    /// fingerprint is spread over all 64 bits before it is folded in.
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.line() ^ (self.fp as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
}

/// Pending contacts: (line, customer) → when the customer last contacted the line.
type PendingMap = std::collections::HashMap<PendKey, u32, IdBuild>;

/// The pending contacts grouped by line, each line's sorted by fingerprint: the form
/// checkpoints keep (the format from before the flat table, so either build reads the
/// other's), and the tests compare.
fn pending_by_line(m: &PendingMap) -> IdMap<Vec<(u32, u32)>> {
    let mut by_line: IdMap<Vec<(u32, u32)>> = IdMap::default();
    for (k, &s) in m {
        by_line.entry(k.line()).or_default().push((k.fp, s));
    }
    for l in by_line.values_mut() {
        l.sort_unstable();
    }
    by_line
}

/// Notes a contact as pending, keeping the latest per line and customer.
fn note_pending(m: &mut PendingMap, line: u64, fp: u32, s: u32) {
    let at = m.entry(PendKey::new(line, fp)).or_insert(s);
    *at = (*at).max(s);
}

/// The inbound contacts themselves are kept in the shared contact store, on the customer's
/// entry of the line's list (`last_in_s`): the customer list *is* that list, and a second
/// per-line map of callers cost more than half again the memory of the store. This
/// detector keeps only when it last fired, for the lines that ever do.
#[derive(Clone)]
pub struct CustomerFanIn {
    cfg: FanInConfig,
    fired: IdMap<u32>,
    /// (Line, customer) → when the customer's latest contact to the line awaits a callback,
    /// for `callback_within_s`, then swept. Kept with the line (not the customer: it is on
    /// the line's shard) because the line's list says who is a customer, and a callback by
    /// the line or its crew is judged where the line's state is. Holds the contacts since
    /// the sweep before last (the engine sweeps once as many records as it tracks lines have
    /// passed: about two hours on the 150,000-subscriber city), not days; the key cap counts
    /// its entries.
    pending: PendingMap,
    /// Line → customers it called back (fingerprint, when), within the window. Exactly as
    /// long as it needs to be (most lines have one or two): a new entry is one copy, as the
    /// contact store's lists are.
    callbacks: IdMap<Box<[(u32, u32)]>>,
    /// Number → the line with a customer list that last called it (id, when, pseudonym):
    /// its crew, whose callbacks count as the line's.
    crew: IdMap<(u64, u32, Box<str>)>,
    max_keys: usize,
    cap_hits: u64,
    /// Scratch for the windows a late record completes (kept to avoid an allocation each).
    times: Vec<u32>,
    /// New numbers `line_handover` named → (the earlier line, when): their customers are
    /// counted from then, for `follow_within_s`.
    followed: IdMap<(Box<str>, u32)>,
    /// Watermark (seconds) of the previous sweep. Evidence applied at a barrier is judged
    /// as of its record's time, which is at or after the watermark the record was processed
    /// under, so at or after the previous sweep's: trimming by that one keeps what the
    /// evidence may still need (a pending contact, a callback, when the line last fired).
    /// Not saved: after a restore the first sweep trims nothing, which only keeps more.
    swept_s: u32,
}

/// Customers whose latest counted contact falls within `since_s..=end_s`, and the oldest
/// such contact.
fn measure(contacts: impl Iterator<Item = Contact>, since_s: u32, end_s: u32) -> (usize, u32) {
    let mut customers = 0usize;
    let mut oldest = end_s;
    for c in contacts.filter(|c| c.last_in_s >= since_s && c.last_in_s > 0 && c.last_in_s <= end_s)
    {
        customers += 1;
        oldest = oldest.min(c.last_in_s);
    }
    (customers, oldest)
}

impl CustomerFanIn {
    pub fn new(cfg: &Config, max_keys: usize) -> Self {
        CustomerFanIn {
            cfg: cfg.customer_fan_in.clone(),
            fired: IdMap::default(),
            pending: PendingMap::default(),
            callbacks: IdMap::default(),
            crew: IdMap::default(),
            max_keys,
            cap_hits: 0,
            times: Vec::new(),
            followed: IdMap::default(),
            swept_s: 0,
        }
    }

    /// Takes `customer`'s pending contact to `line_id` if a callback at `s` answers it
    /// (the contact at or before `s`, within `callback_within_s`).
    fn answer(&mut self, line_id: u64, customer: u64, s: u32) -> bool {
        let key = PendKey::new(line_id, ids::fp(customer));
        let within = ids::span_secs(self.cfg.callback_within_s);
        match self.pending.get(&key) {
            Some(&at) if s >= at && s - at <= within => {
                self.pending.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// The line called or texted back `customer` at `at`, within `callback_within_s` of the
    /// customer's contact: noted, and the callback rule judged over the window ending then.
    fn callback(
        &mut self,
        line_id: u64,
        line_name: &str,
        customer: u64,
        at: Millis,
        ctx: &mut Ctx<'_>,
    ) {
        let s = ids::secs(at);
        let window_s = ids::span_secs(self.cfg.window_s);
        let since_s = s.saturating_sub(window_s);
        if self.callbacks.len() >= self.max_keys && !self.callbacks.contains_key(&line_id) {
            self.cap_hits += 1;
            return;
        }
        let list = self.callbacks.entry(line_id).or_default();
        let called_back = |l: &[(u32, u32)]| l.iter().filter(|c| c.1 >= since_s).count();
        let before = called_back(list);
        let fp = ids::fp(customer);
        let stale = list.iter().any(|c| c.1 < since_s);
        match list.iter_mut().find(|c| c.0 == fp) {
            Some(c) if !stale => c.1 = c.1.max(s),
            _ => {
                let mut v = Vec::with_capacity(list.len() + 1);
                v.extend(list.iter().copied().filter(|c| c.1 >= since_s));
                match v.iter_mut().find(|c| c.0 == fp) {
                    Some(c) => c.1 = c.1.max(s),
                    None => v.push((fp, s)),
                }
                *list = v.into_boxed_slice();
            }
        }
        // Deals confirmed: the line's verdict is told once each time the count in the
        // window reaches `min_callbacks` (what `deal_line.repeat_needs_callbacks` waits for).
        let min = self.cfg.min_callbacks as usize;
        let after = called_back(list);
        if before < min && after >= min {
            let detail = serde_json::json!({
                "callbacks": after,
                "min_callbacks": self.cfg.min_callbacks,
                "callback_within_s": self.cfg.callback_within_s,
                "window_s": self.cfg.window_s,
            });
            let body = super::deal_line::callbacks_credit(line_name, detail);
            ctx.outbox.push(Sent::new(Dest::Number(line_id), body));
        }
        self.judge_callbacks(line_id, line_name, at, ctx);
    }

    /// The callback rule over the window ending at `at`, judged when a callback is made and
    /// when a customer contacts a line that has made callbacks (either can complete it).
    fn judge_callbacks(&mut self, line_id: u64, line_name: &str, at: Millis, ctx: &mut Ctx<'_>) {
        let s = ids::secs(at);
        let since_s = s.saturating_sub(ids::span_secs(self.cfg.window_s));
        let Some(list) = self.callbacks.get(&line_id) else {
            return;
        };
        let called_back = list.iter().filter(|c| c.1 >= since_s && c.1 <= s).count();
        if called_back < self.cfg.min_callbacks as usize {
            return;
        }
        let Some(line) = ctx.contacts.get(line_id) else {
            return;
        };
        let (customers, oldest) = measure(line.iter_contacts(), since_s, s);
        let min = self.cfg.min_customers_with_callbacks as usize;
        if customers < min {
            return;
        }
        if self.fired.get(&line_id).is_some_and(|&f| f >= since_s) {
            return;
        }
        self.fired.insert(line_id, s);
        ctx.out.push(Finding {
            detector: NAME,
            subject: line_name.to_string(),
            subject_id: line_id,
            subject_kind: SubjectKind::Line,
            score: (called_back as f64 / (2.0 * self.cfg.min_callbacks as f64)).min(1.0),
            event_time: at,
            window_start: ids::millis(oldest),
            window_end: at,
            related: Vec::new(),
            evidence: evidence! {
                "customers" => customers,
                "min_customers_with_callbacks" => min,
                "callbacks" => called_back,
                "min_callbacks" => self.cfg.min_callbacks,
                "callback_within_s" => self.cfg.callback_within_s,
                "window_s" => self.cfg.window_s,
                "customer_lookback_s" => self.cfg.lookback_s,
                "min_call_duration_s" => self.cfg.min_call_duration_s,
                "max_call_duration_s" => self.cfg.max_call_duration_s,
            },
            lines: vec![(line_id, line_name.to_string())],
        });
    }

    /// The followers rule for new number `line_id`, on a customer's contact at `at`.
    fn judge_followers(&mut self, line_id: u64, line_name: &str, at: Millis, ctx: &mut Ctx<'_>) {
        let s = ids::secs(at);
        let Some((earlier, at_s)) = self.followed.get(&line_id) else {
            return;
        };
        let until = at_s.saturating_add(ids::span_secs(self.cfg.follow_within_s));
        if s < *at_s || s > until {
            return;
        }
        let Some(line) = ctx.contacts.get(line_id) else {
            return;
        };
        let (customers, oldest) = measure(line.iter_contacts(), *at_s, s);
        let min = self.cfg.follow_min_customers as usize;
        if customers < min {
            return;
        }
        let since_s = s.saturating_sub(ids::span_secs(self.cfg.window_s));
        if self.fired.get(&line_id).is_some_and(|&f| f >= since_s) {
            return;
        }
        let earlier = earlier.to_string();
        self.fired.insert(line_id, s);
        ctx.out.push(Finding {
            detector: NAME,
            subject: line_name.to_string(),
            subject_id: line_id,
            subject_kind: SubjectKind::Line,
            score: (customers as f64 / (2.0 * min as f64)).min(1.0),
            event_time: at,
            window_start: ids::millis(oldest),
            window_end: at,
            related: vec![earlier.clone()],
            evidence: evidence! {
                "customers" => customers,
                "rule" => "followed_new_number",
                "earlier_line" => earlier,
                "handover_at" => ids::millis(*at_s),
                "follow_min_customers" => min,
                "follow_within_s" => self.cfg.follow_within_s,
                "customer_lookback_s" => self.cfg.lookback_s,
                "min_call_duration_s" => self.cfg.min_call_duration_s,
                "max_call_duration_s" => self.cfg.max_call_duration_s,
            },
            lines: vec![(line_id, line_name.to_string())],
        });
    }

    fn counts(&self, ev: &Event<'_>) -> bool {
        match ev.kind {
            Kind::Sms => true,
            Kind::Call => (self.cfg.min_call_duration_s..=self.cfg.max_call_duration_s)
                .contains(&ev.duration_s),
        }
    }

    /// The record as its sender's (`from`): F's own callbacks, and what F's list and crew
    /// entry tell other lines.
    fn as_sender(&mut self, ev: &Event<'_>, ids: &EventIds, ctx: &mut Ctx<'_>) {
        let s = ids::secs(ev.ts);
        // A line with a customer list (`crew_min_customers`) calling a number: that number
        // works with the line (a runner) for `crew_retention_s`. The crew entry is the
        // runner's state (its later records are judged by it), on the runner's shard.
        if ev.kind == Kind::Call
            && ids.to != ids.from
            && ctx
                .contacts
                .get(ids.from)
                .is_some_and(|l| l.contacts.len() >= self.cfg.crew_min_customers as usize)
        {
            ctx.outbox.push(Sent::new(
                Dest::Number(ids.to),
                Body::CrewEnrol {
                    line: ids.from,
                    line_name: ev.from.as_ref().into(),
                },
            ));
        }
        // Is this the line calling or texting back a customer who just contacted it?
        if self.answer(ids.from, ids.to, s) {
            self.callback(ids.from, &ev.from, ids.to, ev.ts, ctx);
        }
        // Is this the crew of a line ringing someone? Whether that is one of the line's
        // customers awaiting a callback only the line's shard knows: it is told, and judges.
        if let Some((line, enrolled_s, line_name)) = self.crew.get(&ids.from) {
            let retention = ids::span_secs(self.cfg.crew_retention_s);
            if *line != ids.from && enrolled_s.saturating_add(retention) >= s {
                ctx.outbox.push(Sent::new(
                    Dest::Number(*line),
                    Body::CrewCallback {
                        customer: ids.to,
                        line_name: line_name.clone(),
                    },
                ));
            }
        }
    }

    /// The record as its recipient's (`to`): a customer's contact, and every rule of T.
    fn as_recipient(&mut self, ev: &Event<'_>, ids: &EventIds, ctx: &mut Ctx<'_>) {
        if !self.counts(ev) {
            return;
        }
        let s = ids::secs(ev.ts);
        let lookback = ids::span_secs(self.cfg.lookback_s);
        // Is the caller a customer of the line it contacts? If so the contact is noted.
        let Some(listed) = ctx
            .contacts
            .record_inbound(ids.to, ids.from, ev.ts, lookback)
            .map(|l| l.contacts.len())
        else {
            return;
        };
        if listed >= self.cfg.min_customers_with_callbacks as usize {
            let key = PendKey::new(ids.to, ids::fp(ids.from));
            if self.pending.len() < self.max_keys || self.pending.contains_key(&key) {
                self.pending.insert(key, s);
            } else {
                self.cap_hits += 1;
            }
        }
        if self.callbacks.contains_key(&ids.to) {
            self.judge_callbacks(ids.to, &ev.to, ev.ts, ctx);
        }
        if self.followed.contains_key(&ids.to) {
            self.judge_followers(ids.to, &ev.to, ev.ts, ctx);
        }
        // Recorded just above.
        let Some(line) = ctx.contacts.get(ids.to) else {
            return;
        };
        let min = self.cfg.min_customers as usize;
        // A line with fewer customers than the threshold cannot reach it.
        if line.contacts.len() < min {
            return;
        }
        let window_s = ids::span_secs(self.cfg.window_s);
        let newest_in = line.newest_in_s;
        // The window ending at the line's newest customer contact, as every record arrives.
        let mut found = None;
        let since_s = newest_in.saturating_sub(window_s);
        if s >= since_s {
            let (customers, oldest) = measure(line.iter_contacts(), since_s, newest_in);
            if customers >= min {
                found = Some((since_s, newest_in, customers, oldest));
            }
        }
        // A late contact may also complete a window that ends before the newest one.
        if found.is_none() && s < newest_in {
            let (lo, hi) = (s.saturating_sub(window_s), s.saturating_add(window_s));
            self.times.clear();
            self.times.extend(
                line.iter_contacts()
                    .map(|c| c.last_in_s)
                    .filter(|&t| t > 0 && t >= lo && t <= hi),
            );
            if let Some(end_s) = super::completed_window(&mut self.times, s, window_s, min) {
                let since_s = end_s.saturating_sub(window_s);
                let (customers, oldest) = measure(line.iter_contacts(), since_s, end_s);
                found = Some((since_s, end_s, customers, oldest));
            }
        }
        let Some((since_s, newest, customers, oldest)) = found else {
            return;
        };
        if customers < min {
            return;
        }
        match self.fired.get(&ids.to) {
            Some(&f) if f >= since_s => return, // already reported within this window
            None if self.fired.len() >= self.max_keys => {
                self.cap_hits += 1;
                return;
            }
            _ => {}
        }
        self.fired.insert(ids.to, newest);
        ctx.out.push(Finding {
            detector: NAME,
            subject: ev.to.to_string(),
            subject_id: ids.to,
            subject_kind: SubjectKind::Line,
            score: (customers as f64 / (2.0 * min as f64)).min(1.0),
            event_time: ev.ts,
            window_start: ids::millis(oldest),
            window_end: ids::millis(newest).max(ev.ts),
            related: Vec::new(),
            evidence: evidence! {
                "customers" => customers,
                "min_customers" => min,
                "window_s" => self.cfg.window_s,
                "customer_lookback_s" => self.cfg.lookback_s,
                "min_call_duration_s" => self.cfg.min_call_duration_s,
                "max_call_duration_s" => self.cfg.max_call_duration_s,
            },
            lines: vec![(ids.to, ev.to.to_string())],
        });
    }
}

impl Detector for CustomerFanIn {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_event(&mut self, ev: &Event<'_>, ids: &EventIds, ctx: &mut Ctx<'_>) {
        if !self.cfg.enabled {
            return;
        }
        match ctx.role {
            Role::Sender => self.as_sender(ev, ids, ctx),
            Role::Recipient => self.as_recipient(ev, ids, ctx),
            Role::Handset | Role::Barrier => {}
        }
    }

    fn on_evidence(&mut self, e: &Evidence, ctx: &mut Ctx<'_>) {
        if !self.cfg.enabled {
            return;
        }
        let Dest::Number(key) = e.dest else {
            return;
        };
        match &e.body {
            Body::CrewEnrol { line, line_name } => {
                if self.crew.len() < self.max_keys || self.crew.contains_key(&key) {
                    self.crew
                        .insert(key, (*line, ids::secs(e.at), line_name.clone()));
                } else {
                    self.cap_hits += 1;
                }
            }
            Body::CrewCallback {
                customer,
                line_name,
            } if self.answer(key, *customer, ids::secs(e.at)) => {
                self.callback(key, line_name, *customer, e.at, ctx);
            }
            _ => {}
        }
    }

    fn on_findings(&mut self, _at: Millis, findings: &[Finding], _ctx: &mut Ctx<'_>) {
        if !self.cfg.enabled {
            return;
        }
        // A handover finding's subject is the new number, made on the shard that owns it:
        // noting it as followed is that key's state (the earlier line is only named).
        for f in findings
            .iter()
            .filter(|f| f.detector == super::line_handover::NAME)
        {
            // `lines` holds the new number, then the earlier line.
            let (Some(new), Some(earlier)) = (f.lines.first(), f.lines.get(1)) else {
                continue;
            };
            if new.0 != f.subject_id {
                continue;
            }
            if self.followed.len() >= self.max_keys && !self.followed.contains_key(&new.0) {
                self.cap_hits += 1;
                continue;
            }
            let at_s = ids::secs(f.event_time);
            self.followed
                .entry(new.0)
                .or_insert_with(|| (earlier.1.as_str().into(), at_s));
        }
    }

    fn expire(&mut self, watermark: Millis) {
        let wm = ids::secs(watermark);
        let now = self.swept_s.min(wm);
        self.swept_s = wm;
        let follow_cutoff = now.saturating_sub(ids::span_secs(self.cfg.follow_within_s));
        self.followed.retain(|_, f| f.1 >= follow_cutoff);
        let cutoff = now.saturating_sub(ids::span_secs(self.cfg.window_s));
        self.fired.retain(|_, f| *f >= cutoff);
        let pending_cutoff = now.saturating_sub(ids::span_secs(self.cfg.callback_within_s));
        self.pending.retain(|_, at| *at >= pending_cutoff);
        self.callbacks.retain(|_, l| {
            if l.iter().any(|c| c.1 < cutoff) {
                *l = l.iter().copied().filter(|c| c.1 >= cutoff).collect();
            }
            !l.is_empty()
        });
        if self.pending.capacity() > 2 * self.pending.len() + 1024 {
            self.pending.shrink_to_fit();
        }
        let crew_cutoff = now.saturating_sub(ids::span_secs(self.cfg.crew_retention_s));
        self.crew.retain(|_, c| c.1 >= crew_cutoff);
        if self.crew.capacity() > 2 * self.crew.len() + 1024 {
            self.crew.shrink_to_fit();
        }
        if self.callbacks.capacity() > 2 * self.callbacks.len() + 1024 {
            self.callbacks.shrink_to_fit();
        }
    }

    fn stats(&self) -> StateStats {
        StateStats {
            keys: self.fired.len() + self.callbacks.len(),
            bytes: ids::map_bytes(&self.fired)
                + ids::map_bytes(&self.pending)
                + ids::map_bytes(&self.callbacks)
                + ids::map_bytes(&self.crew)
                + ids::map_bytes(&self.followed)
                + self.followed.values().map(|f| f.0.len()).sum::<usize>()
                + self.crew.values().map(|c| c.2.len()).sum::<usize>()
                + self.callbacks.values().map(|l| l.len() * 8).sum::<usize>(),
            cap_hits: self.cap_hits,
        }
    }

    fn reconfigure(&mut self, cfg: &Config) {
        self.cfg = cfg.customer_fan_in.clone();
        self.max_keys = cfg.engine.max_keys_per_detector;
    }

    fn box_clone(&self) -> Box<dyn Detector> {
        Box::new(self.clone())
    }

    /// Later state rides after the older as further values, so an older checkpoint still
    /// loads: the new numbers followed second; the pending contacts by line third (the
    /// first value's pending-by-customer slot is written empty, and an older checkpoint's
    /// is moved onto the lines it names).
    fn save_state(&self) -> Result<Vec<u8>, codec::Error> {
        let by_customer: IdMap<(u64, u32)> = IdMap::default();
        let mut v = codec::encode(&(
            &self.fired,
            &by_customer,
            &self.callbacks,
            &self.crew,
            self.cap_hits,
        ))?;
        v.extend(codec::encode(&self.followed)?);
        v.extend(codec::encode(&pending_by_line(&self.pending))?);
        Ok(v)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), codec::Error> {
        let (rest, by_customer): (&[u8], IdMap<(u64, u32)>);
        (
            (
                self.fired,
                by_customer,
                self.callbacks,
                self.crew,
                self.cap_hits,
            ),
            rest,
        ) = codec::decode_prefix(bytes)?;
        let rest = if rest.is_empty() {
            self.followed = IdMap::default();
            rest
        } else {
            let (followed, rest) = codec::decode_prefix(rest)?;
            self.followed = followed;
            rest
        };
        let by_line: IdMap<Vec<(u32, u32)>> = if rest.is_empty() {
            IdMap::default()
        } else {
            codec::decode(rest)?
        };
        self.pending = PendingMap::default();
        for (line, list) in by_line {
            for (fp, s) in list {
                note_pending(&mut self.pending, line, fp, s);
            }
        }
        for (customer, (line, s)) in by_customer {
            note_pending(&mut self.pending, line, ids::fp(customer), s);
        }
        Ok(())
    }

    /// Every map goes by the number it is kept on: the line (`fired`, `pending`,
    /// `callbacks`), the crew member (`crew`), the new number followed (`followed`).
    fn split(
        &mut self,
        parts: usize,
        owner: &dyn Fn(u64) -> usize,
        counted: usize,
    ) -> Vec<Box<dyn Detector>> {
        let cap_hits = std::mem::take(&mut self.cap_hits);
        let mut fired = super::split_map(&mut self.fired, parts, owner).into_iter();
        let mut pending =
            super::split_map_by(&mut self.pending, parts, |k: &PendKey| owner(k.line()))
                .into_iter();
        let mut callbacks = super::split_map(&mut self.callbacks, parts, owner).into_iter();
        let mut crew = super::split_map(&mut self.crew, parts, owner).into_iter();
        let mut followed = super::split_map(&mut self.followed, parts, owner).into_iter();
        (0..parts.max(1))
            .map(|p| {
                Box::new(CustomerFanIn {
                    cfg: self.cfg.clone(),
                    fired: fired.next().unwrap_or_default(),
                    pending: pending.next().unwrap_or_default(),
                    callbacks: callbacks.next().unwrap_or_default(),
                    crew: crew.next().unwrap_or_default(),
                    max_keys: self.max_keys,
                    cap_hits: if p == counted { cap_hits } else { 0 },
                    times: Vec::new(),
                    followed: followed.next().unwrap_or_default(),
                    swept_s: self.swept_s,
                }) as Box<dyn Detector>
            })
            .collect()
    }

    fn merge(&mut self, part: Box<dyn Detector>) {
        let part = super::part_of::<Self>(part);
        super::absorb_map(&mut self.fired, part.fired);
        super::absorb_map(&mut self.pending, part.pending);
        super::absorb_map(&mut self.callbacks, part.callbacks);
        super::absorb_map(&mut self.crew, part.crew);
        super::absorb_map(&mut self.followed, part.followed);
        self.cap_hits += part.cap_hits;
    }

    #[cfg(test)]
    fn keys(&self) -> Vec<(&'static str, u64)> {
        let mut v = super::named_keys("fired", &self.fired);
        v.extend(super::named_keys(
            "pending",
            &pending_by_line(&self.pending),
        ));
        v.extend(super::named_keys("callbacks", &self.callbacks));
        v.extend(super::named_keys("crew", &self.crew));
        v.extend(super::named_keys("followed", &self.followed));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::*;

    fn det(min: u32) -> CustomerFanIn {
        let mut cfg = Config::default();
        cfg.customer_fan_in.min_customers = min;
        CustomerFanIn::new(&cfg, 1000)
    }

    /// The engine's order for one record: a barrier first when event time has moved into a
    /// minute after that of evidence waiting (the exchange epoch), then the record. The
    /// findings of both, the barrier's first.
    fn step(h: &mut Harness, d: &mut CustomerFanIn, ev: &Event<'_>) -> Vec<Finding> {
        let mut found = Vec::new();
        if h.inbox.iter().any(|e| e.at / MIN < ev.ts / MIN) {
            found.extend(h.barrier(d));
        }
        found.extend(h.feed(d, ev));
        found
    }

    /// The line texts `n` customers at t=0.
    fn advert(h: &mut Harness, d: &mut CustomerFanIn, n: usize) {
        for i in 0..n {
            let (id, to) = (format!("ad{i}"), format!("c{i}"));
            assert!(h.feed(d, &sms(&id, 0, "line", &to)).is_empty());
        }
    }

    #[test]
    fn customers_calling_back_fire() {
        let (mut h, mut d) = (Harness::new(), det(4));
        advert(&mut h, &mut d, 10);
        let mut found = Vec::new();
        for i in 0..5 {
            let (id, from) = (format!("in{i}"), format!("c{i}"));
            found.extend(h.feed(
                &mut d,
                &call(&id, HOUR + i as Millis * MIN, &from, "line", 30),
            ));
        }
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].evidence["customers"], 4);
        assert_eq!(found[0].subject, "line");
    }

    #[test]
    fn strangers_do_not_count() {
        let (mut h, mut d) = (Harness::new(), det(2));
        advert(&mut h, &mut d, 3);
        for i in 0..5 {
            let (id, from) = (format!("in{i}"), format!("stranger{i}"));
            assert!(h.feed(&mut d, &sms(&id, HOUR, &from, "line")).is_empty());
        }
    }

    #[test]
    fn very_short_and_long_calls_do_not_count() {
        let (mut h, mut d) = (Harness::new(), det(2));
        advert(&mut h, &mut d, 3);
        assert!(h.feed(&mut d, &call("a", HOUR, "c0", "line", 2)).is_empty());
        assert!(h
            .feed(&mut d, &call("b", HOUR, "c1", "line", 900))
            .is_empty());
        assert!(h.feed(&mut d, &call("c", HOUR, "c2", "line", 0)).is_empty());
        assert_eq!(h.feed(&mut d, &call("d", HOUR, "c1", "line", 40)).len(), 0);
        assert_eq!(h.feed(&mut d, &call("e", HOUR, "c2", "line", 40)).len(), 1);
    }

    #[test]
    fn contacts_spread_wider_than_the_window_do_not_fire() {
        let (mut h, mut d) = (Harness::new(), det(3));
        advert(&mut h, &mut d, 5);
        for i in 0..5 {
            let (id, from) = (format!("in{i}"), format!("c{i}"));
            assert!(h
                .feed(
                    &mut d,
                    &sms(&id, (i as Millis + 1) * 4 * HOUR, &from, "line")
                )
                .is_empty());
        }
    }

    #[test]
    fn contact_before_the_advert_is_not_a_customer_contact() {
        let (mut h, mut d) = (Harness::new(), det(1));
        assert!(h.feed(&mut d, &sms("early", 0, "c0", "line")).is_empty());
        // (c0 texted the line first, so to c0 the line is a customer; only the line matters here.)
        let about_line = |f: Vec<Finding>| f.into_iter().filter(|f| f.subject == "line").count();
        assert_eq!(
            about_line(h.feed(&mut d, &sms("ad", HOUR, "line", "c0"))),
            0
        );
        // A late record from before the advert: the caller was not yet a customer.
        assert!(h
            .feed(&mut d, &sms("late", HOUR - MIN, "c0", "line"))
            .is_empty());
        assert_eq!(
            h.feed(&mut d, &sms("after", 2 * HOUR, "c0", "line")).len(),
            1
        );
    }

    /// A small line: 8 customers contact it within six hours (12 needed), and it texts 4
    /// of them back within minutes (the callback pattern).
    fn small_line(
        h: &mut Harness,
        d: &mut CustomerFanIn,
        reply: impl Fn(usize) -> Option<(Millis, &'static str)>,
    ) -> Vec<Finding> {
        let mut cfg = Config::default();
        cfg.customer_fan_in.crew_min_customers = 10;
        *d = CustomerFanIn::new(&cfg, 1000);
        advert(h, d, 10);
        let mut found = Vec::new();
        for i in 0..8 {
            let t = HOUR + i as Millis * 20 * MIN;
            let (id, from) = (format!("in{i}"), format!("c{i}"));
            found.extend(step(h, d, &call(&id, t, &from, "line", 30)));
            if let Some((after, by)) = reply(i) {
                let id = format!("cb{i}");
                found.extend(step(h, d, &sms(&id, t + after, by, &from)));
            }
        }
        found.extend(h.barrier(d));
        found
    }

    #[test]
    fn callbacks_to_a_few_customers_fire_on_a_small_line() {
        let (mut h, mut d) = (Harness::new(), det(12));
        let f = small_line(&mut h, &mut d, |i| {
            (i % 2 == 0).then_some((3 * MIN, "line"))
        });
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].subject, "line");
        assert_eq!(f[0].evidence["callbacks"], 4);
        assert_eq!(f[0].evidence["customers"], 8);
    }

    /// When the line has rung `min_callbacks` customers back within the window, its
    /// `deal_line` verdict is told, once, as evidence (deals confirmed: what
    /// `deal_line.repeat_needs_callbacks` waits for); a fifth callback tells it nothing new,
    /// and the count reaching four again in a later window tells it again.
    #[test]
    fn the_fourth_callback_in_the_window_tells_the_lines_verdict_once() {
        let (mut h, mut d) = (Harness::new(), det(100));
        advert(&mut h, &mut d, 20);
        let told = |h: &Harness| -> Vec<(Dest, Millis, Body)> {
            h.inbox
                .iter()
                .filter(|e| matches!(e.body, Body::DealCredit(_)))
                .map(|e| (e.dest, e.at, e.body.clone()))
                .collect()
        };
        let want = |n: usize| {
            let detail = serde_json::json!({"callbacks": n, "min_callbacks": 4,
                "callback_within_s": 600, "window_s": 21600});
            super::super::deal_line::callbacks_credit("line", detail)
        };
        let mut fourth = 0;
        for (k, start) in [(0, HOUR), (1, 10 * HOUR)] {
            for i in 0..5 {
                let c = format!("c{}", k * 5 + i);
                let t = start + i as Millis * 20 * MIN;
                h.feed(&mut d, &call(&format!("in{k}{i}"), t, &c, "line", 30));
                h.feed(&mut d, &sms(&format!("cb{k}{i}"), t + 3 * MIN, "line", &c));
                if i == 3 {
                    fourth = t + 3 * MIN;
                }
            }
            let got = told(&h);
            assert_eq!(got.len(), k + 1, "{got:?}");
            let line = Dest::Number(ids::id("line"));
            assert_eq!(got[k], (line, fourth, want(4)));
        }
        // Contacts not answered within `callback_within_s` are no callbacks.
        let (mut h, mut d) = (Harness::new(), det(100));
        advert(&mut h, &mut d, 20);
        for i in 0..6 {
            let c = format!("c{i}");
            let t = HOUR + i as Millis * 20 * MIN;
            h.feed(&mut d, &call(&format!("in{i}"), t, &c, "line", 30));
            h.feed(&mut d, &sms(&format!("cb{i}"), t + 11 * MIN, "line", &c));
        }
        assert!(told(&h).is_empty());
    }

    #[test]
    fn replies_later_than_the_callback_window_do_not_count() {
        let (mut h, mut d) = (Harness::new(), det(12));
        let f = small_line(&mut h, &mut d, |i| {
            (i % 2 == 0).then_some((15 * MIN, "line"))
        });
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn a_runner_the_line_calls_rings_customers_back_for_it() {
        let (mut h, mut d) = (Harness::new(), det(12));
        // Before any order, the line calls its runner.
        assert!(h
            .feed(&mut d, &call("boss", 0, "line", "runner", 40))
            .is_empty());
        let f = small_line(&mut h, &mut d, |i| {
            (i % 2 == 0).then_some((5 * MIN, "runner"))
        });
        // The line had texted nobody when it called, so the runner is not yet its crew.
        assert!(f.is_empty(), "{f:?}");
        let mut h = Harness::new();
        let mut cfg = Config::default();
        cfg.customer_fan_in.crew_min_customers = 10;
        let mut d = CustomerFanIn::new(&cfg, 1000);
        advert(&mut h, &mut d, 10);
        assert!(h
            .feed(&mut d, &call("boss", MIN, "line", "runner", 40))
            .is_empty());
        let mut found = Vec::new();
        for i in 0..8 {
            let t = HOUR + i as Millis * 20 * MIN;
            let (id, from) = (format!("in{i}"), format!("c{i}"));
            found.extend(step(&mut h, &mut d, &call(&id, t, &from, "line", 30)));
            if i % 2 == 0 {
                let id = format!("cb{i}");
                let ev = call(&id, t + 5 * MIN, "runner", &from, 20);
                found.extend(step(&mut h, &mut d, &ev));
            }
        }
        found.extend(h.barrier(&mut d));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].subject, "line");
        assert_eq!(found[0].evidence["callbacks"], 4);
        // A stranger ringing the customers back is nobody's crew.
        let (mut h, mut d) = (Harness::new(), det(12));
        let f = small_line(&mut h, &mut d, |i| {
            (i % 2 == 0).then_some((5 * MIN, "stranger"))
        });
        assert!(f.is_empty(), "{f:?}");
    }

    /// 21 customers; 11 contact the line at +1 h, one at +7 h 05 and one at +6 h 55, in the
    /// given order of the last two: the +6 h 55 one makes 12 within the six hours ending
    /// then.
    fn late_completion(late_last: bool) -> Vec<Finding> {
        let (mut h, mut d) = (Harness::new(), det(12));
        advert(&mut h, &mut d, 21);
        let mut all = Vec::new();
        for i in 0..11 {
            let (id, from) = (format!("in{i}"), format!("c{i}"));
            all.extend(h.feed(&mut d, &sms(&id, HOUR + i as Millis, &from, "line")));
        }
        assert!(all.is_empty());
        let early = sms("a", 7 * HOUR - 5 * MIN, "c11", "line");
        let later = sms("b", 7 * HOUR + 5 * MIN, "c12", "line");
        let order = if late_last {
            [later, early]
        } else {
            [early, later]
        };
        for ev in &order {
            all.extend(h.feed(&mut d, ev));
        }
        all
    }

    #[test]
    fn late_contact_fires_in_its_own_window_whatever_the_order() {
        for late_last in [false, true] {
            let f = late_completion(late_last);
            assert_eq!(f.len(), 1, "late_last = {late_last}");
            assert_eq!(f[0].evidence["customers"], 12);
            assert_eq!(f[0].event_time, 7 * HOUR - 5 * MIN);
        }
    }

    /// The finding `line_handover` makes naming `new` the new number of `earlier`.
    fn handover_finding(new: &str, earlier: &str, at: Millis) -> Finding {
        Finding {
            detector: crate::detect::line_handover::NAME,
            subject: new.into(),
            subject_id: ids::id(new),
            subject_kind: SubjectKind::Line,
            score: 1.0,
            event_time: at,
            window_start: at,
            window_end: at,
            related: vec![earlier.into()],
            evidence: Default::default(),
            lines: vec![
                (ids::id(new), new.to_string()),
                (ids::id(earlier), earlier.to_string()),
            ],
        }
    }

    /// A handover finding naming `new` the new number of `earlier`, as the engine shows it.
    fn handover(h: &mut Harness, d: &mut CustomerFanIn, new: &str, earlier: &str, at: Millis) {
        let f = handover_finding(new, earlier, at);
        let mut out = Vec::new();
        let mut ctx = Ctx {
            role: crate::exchange::Role::Barrier,
            contacts: &mut h.contacts,
            stream_start: 0,
            out: &mut out,
            outbox: &mut Vec::new(),
            cells: None,
            cell: None,
            shards: 1,
            shard: 0,
        };
        d.on_findings(at, &[f], &mut ctx);
    }

    /// Issue 13: a number replaced late in the data lives hours, with a handful of customers
    /// two hours apart (never 12 in six hours, nobody called back). Before the followers rule
    /// fan-in never found it.
    #[test]
    fn customers_following_a_new_number_fire_after_a_handover() {
        let run = |with_handover: bool| {
            let mut d = CustomerFanIn::new(&Config::default(), 1000);
            let mut h = Harness::new();
            advert(&mut h, &mut d, 20);
            if with_handover {
                handover(&mut h, &mut d, "line", "oldline", MIN);
            }
            let mut found = Vec::new();
            for i in 0..6 {
                let (id, from) = (format!("in{i}"), format!("c{i}"));
                let at = HOUR + i as Millis * 2 * HOUR;
                found.extend(h.feed(&mut d, &call(&id, at, &from, "line", 30)));
            }
            found
        };
        assert!(run(false).is_empty());
        let f = run(true);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].evidence["rule"], "followed_new_number");
        assert_eq!(f[0].evidence["customers"], 5);
        assert_eq!(f[0].evidence["earlier_line"], "oldline");
        assert_eq!(f[0].related, ["oldline"]);
        // The fifth customer, 9 hours in.
        assert_eq!(f[0].event_time, 9 * HOUR);
    }

    /// A line of 10 customers (`crew_min_customers` 10) that called its runner at +1 min;
    /// 8 customers contact it 20 minutes apart from +1 h, and the runner rings the odd ones
    /// back 5 minutes later (the fourth ring, to the last customer, completes the rule). The detector, the harness, and each record with the findings
    /// the harness gave for it (a barrier before each record that enters a new minute).
    fn crewed(h: &mut Harness) -> (CustomerFanIn, Vec<(String, Vec<Finding>)>) {
        let mut cfg = Config::default();
        cfg.customer_fan_in.crew_min_customers = 10;
        let mut d = CustomerFanIn::new(&cfg, 1000);
        advert(h, &mut d, 10);
        let mut seen = vec![(
            "boss".to_string(),
            step(h, &mut d, &call("boss", MIN, "line", "runner", 40)),
        )];
        for i in 0..8 {
            let t = HOUR + i as Millis * 20 * MIN;
            let (id, from) = (format!("in{i}"), format!("c{i}"));
            seen.push((
                id.clone(),
                step(h, &mut d, &call(&id, t, &from, "line", 30)),
            ));
            if i % 2 == 1 {
                let id = format!("cb{i}");
                let ev = call(&id, t + 5 * MIN, "runner", &from, 20);
                seen.push((id.clone(), step(h, &mut d, &ev)));
            }
        }
        (d, seen)
    }

    #[test]
    fn crew_enrolment_is_sent_to_the_runner_and_counts_only_after_the_barrier() {
        let mut h = Harness::new();
        let mut cfg = Config::default();
        cfg.customer_fan_in.crew_min_customers = 10;
        let mut d = CustomerFanIn::new(&cfg, 1000);
        advert(&mut h, &mut d, 10);
        h.feed(&mut d, &call("boss", MIN, "line", "runner", 40));
        let [e] = &h.inbox[..] else {
            panic!("one enrolment expected: {:?}", h.inbox);
        };
        assert_eq!(e.dest, Dest::Number(ids::id("runner")));
        assert_eq!(
            e.body,
            Body::CrewEnrol {
                line: ids::id("line"),
                line_name: "line".into()
            }
        );
        assert_eq!((e.at, &*e.event_id), (MIN, "boss"));
        // Not yet crew: the runner's ring tells no line.
        h.feed(&mut d, &call("early", MIN + 1, "runner", "c0", 20));
        assert_eq!(h.inbox.len(), 1);
        assert!(h.barrier(&mut d).is_empty());
        h.feed(&mut d, &call("later", 2 * MIN, "runner", "c0", 20));
        let [e] = &h.inbox[..] else {
            panic!("one callback expected: {:?}", h.inbox);
        };
        assert_eq!(e.dest, Dest::Number(ids::id("line")));
        assert_eq!(
            e.body,
            Body::CrewCallback {
                customer: ids::id("c0"),
                line_name: "line".into()
            }
        );
        // Calls from a line without a customer list enrol nobody.
        let mut h = Harness::new();
        h.feed(&mut d, &call("boss", MIN, "nobody", "runner2", 40));
        assert!(h.inbox.is_empty(), "{:?}", h.inbox);
    }

    #[test]
    fn crew_callback_fires_at_the_barrier_with_its_record_time_and_id() {
        let mut h = Harness::new();
        let (mut d, seen) = crewed(&mut h);
        // Whatever came out before the end came out of barriers: nothing before the last
        // ring, whose evidence still waits.
        assert!(seen.iter().all(|(_, f)| f.is_empty()), "{seen:?}");
        let ring = HOUR + 7 * 20 * MIN + 5 * MIN;
        let waiting: Vec<_> = h
            .inbox
            .iter()
            .filter(|e| matches!(e.body, Body::CrewCallback { .. }))
            .map(|e| (&*e.event_id, e.at, e.dest))
            .collect();
        assert_eq!(waiting, [("cb7", ring, Dest::Number(ids::id("line")))]);
        let f = h.barrier(&mut d);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].subject, "line");
        assert_eq!(f[0].evidence["callbacks"], 4);
        assert_eq!(f[0].evidence["customers"], 8);
        assert_eq!((f[0].event_time, f[0].window_end), (ring, ring));
    }

    #[test]
    fn pending_contacts_outlive_a_sweep_until_the_barrier_judges_them() {
        let run = |sweep: bool| {
            let mut h = Harness::new();
            let (mut d, _) = crewed(&mut h);
            assert!(h.barrier(&mut d).len() == 1);
            // A second round: the same customers again the next day (the line rings its
            // runner again first), the runner ringing 9 minutes after each contact, and the engine sweeping twice before the barrier
            // (the second sweep's watermark past the callback window of the contact).
            let day = DAY;
            let mut found = step(&mut h, &mut d, &call("boss2", day, "line", "runner", 40));
            for i in 0..8 {
                let t = day + HOUR + i as Millis * 20 * MIN;
                let (id, from) = (format!("again{i}"), format!("c{i}"));
                found.extend(step(&mut h, &mut d, &call(&id, t, &from, "line", 30)));
                if i % 2 == 1 {
                    let id = format!("ring{i}");
                    let at = t + 9 * MIN;
                    found.extend(h.feed(&mut d, &call(&id, at, "runner", &from, 20)));
                    if sweep {
                        d.expire(at - MIN);
                        d.expire(at + 2 * MIN);
                    }
                    found.extend(h.barrier(&mut d));
                }
            }
            found
        };
        let (kept, swept) = (run(false), run(true));
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(swept, kept);
    }

    #[test]
    fn a_customer_of_two_lines_awaits_a_callback_from_each() {
        let mut cfg = Config::default();
        cfg.customer_fan_in.min_customers_with_callbacks = 2;
        cfg.customer_fan_in.min_callbacks = 1;
        let mut d = CustomerFanIn::new(&cfg, 1000);
        let mut h = Harness::new();
        for line in ["one", "two"] {
            for c in ["c0", "c1"] {
                h.feed(&mut d, &sms("ad", 0, line, c));
            }
        }
        let mut found = Vec::new();
        found.extend(h.feed(&mut d, &sms("x", HOUR, "c1", "one")));
        found.extend(h.feed(&mut d, &sms("y", HOUR, "c0", "one")));
        // c0 then contacts the second line; the first still calls it back.
        found.extend(h.feed(&mut d, &sms("z", HOUR + MIN, "c0", "two")));
        assert!(found.is_empty(), "{found:?}");
        let f = h.feed(&mut d, &sms("back", HOUR + 2 * MIN, "one", "c0"));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].subject, "one");
        assert_eq!(f[0].event_time, HOUR + 2 * MIN);
    }

    #[test]
    fn an_older_checkpoint_with_pending_by_customer_loads_onto_the_lines() {
        let mut h = Harness::new();
        let (mut d, _) = crewed(&mut h);
        h.barrier(&mut d);
        // The format before the split: pending by customer, no third value.
        let mut by_customer: IdMap<(u64, u32)> = IdMap::default();
        by_customer.insert(ids::id("c9"), (ids::id("line"), ids::secs(DAY)));
        let mut old =
            codec::encode(&(&d.fired, &by_customer, &d.callbacks, &d.crew, d.cap_hits)).unwrap();
        old.extend(codec::encode(&d.followed).unwrap());
        let mut restored = CustomerFanIn::new(&Config::default(), 1000);
        restored.load_state(&old).unwrap();
        assert_eq!(
            pending_by_line(&restored.pending).get(&ids::id("line")),
            Some(&vec![(ids::fp(ids::id("c9")), ids::secs(DAY))])
        );
        // And the current format round-trips.
        let mut again = CustomerFanIn::new(&Config::default(), 1000);
        again.load_state(&restored.save_state().unwrap()).unwrap();
        assert_eq!(again.pending, restored.pending);
        assert_eq!(again.crew, restored.crew);
        assert_eq!(again.followed, restored.followed);
    }

    /// This detector on `n` shards as the engine runs it (`shardkit`), keys spread by
    /// `salt`, with a barrier once a record enters a new minute of event time after
    /// evidence was sent.
    type Shards = crate::detect::shardkit::Shards<CustomerFanIn>;

    fn shards(n: usize, salt: u64, cfg: &Config) -> Shards {
        Shards::new(CustomerFanIn::new(cfg, 1000), n, None).with_salt(salt)
    }

    fn feed(s: &mut Shards, ev: &Event<'_>) {
        if s.barrier_due(ev.ts, MIN) {
            s.barrier();
        }
        s.feed(ev);
    }

    /// `line_handover` naming `new` the new number of `earlier` at `at`, shown (as the
    /// engine does) on the shard that owns `new`, the finding's subject.
    fn handover_on(s: &mut Shards, new: &str, earlier: &str, at: Millis) {
        s.show(ids::id(new), at, &[handover_finding(new, earlier, at)]);
    }

    /// Every finding, by (record id, subject): the order alerts are compared in.
    fn finish(mut s: Shards) -> Vec<(Box<str>, Finding)> {
        s.barrier();
        let mut found = std::mem::take(&mut s.found);
        found.sort_by(|a, b| (&a.0, &a.1.subject).cmp(&(&b.0, &b.1.subject)));
        found
    }

    /// Three lines: `lineA` confirmed by its runner's callbacks, `lineB` by its own and its
    /// runner's (one to a customer it shares with `lineA`, pending on both), `lineC` by the
    /// window rule; `lineD`, a new number `line_handover` named, by its followers.
    fn city(shards: &mut Shards) {
        handover_on(shards, "lineD", "lineOld", MIN);
        let mut evs: Vec<(String, Millis, String, String, bool)> = Vec::new();
        let mut add = |id: String, t: Millis, from: &str, to: &str, text: bool| {
            evs.push((id, t, from.to_string(), to.to_string(), text))
        };
        for i in 0..12 {
            add(format!("adA{i}"), i, "lineA", &format!("a{i}"), true);
            add(
                format!("adC{i}"),
                2 * HOUR + i,
                "lineC",
                &format!("k{i}"),
                true,
            );
            add(
                format!("inC{i}"),
                3 * HOUR + i * MIN,
                &format!("k{i}"),
                "lineC",
                true,
            );
        }
        for i in 0..10 {
            add(format!("adB{i}"), 100 + i, "lineB", &format!("b{i}"), true);
            add(format!("adD{i}"), 300 + i, "lineD", &format!("d{i}"), true);
        }
        for i in 0..6 {
            add(
                format!("inD{i}"),
                HOUR + i * 2 * HOUR,
                &format!("d{i}"),
                "lineD",
                false,
            );
        }
        for i in 0..4 {
            add(format!("adBa{i}"), 200 + i, "lineB", &format!("a{i}"), true);
        }
        add("bossA".into(), 2 * MIN, "lineA", "runnerA", false);
        add("bossB".into(), 3 * MIN, "lineB", "runnerB", false);
        for i in 0..8 {
            let t = HOUR + i * 20 * MIN;
            add(format!("inA{i}"), t, &format!("a{i}"), "lineA", false);
            if i % 2 == 1 {
                add(
                    format!("cbA{i}"),
                    t + 5 * MIN,
                    "runnerA",
                    &format!("a{i}"),
                    false,
                );
            }
            add(
                format!("inB{i}"),
                HOUR + (30 + 5 * i) * MIN,
                &format!("b{i}"),
                "lineB",
                true,
            );
        }
        add("inBa".into(), HOUR + 62 * MIN, "a2", "lineB", false);
        add("cbB5".into(), HOUR + 63 * MIN, "lineB", "b5", true);
        add("cbB6".into(), HOUR + 63 * MIN + 1, "lineB", "b6", true);
        add("rBa".into(), HOUR + 68 * MIN, "runnerB", "a2", false);
        add("rB7".into(), HOUR + 69 * MIN, "runnerB", "b7", false);
        evs.sort_by_key(|e| e.1);
        for (id, t, from, to, text) in &evs {
            let ev = match text {
                true => sms(id, *t, from, to),
                false => call(id, *t, from, to, 30),
            };
            feed(shards, &ev);
        }
    }

    #[test]
    fn alerts_are_the_same_on_one_two_and_three_shards() {
        let mut cfg = Config::default();
        cfg.customer_fan_in.crew_min_customers = 10;
        let mut one = shards(1, 0, &cfg);
        city(&mut one);
        let one = finish(one);
        let subjects: Vec<(&str, &str)> = one
            .iter()
            .map(|(id, f)| (&**id, f.subject.as_str()))
            .collect();
        // lineA by its runner's fourth ring, lineB by its fourth callback (its runner's),
        // lineC by its twelfth customer, lineD by its fifth follower.
        assert_eq!(
            subjects,
            [
                ("cbA7", "lineA"),
                ("inC11", "lineC"),
                ("inD4", "lineD"),
                ("rB7", "lineB")
            ],
            "{one:?}"
        );
        assert_eq!(one[3].1.evidence["callbacks"], 4);
        assert_eq!(one[2].1.evidence["rule"], "followed_new_number");
        let mut split = 0;
        for n in [2, 3] {
            for salt in 0..8 {
                let mut sharded = shards(n, salt, &cfg);
                let apart =
                    |s: &Shards, a: &str, b: &str| s.owner(ids::id(a)) != s.owner(ids::id(b));
                if apart(&sharded, "lineA", "runnerA") && apart(&sharded, "lineB", "runnerB") {
                    split += 1;
                }
                city(&mut sharded);
                assert_eq!(finish(sharded), one, "{n} shards, salt {salt}");
            }
        }
        // The runs that put a line, its runner and its customers on different shards are
        // the ones that catch a read across keys.
        assert!(split >= 3, "{split}");
    }

    /// Exchanges are the exception, not the rule: on a generated city few records send a
    /// crew enrolment or a crew callback (3,721 and 28,499 per million records on this
    /// city; 3,670-3,730 and 25,200-26,500 on 20,000-subscriber ones). Guards against an exchange
    /// slipping onto every record.
    #[test]
    fn few_records_send_an_exchange_on_a_generated_city() {
        use crate::generate::{generate_in_memory, GenOptions};
        let opts = GenOptions {
            subscribers: 2_000,
            ..GenOptions::default()
        };
        let (bytes, _, _) = generate_in_memory(&opts).unwrap();
        let dopts = crate::event::DecodeOptions::default();
        let (mut h, mut d) = (
            Harness::new(),
            CustomerFanIn::new(&Config::default(), 1 << 20),
        );
        let mut seen = std::collections::HashSet::new();
        let (mut records, mut enrol, mut ring) = (0u64, 0u64, 0u64);
        let mut count = |inbox: &[Evidence]| {
            for e in inbox {
                match e.body {
                    Body::CrewEnrol { .. } => enrol += 1,
                    Body::CrewCallback { .. } => ring += 1,
                    _ => {}
                }
            }
        };
        for line in bytes.split(|b| *b == b'\n') {
            let Ok(ev) = crate::event::decode(line, &dopts) else {
                continue;
            };
            if !seen.insert(ev.event_id.to_string()) {
                continue;
            }
            records += 1;
            if h.inbox.iter().any(|e| e.at / MIN < ev.ts / MIN) {
                count(&h.inbox);
                h.barrier(&mut d);
            }
            h.feed(&mut d, &ev);
        }
        count(&h.inbox);
        h.barrier(&mut d);
        let per_million = |n: u64| n * 1_000_000 / records;
        assert!(records > 80_000, "{records}");
        assert!(
            (1_000..10_000).contains(&per_million(enrol)),
            "CrewEnrol {} per million",
            per_million(enrol)
        );
        assert!(
            (5_000..50_000).contains(&per_million(ring)),
            "CrewCallback {} per million",
            per_million(ring)
        );
    }
}
