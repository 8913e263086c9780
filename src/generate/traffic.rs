//! One day of event-time traffic: ordinary subscribers, deal networks and look-alikes.
//!
//! Every record made for day `d` has an event time at or after the day's start (replies may
//! spill past its end), which is what lets delivery emit everything that arrives before the
//! next day's start once day `d` is made.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Poisson};

use super::params as p;
use super::world::{active, clock, hour_of, weekday, Runner, Span, World, METRO, NONE};

/// Seed tag of the runners' deliveries (a stream of their own).
const TAG_DELIVERIES: u64 = 0x6465_6c69_0000_0000;
/// Club organisers' evenings, one stream a day.
const TAG_ORGANISER_DAYS: u64 = 0x636c_7562_0000_0000;
use super::{DAY_MS, HOUR_MS};

/// `sms` or `call`, compactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EvKind {
    Sms,
    Call,
}

/// One record in event time, identities as indices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ev {
    pub ts: i64,
    pub from: u32,
    pub to: u32,
    pub sim: u32,
    pub handset: u32,
    /// [`NONE`] when the record carries no cell.
    pub cell: u32,
    pub dur: u32,
    pub kind: EvKind,
}

/// Cumulative hourly weights, for sampling a clock time.
struct Rhythm([f64; 24]);

impl Rhythm {
    fn new(weights: &[f64; 24]) -> Self {
        let mut cum = [0.0; 24];
        let mut acc = 0.0;
        for (c, w) in cum.iter_mut().zip(weights) {
            acc += w;
            *c = acc;
        }
        Rhythm(cum)
    }

    /// A clock time of day, in ms.
    fn sample(&self, rng: &mut ChaCha8Rng) -> i64 {
        let x = rng.gen::<f64>() * self.0[23];
        let h = self.0.partition_point(|c| *c <= x).min(23) as i64;
        h * HOUR_MS + rng.gen_range(0..HOUR_MS)
    }
}

fn lognormal(median: f64, sigma: f64) -> LogNormal<f64> {
    // Fixed positive constants from `params`: cannot fail.
    LogNormal::new(median.ln(), sigma).expect("valid lognormal parameters")
}

fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    // lambda is positive and finite here, which is all Poisson::new asks.
    Poisson::new(lambda).map_or(0, |d: Poisson<f64>| d.sample(rng) as u32)
}

/// Traffic state that carries over from day to day.
pub(crate) struct Traffic<'w> {
    w: &'w World,
    ordinary: Rhythm,
    customer: Rhythm,
    reply: LogNormal<f64>,
    call: LogNormal<f64>,
    runner_call: LogNormal<f64>,
    festive_reply: LogNormal<f64>,
    /// Per business, per client: the last day reminded (u32::MAX: never).
    reminded: Vec<Vec<u32>>,
}

impl<'w> Traffic<'w> {
    pub fn new(w: &'w World) -> Self {
        Traffic {
            w,
            ordinary: Rhythm::new(&p::ORDINARY_HOURLY),
            customer: Rhythm::new(&p::CUSTOMER_HOURLY),
            reply: lognormal(p::REPLY_MEDIAN_S, p::REPLY_SIGMA),
            call: lognormal(p::CALL_MEDIAN_S, p::CALL_SIGMA),
            runner_call: lognormal(p::RUNNER_CALL_MEDIAN_S, 0.7),
            festive_reply: lognormal(p::FESTIVE_REPLY_MEDIAN_S, 1.0),
            reminded: w
                .businesses
                .iter()
                .map(|b| vec![u32::MAX; b.clientele.len()])
                .collect(),
        }
    }

    /// Makes day `d`'s records and hands each to `out`.
    pub fn day(&mut self, d: u32, rng: &mut ChaCha8Rng, out: &mut dyn FnMut(Ev)) {
        self.ordinary(d, rng, out);
        for k in 0..self.w.networks.len() {
            self.network(k, d, rng, out);
        }
        self.businesses(d, rng, out);
        self.schools(d, rng, out);
        self.shops(d, rng, out);
        if d == self.w.festive_day {
            self.festive(rng, out);
        }
        self.organisers(d, out);
    }

    /// Club organisers' evenings: the organiser texts every member, a few seconds apart;
    /// half answer within the hour and a fifth of those ring briefly. From a stream of
    /// their own, so the rest of the day's traffic is the same with or without them.
    fn organisers(&self, d: u32, out: &mut dyn FnMut(Ev)) {
        if self.w.organisers.is_empty() {
            return;
        }
        let mut rng = super::rng_for(self.w.seed, TAG_ORGANISER_DAYS + u64::from(d));
        for o in self.w.organisers.iter().filter(|o| o.days.contains(&d)) {
            let start = o.hour * HOUR_MS + rng.gen_range(p::ORGANISER_START_MS);
            let mut t = clock(self.w.day_start(d), start);
            for &m in &o.members {
                t += rng.gen_range(p::ORGANISER_GAP_MS);
                out(self.sub_ev(&mut rng, o.sub, m, t, EvKind::Sms, 0));
                if !rng.gen_bool(p::ORGANISER_REPLY_PROB) {
                    continue;
                }
                let at = t + rng.gen_range(p::ORGANISER_REPLY_MS);
                out(self.sub_ev(&mut rng, m, o.sub, at, EvKind::Sms, 0));
                if rng.gen_bool(p::ORGANISER_CALL_PROB) {
                    let ring = at + rng.gen_range(p::ORGANISER_CALL_AFTER_MS);
                    let dur = rng.gen_range(p::ORGANISER_CALL_S);
                    out(self.sub_ev(&mut rng, m, o.sub, ring, EvKind::Call, dur));
                }
            }
        }
    }

    /// A record from ordinary subscriber `i`, with the kit and cell they have at `t`.
    fn sub_ev(&self, rng: &mut ChaCha8Rng, i: u32, to: u32, t: i64, kind: EvKind, dur: u32) -> Ev {
        let s = &self.w.subs[i as usize];
        let (sim, handset) = self.w.kit(i, t);
        let working = weekday(t) < 5 && p::WORK_HOURS.contains(&hour_of(t));
        let mut cell = if working { s.day_cell } else { s.home_cell };
        if rng.gen_bool(p::CELL_AWAY_PROB) {
            let area = self.w.geo.cell_area[cell as usize];
            cell = self.w.geo.random_cell(rng, area);
        }
        if rng.gen_bool(p::NO_CELL_PROB) {
            cell = NONE;
        }
        Ev {
            ts: t,
            from: i,
            to,
            sim,
            handset,
            cell,
            dur,
            kind,
        }
    }

    fn call_duration(&self, rng: &mut ChaCha8Rng) -> u32 {
        if rng.gen_bool(p::CALL_UNANSWERED) {
            0
        } else {
            self.call.sample(rng).clamp(1.0, p::CALL_MAX_S) as u32
        }
    }

    fn ordinary(&self, d: u32, rng: &mut ChaCha8Rng, out: &mut dyn FnMut(Ev)) {
        let ds = self.w.day_start(d);
        // The rhythm is by clock time; a weekday factor scales the whole day.
        let factor = if weekday(ds + 12 * HOUR_MS) >= 5 {
            p::WEEKEND_FACTOR
        } else {
            1.0
        };
        for i in 0..self.w.subs.len() as u32 {
            let friends = self.w.friends(i);
            if friends.is_empty() {
                continue;
            }
            let n = poisson(rng, self.w.subs[i as usize].rate as f64 * factor);
            for _ in 0..n {
                let t = clock(ds, self.ordinary.sample(rng));
                let u: f64 = rng.gen();
                let j = friends[(friends.len() as f64 * u.powf(p::FAVOURITE_SKEW)) as usize];
                if rng.gen_bool(p::SMS_SHARE) {
                    out(self.sub_ev(rng, i, j, t, EvKind::Sms, 0));
                    if rng.gen_bool(p::SMS_REPLY_PROB) {
                        let after = self.reply.sample(rng).clamp(5.0, p::REPLY_MAX_S);
                        let tr = t + (after * 1000.0) as i64;
                        out(self.sub_ev(rng, j, i, tr, EvKind::Sms, 0));
                    }
                } else {
                    let dur = self.call_duration(rng);
                    out(self.sub_ev(rng, i, j, t, EvKind::Call, dur));
                }
            }
        }
    }

    fn line_ev(span: &Span, cell: u32, to: u32, t: i64, kind: EvKind, dur: u32) -> Ev {
        Ev {
            ts: t,
            from: span.line,
            to,
            sim: span.sim,
            handset: span.handset,
            cell,
            dur,
            kind,
        }
    }

    /// The deal line texts (nearly) its whole list, over a few minutes.
    fn blast(
        &self,
        k: usize,
        span: &Span,
        t0: i64,
        reach: f64,
        rng: &mut ChaCha8Rng,
        out: &mut dyn FnMut(Ev),
    ) {
        let net = &self.w.networks[k];
        let mut list: Vec<u32> = net
            .customers
            .iter()
            .map(|c| c.0)
            .filter(|_| rng.gen_bool(reach))
            .collect();
        list.shuffle(rng);
        let spread = rng.gen_range(p::BLAST_SPREAD_MS);
        let step = spread / list.len().max(1) as i64;
        for (n, c) in list.into_iter().enumerate() {
            let t = t0 + n as i64 * step + rng.gen_range(0..step.max(1));
            out(Self::line_ev(span, net.base_cell, c, t, EvKind::Sms, 0));
        }
    }

    fn network(&self, k: usize, d: u32, rng: &mut ChaCha8Rng, out: &mut dyn FnMut(Ev)) {
        let net = &self.w.networks[k];
        let ds = self.w.day_start(d);
        let de = ds + DAY_MS;
        let town_cell = |rng: &mut ChaCha8Rng| {
            if rng.gen_bool(0.7) {
                net.base_cell
            } else {
                self.w.geo.random_cell(rng, net.town)
            }
        };

        // Adverts, from whichever number is live at the time.
        let mut hours = vec![p::FIRST_BLAST_HOURS];
        if rng.gen_bool(p::SECOND_BLAST_PROB) {
            hours.push(p::SECOND_BLAST_HOURS);
        }
        for h in hours {
            let t0 = clock(ds, rng.gen_range(h) * HOUR_MS + rng.gen_range(0..HOUR_MS));
            let span = *active(&net.chain, t0);
            self.blast(k, &span, t0, p::BLAST_REACH, rng, out);
        }
        // A new number announces itself to the old list.
        for span in net.chain.iter().filter(|s| s.pred.is_some()) {
            if (ds..de).contains(&span.start) {
                let t0 = span.start + rng.gen_range(p::NEW_NUMBER_AFTER_MS);
                self.blast(k, span, t0, p::NEW_NUMBER_REACH, rng, out);
            }
        }

        // Customers ring or text in; the line often texts back.
        let mut drng = super::rng_for(
            self.w.seed,
            TAG_DELIVERIES ^ (u64::from(d) << 20) ^ k as u64,
        );
        for &(c, per_day) in &net.customers {
            for _ in 0..poisson(rng, per_day as f64) {
                let t = clock(ds, self.customer.sample(rng));
                let span = active(&net.chain, t);
                let mut target = span.line;
                if let Some(old) = span.pred {
                    if t - span.start < p::STRAGGLER_WINDOW_MS && rng.gen_bool(p::STRAGGLER_PROB) {
                        target = old; // still has the old number
                    }
                }
                let ev = if rng.gen_bool(p::DEAL_CALL_SHARE) {
                    let dur = if rng.gen_bool(p::DEAL_CALL_UNANSWERED) {
                        0
                    } else {
                        rng.gen_range(p::DEAL_CALL_S)
                    };
                    self.sub_ev(rng, c, target, t, EvKind::Call, dur)
                } else {
                    self.sub_ev(rng, c, target, t, EvKind::Sms, 0)
                };
                out(ev);
                // A runner in the town delivers: rings the customer a few minutes later.
                // Drawn from its own stream, so the rest of the day is drawn as before.
                if target == span.line && drng.gen_bool(p::RUNNER_DELIVERY_PROB) {
                    let there: Vec<&Runner> = net.runners.iter().filter(|r| r.in_town(t)).collect();
                    if let Some(r) = there.choose(&mut drng) {
                        let tc = t + drng.gen_range(p::RUNNER_DELIVERY_AFTER_MS);
                        let s = active(&r.spans, tc);
                        let cell = self.w.geo.random_cell(&mut drng, net.town);
                        let dur = drng.gen_range(p::RUNNER_DELIVERY_CALL_S);
                        out(Self::line_ev(s, cell, c, tc, EvKind::Call, dur));
                    }
                }
                if target == span.line && rng.gen_bool(p::LINE_REPLY_PROB) {
                    let tr = t + rng.gen_range(p::LINE_REPLY_MS);
                    let cell = town_cell(rng);
                    out(Self::line_ev(span, cell, c, tr, EvKind::Sms, 0));
                }
            }
        }

        // Runners: calls with the line and the controller, between city and town.
        for r in &net.runners {
            let runner_cell = |rng: &mut ChaCha8Rng, t: i64| {
                let area = if r.in_town(t) { net.town } else { METRO };
                self.w.geo.random_cell(rng, area)
            };
            let runner_ev = |rng: &mut ChaCha8Rng, s: &Span, to: u32, t: i64| {
                let dur = self.runner_call.sample(rng).clamp(3.0, 900.0) as u32;
                let cell = runner_cell(rng, t);
                Self::line_ev(s, cell, to, t, EvKind::Call, dur)
            };
            // A new burner SIM rings the line within half an hour of going live.
            // (Not when only the handset changed: the number is the one the line knows.)
            let new_sims = r
                .spans
                .iter()
                .enumerate()
                .filter(|(i, s)| *i == 0 || r.spans[i - 1].sim != s.sim);
            for (_, s) in new_sims.filter(|(_, s)| (ds..de).contains(&s.start)) {
                let t = s.start + rng.gen_range(60_000..30 * 60_000);
                out(runner_ev(rng, s, active(&net.chain, t).line, t));
            }
            for _ in 0..poisson(rng, p::RUNNER_CALLS_TO_LINE) {
                let t = clock(ds, self.customer.sample(rng));
                let s = active(&r.spans, t);
                out(runner_ev(rng, s, active(&net.chain, t).line, t));
            }
            for _ in 0..poisson(rng, p::RUNNER_CALLS_TO_CONTROLLER) {
                let t = clock(ds, self.customer.sample(rng));
                let s = active(&r.spans, t);
                out(runner_ev(rng, s, net.controller, t));
            }
            for _ in 0..poisson(rng, p::LINE_CALLS_TO_RUNNER) {
                let t = clock(ds, self.customer.sample(rng));
                let line = active(&net.chain, t);
                let runner_line = active(&r.spans, t).line;
                let dur = self.runner_call.sample(rng).clamp(3.0, 900.0) as u32;
                let cell = town_cell(rng);
                out(Self::line_ev(line, cell, runner_line, t, EvKind::Call, dur));
            }
        }
    }

    fn businesses(&mut self, d: u32, rng: &mut ChaCha8Rng, out: &mut dyn FnMut(Ev)) {
        let ds = self.w.day_start(d);
        let t0 = clock(ds, p::BUSINESS_SEND_HOUR * HOUR_MS);
        if weekday(t0) == 6 {
            return; // closed on Sunday
        }
        // Taken out for the loop, which also borrows `self` to make the clients' records.
        let mut all_reminded = std::mem::take(&mut self.reminded);
        for (b, reminded) in self.w.businesses.iter().zip(all_reminded.iter_mut()) {
            // Today's appointments: clients not reminded within the last few days.
            let mut today = Vec::with_capacity(b.daily);
            let mut tries = 0;
            while today.len() < b.daily && tries < b.daily * 20 {
                tries += 1;
                let k = rng.gen_range(0..b.clientele.len());
                let last = reminded[k];
                if last == u32::MAX || last + p::BUSINESS_REMIND_GAP_DAYS <= d {
                    reminded[k] = d;
                    today.push(b.clientele[k]);
                }
            }
            let span = Span {
                line: b.line,
                sim: b.sim,
                handset: b.handset,
                start: self.w.start,
                end: self.w.end,
                pred: None,
            };
            let mut t = t0;
            for c in today {
                t += rng.gen_range(p::BUSINESS_SEND_STEP_MS);
                out(Self::line_ev(&span, b.cell, c, t, EvKind::Sms, 0));
                if rng.gen_bool(p::BUSINESS_REPLY_PROB) {
                    // Clients answer a reminder later than a friend: ten times the reply delay.
                    let after_s = (self.reply.sample(rng) * 10.0).clamp(60.0, 6.0 * 3600.0);
                    let tr = t + (after_s * 1000.0) as i64;
                    let ev = self.sub_ev(rng, c, b.line, tr, EvKind::Sms, 0);
                    out(ev);
                }
                if rng.gen_bool(p::BUSINESS_CALL_PROB) {
                    let tc = t + rng.gen_range(HOUR_MS..9 * HOUR_MS);
                    let dur = rng.gen_range(p::BUSINESS_CALL_S);
                    let ev = self.sub_ev(rng, c, b.line, tc, EvKind::Call, dur);
                    out(ev);
                }
            }
        }
        self.reminded = all_reminded;
    }

    fn schools(&self, d: u32, rng: &mut ChaCha8Rng, out: &mut dyn FnMut(Ev)) {
        let ds = self.w.day_start(d);
        for s in self.w.schools.iter().filter(|s| s.day == d) {
            let span = Span {
                line: s.line,
                sim: s.sim,
                handset: s.handset,
                start: self.w.start,
                end: self.w.end,
                pred: None,
            };
            let mut t = clock(ds, rng.gen_range(p::SCHOOL_SEND_MS));
            for &parent in &s.parents {
                t += rng.gen_range(p::SCHOOL_SEND_STEP_MS);
                out(Self::line_ev(&span, s.cell, parent, t, EvKind::Sms, 0));
                if rng.gen_bool(p::SCHOOL_REPLY_PROB) {
                    let after = self.reply.sample(rng).clamp(30.0, 7200.0);
                    let ev = self.sub_ev(
                        rng,
                        parent,
                        s.line,
                        t + (after * 1000.0) as i64,
                        EvKind::Sms,
                        0,
                    );
                    out(ev);
                }
            }
        }
    }

    fn shops(&self, d: u32, rng: &mut ChaCha8Rng, out: &mut dyn FnMut(Ev)) {
        let ds = self.w.day_start(d);
        if weekday(clock(ds, 12 * HOUR_MS)) == 6 {
            return;
        }
        for shop in &self.w.shops {
            let locals = &self.w.by_area[shop.area as usize];
            if locals.is_empty() {
                continue;
            }
            let n = rng.gen_range(p::REPAIR_DAILY).min(locals.len());
            for k in rand::seq::index::sample(rng, locals.len(), n) {
                let c = locals[k];
                let h = rng.gen_range(p::REPAIR_HOURS);
                let t = clock(ds, h * HOUR_MS + rng.gen_range(0..HOUR_MS));
                // The customer's own SIM, in the shop's test handset, calling the shop.
                let (sim, _) = self.w.kit(c, t);
                let test = |ts: i64, kind: EvKind, dur: u32| Ev {
                    ts,
                    from: c,
                    to: shop.line,
                    sim,
                    handset: shop.test_handset,
                    cell: shop.cell,
                    dur,
                    kind,
                };
                out(test(t, EvKind::Call, rng.gen_range(p::REPAIR_CALL_S)));
                if rng.gen_bool(p::REPAIR_TEST_SMS_PROB) {
                    out(test(t + rng.gen_range(10_000..120_000), EvKind::Sms, 0));
                }
            }
        }
    }

    fn festive(&self, rng: &mut ChaCha8Rng, out: &mut dyn FnMut(Ev)) {
        let midnight = self.w.festive_midnight();
        for &i in &self.w.festive {
            let friends = self.w.friends(i);
            let list = &friends[..friends.len().min(p::FESTIVE_MAX_FRIENDS)];
            let t0 = midnight + rng.gen_range(p::FESTIVE_START_MS);
            let step = rng.gen_range(p::FESTIVE_SPREAD_MS) / list.len().max(1) as i64;
            for (n, &f) in list.iter().enumerate() {
                let t = t0 + n as i64 * step + rng.gen_range(0..step.max(1));
                out(self.sub_ev(rng, i, f, t, EvKind::Sms, 0));
                if rng.gen_bool(p::FESTIVE_REPLY_PROB) {
                    let after = self
                        .festive_reply
                        .sample(rng)
                        .clamp(20.0, p::FESTIVE_REPLY_MAX_S);
                    out(self.sub_ev(rng, f, i, t + (after * 1000.0) as i64, EvKind::Sms, 0));
                }
            }
        }
    }
}
