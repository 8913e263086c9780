//! The synthetic city: areas and cells, subscribers and their social graph, deal networks
//! and look-alikes. All of it is decided once from the seed, before any traffic is made, so
//! the identities (and the labels) are fixed whatever the traffic does.
//!
//! Identities are dense `u32` indices per kind (line, SIM, handset); the ordinary subscriber
//! `i` starts as line `i`, SIM `i` and handset `i`, and every other identity (deal lines,
//! burners, businesses, replacement SIMs) is allocated after them. Pseudonyms are made from
//! the indices only when a record is written.

use std::collections::HashSet;
use std::ops::Range;

use rand::seq::{index, SliceRandom};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};

use super::params as p;
use super::{rng_for, GenOptions, DAY_MS, HOUR_MS};

/// "No identity / no cell".
pub(crate) const NONE: u32 = u32::MAX;

/// Metro (exporting city) or county town.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AreaClass {
    Metro,
    County,
}

impl AreaClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AreaClass::Metro => "metro",
            AreaClass::County => "county",
        }
    }
}

pub(crate) struct Area {
    pub name: String,
    pub class: AreaClass,
    pub cells: Range<u32>,
}

/// Areas and cells; depends only on the seed and the population, so `write_cells` can make
/// it without building the whole city.
pub(crate) struct Geography {
    pub areas: Vec<Area>,
    pub cell_names: Vec<String>,
    pub cell_area: Vec<u16>,
    /// Share of the population per area (sums to 1).
    pub shares: Vec<f64>,
}

const TAG_GEO: u64 = 0x67656f;
const TAG_WORLD: u64 = 0x776f726c64;
const TAG_TRIPS: u64 = 0x7472_6970_0000;
const TAG_COMMUTE: u64 = 0x636f_6d6d;
const TAG_SWAPS: u64 = 0x7377_6170_0000_0000;
const TAG_ORGANISERS: u64 = 0x6f72_6761_6e69_7365;

/// Index of the metro area.
pub(crate) const METRO: u16 = 0;

impl Geography {
    pub fn new(opts: &GenOptions) -> Self {
        let mut rng = rng_for(opts.seed, TAG_GEO);
        let towns = (opts.subscribers / p::SUBSCRIBERS_PER_TOWN).clamp(p::MIN_TOWNS, p::MAX_TOWNS);
        let raw: Vec<f64> = (0..towns)
            .map(|_| rng.gen_range(p::TOWN_SIZE_SPREAD))
            .collect();
        let sum: f64 = raw.iter().sum();
        let mut shares = vec![p::METRO_SHARE];
        shares.extend(raw.iter().map(|w| (1.0 - p::METRO_SHARE) * w / sum));
        let mut areas = Vec::with_capacity(shares.len());
        let (mut cell_names, mut cell_area) = (Vec::new(), Vec::new());
        for (a, share) in shares.iter().enumerate() {
            let pop = (opts.subscribers as f64 * share) as usize;
            let (class, min, name) = if a == METRO as usize {
                (AreaClass::Metro, p::MIN_CELLS_METRO, "metro".to_string())
            } else {
                (AreaClass::County, p::MIN_CELLS_TOWN, format!("town{a:02}"))
            };
            let n = (pop / p::SUBSCRIBERS_PER_CELL).max(min);
            let first = cell_names.len() as u32;
            for c in 0..n {
                cell_names.push(format!("C{a:02}{c:04}"));
                cell_area.push(a as u16);
            }
            areas.push(Area {
                name,
                class,
                cells: first..first + n as u32,
            });
        }
        Geography {
            areas,
            cell_names,
            cell_area,
            shares,
        }
    }

    pub fn cell_class(&self, cell: u32) -> AreaClass {
        self.areas[self.cell_area[cell as usize] as usize].class
    }

    pub fn random_cell(&self, rng: &mut ChaCha8Rng, area: u16) -> u32 {
        rng.gen_range(self.areas[area as usize].cells.clone())
    }
}

/// One ordinary subscriber.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sub {
    pub area: u16,
    pub home_cell: u32,
    pub day_cell: u32,
    /// Records originated per day (before the weekday factor).
    pub rate: f32,
    /// When the subscriber changes handset or SIM (i64::MAX: never), and to what.
    pub change_at: i64,
    pub new_sim: u32,
    pub new_handset: u32,
}

/// A line's life: one number on one SIM in one handset for a span of event time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub line: u32,
    pub sim: u32,
    pub handset: u32,
    pub start: i64,
    pub end: i64,
    pub pred: Option<u32>,
}

/// The span of `spans` (contiguous, in order) active at `t`.
pub(crate) fn active(spans: &[Span], t: i64) -> &Span {
    let i = spans.partition_point(|s| s.end <= t);
    &spans[i.min(spans.len() - 1)]
}

pub(crate) struct Runner {
    pub spans: Vec<Span>,
    /// Trips to the network's town, `[start, end)` in event time, in order; in the city
    /// between them.
    pub trips: Vec<(i64, i64)>,
}

impl Runner {
    /// Whether the runner is in the town at `t`.
    pub fn in_town(&self, t: i64) -> bool {
        let i = self.trips.partition_point(|tr| tr.1 <= t);
        self.trips.get(i).is_some_and(|tr| tr.0 <= t)
    }
}

pub(crate) struct Network {
    pub town: u16,
    /// The cell the line holder mostly uses.
    pub base_cell: u32,
    pub chain: Vec<Span>,
    pub handsets: Vec<u32>,
    /// Customers (subscriber indices) and their contacts per day.
    pub customers: Vec<(u32, f32)>,
    pub runners: Vec<Runner>,
    /// A metro subscriber the runners report to.
    pub controller: u32,
}

pub(crate) struct Business {
    pub line: u32,
    pub sim: u32,
    pub handset: u32,
    pub cell: u32,
    pub daily: usize,
    pub clientele: Vec<u32>,
}

pub(crate) struct School {
    pub line: u32,
    pub sim: u32,
    pub handset: u32,
    pub cell: u32,
    pub parents: Vec<u32>,
    pub day: u32,
}

pub(crate) struct Shop {
    /// The shop's own number, which test calls ring.
    pub line: u32,
    /// The test handset customers' SIMs go into.
    pub test_handset: u32,
    pub area: u16,
    pub cell: u32,
}

/// Identity kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdKind {
    Line,
    Handset,
}

/// One row of the labels file.
pub(crate) struct LabelRow {
    pub kind: IdKind,
    pub id: u32,
    pub label: &'static str,
    pub group: String,
    pub predecessor: Option<u32>,
}

/// Allocates identities after the ordinary subscribers'.
struct Alloc {
    lines: u32,
    sims: u32,
    handsets: u32,
}

impl Alloc {
    fn line(&mut self) -> u32 {
        self.lines += 1;
        self.lines - 1
    }
    fn sim(&mut self) -> u32 {
        self.sims += 1;
        self.sims - 1
    }
    fn handset(&mut self) -> u32 {
        self.handsets += 1;
        self.handsets - 1
    }
}

pub(crate) struct World {
    pub seed: u64,
    /// Whether look-alikes are labelled (commuters are in the traffic either way).
    pub lookalikes: bool,
    pub geo: Geography,
    pub start: i64,
    pub end: i64,
    pub days: u32,
    pub subs: Vec<Sub>,
    adj_off: Vec<u32>,
    adj: Vec<u32>,
    pub by_area: Vec<Vec<u32>>,
    pub networks: Vec<Network>,
    pub businesses: Vec<Business>,
    pub schools: Vec<School>,
    pub shops: Vec<Shop>,
    /// Festive texters (subscriber indices) and the day whose midnight they text at.
    pub festive: Vec<u32>,
    pub festive_day: u32,
    /// Club organisers (opt-in, [`GenOptions::organisers`]).
    pub organisers: Vec<Organiser>,
    pub n_lines: u32,
    pub n_handsets: u32,
}

/// A club organiser: an ordinary subscriber who texts the same members on set evenings.
pub struct Organiser {
    pub sub: u32,
    pub members: Vec<u32>,
    /// The days it texts them.
    pub days: Vec<u32>,
    /// The hour (UTC) it starts.
    pub hour: i64,
}

fn lognormal(median: f64, sigma: f64) -> LogNormal<f64> {
    // Medians and sigmas are the positive constants of `params`, so this cannot fail.
    LogNormal::new(median.ln(), sigma).expect("valid lognormal parameters")
}

/// `count` distinct subscribers, `local_share` of them from `local` where it has enough.
fn pick_distinct(
    rng: &mut ChaCha8Rng,
    local: &[u32],
    everyone: usize,
    count: usize,
    local_share: f64,
) -> Vec<u32> {
    let count = count.min(everyone);
    let n_local = ((count as f64 * local_share).round() as usize).min(local.len());
    let mut out: Vec<u32> = index::sample(rng, local.len(), n_local)
        .into_iter()
        .map(|i| local[i])
        .collect();
    let mut seen: HashSet<u32> = out.iter().copied().collect();
    while out.len() < count {
        let s = rng.gen_range(0..everyone as u32);
        if seen.insert(s) {
            out.push(s);
        }
    }
    out
}

impl World {
    pub fn new(opts: &GenOptions) -> World {
        let geo = Geography::new(opts);
        let mut rng = rng_for(opts.seed, TAG_WORLD);
        let n = opts.subscribers;
        let start = opts.start_ms;
        let end = start + opts.days as i64 * DAY_MS;

        // Where people live, where they spend the day, how busy they are.
        let cum: Vec<f64> = geo
            .shares
            .iter()
            .scan(0.0, |acc, s| {
                *acc += s;
                Some(*acc)
            })
            .collect();
        let rate = lognormal(p::ORIGINATED_MEDIAN_PER_DAY, p::ORIGINATED_SIGMA);
        let mut subs = Vec::with_capacity(n);
        let mut by_area: Vec<Vec<u32>> = vec![Vec::new(); geo.areas.len()];
        for i in 0..n {
            let x = rng.gen::<f64>() * cum[cum.len() - 1];
            let area = cum.partition_point(|c| *c <= x).min(cum.len() - 1) as u16;
            let home_cell = geo.random_cell(&mut rng, area);
            let day_cell = if rng.gen_bool(p::COMMUTER_SHARE) {
                geo.random_cell(&mut rng, METRO)
            } else {
                geo.random_cell(&mut rng, area)
            };
            by_area[area as usize].push(i as u32);
            subs.push(Sub {
                area,
                home_cell,
                day_cell,
                rate: rate.sample(&mut rng) as f32,
                change_at: i64::MAX,
                new_sim: i as u32,
                new_handset: i as u32,
            });
        }
        let mut alloc = Alloc {
            lines: n as u32,
            sims: n as u32,
            handsets: n as u32,
        };
        // A few ordinary handset and SIM changes: one each, never burner-like.
        for (i, s) in subs.iter_mut().enumerate() {
            let new_handset = rng.gen_bool(p::HANDSET_CHANGE_SHARE);
            let new_sim = rng.gen_bool(p::SIM_CHANGE_SHARE);
            if new_handset || new_sim {
                s.change_at = rng.gen_range(start..end);
                s.new_handset = if new_handset {
                    alloc.handset()
                } else {
                    i as u32
                };
                s.new_sim = if new_sim { alloc.sim() } else { i as u32 };
            }
        }

        let (adj_off, adj) = social_graph(&mut rng, &subs, &by_area);
        // Reverse commuters from their own stream, so the rest of the city is drawn as before.
        let mut crng = rng_for(opts.seed, TAG_COMMUTE);
        for s in subs.iter_mut().filter(|s| s.area == METRO) {
            if crng.gen_bool(p::REVERSE_COMMUTER_SHARE) {
                let town = crng.gen_range(1..geo.areas.len() as u16);
                s.day_cell = geo.random_cell(&mut crng, town);
            }
        }
        let mut world = World {
            seed: opts.seed,
            lookalikes: opts.lookalikes,
            geo,
            start,
            end,
            days: opts.days,
            subs,
            adj_off,
            adj,
            by_area,
            networks: Vec::new(),
            businesses: Vec::new(),
            schools: Vec::new(),
            shops: Vec::new(),
            festive: Vec::new(),
            festive_day: opts.days / 2,
            organisers: Vec::new(),
            n_lines: 0,
            n_handsets: 0,
        };
        let networks = opts
            .networks
            .unwrap_or((n / p::SUBSCRIBERS_PER_NETWORK).max(p::MIN_NETWORKS));
        for _ in 0..networks {
            let net = world.network(&mut rng, &mut alloc);
            world.networks.push(net);
        }
        if opts.lookalikes {
            world.lookalikes(&mut rng, &mut alloc);
        }
        // From a stream of their own: a city with organisers is the same city otherwise.
        world.choose_organisers(opts.organisers);
        world.n_lines = alloc.lines;
        world.n_handsets = alloc.handsets;
        world
    }

    /// The subscriber's contacts, favourites first.
    pub fn friends(&self, i: u32) -> &[u32] {
        let i = i as usize;
        &self.adj[self.adj_off[i] as usize..self.adj_off[i + 1] as usize]
    }

    /// The subscriber's SIM and handset at `t`.
    pub fn kit(&self, i: u32, t: i64) -> (u32, u32) {
        let s = &self.subs[i as usize];
        if t >= s.change_at {
            (s.new_sim, s.new_handset)
        } else {
            (i, i)
        }
    }

    fn county_town(&self, rng: &mut ChaCha8Rng) -> u16 {
        rng.gen_range(1..self.geo.areas.len() as u16)
    }

    /// A chain of numbers from the start to the end of the data: the first lives
    /// `first_life` days, each next one `life`; at each change `new_handset` says whether the
    /// next number moves to a new handset. Deal lines and runners both live like this.
    fn number_chain(
        &self,
        rng: &mut ChaCha8Rng,
        alloc: &mut Alloc,
        first_life: Range<f64>,
        life: Range<f64>,
        mut new_handset: impl FnMut(&mut ChaCha8Rng) -> bool,
    ) -> Vec<Span> {
        let mut handset = alloc.handset();
        let mut spans = Vec::new();
        let (mut t0, mut pred, mut days) = (self.start, None, first_life);
        loop {
            let mut t1 = t0 + (rng.gen_range(days) * DAY_MS as f64) as i64;
            let last = t1 >= self.end - p::LAST_SWAP_BEFORE_END_MS;
            if last {
                t1 = self.end;
            }
            let line = alloc.line();
            spans.push(Span {
                line,
                sim: alloc.sim(),
                handset,
                start: t0,
                end: t1,
                pred,
            });
            if last {
                return spans;
            }
            (t0, pred, days) = (t1, Some(line), life.clone());
            if new_handset(rng) {
                handset = alloc.handset();
            }
        }
    }

    fn network(&self, rng: &mut ChaCha8Rng, alloc: &mut Alloc) -> Network {
        let n = self.subs.len();
        let town = self.county_town(rng);
        let size = (lognormal(p::CUSTOMERS_MEDIAN, p::CUSTOMERS_SIGMA).sample(rng) as usize)
            .clamp(p::CUSTOMERS_MIN, p::CUSTOMERS_MAX)
            .min(n / 4);
        let per_day = lognormal(p::CUSTOMER_CONTACTS_WEEK_MEDIAN, p::CUSTOMER_CONTACTS_SIGMA);
        let customers = pick_distinct(
            rng,
            &self.by_area[town as usize],
            n,
            size,
            p::CUSTOMER_LOCAL_SHARE,
        )
        .into_iter()
        .map(|c| (c, (per_day.sample(rng) / 7.0) as f32))
        .collect();

        // The number chain: replaced every 1-3 days, usually in the same handset.
        let chain = self.number_chain(
            rng,
            alloc,
            p::FIRST_LINE_LIFE_DAYS,
            p::LINE_LIFE_DAYS,
            |rng| !rng.gen_bool(p::SAME_HANDSET_PROB),
        );
        let mut handsets: Vec<u32> = chain.iter().map(|s| s.handset).collect();
        handsets.dedup();

        // Runners: burner handsets, a new SIM (and number) every day or so.
        let runners = (0..rng.gen_range(p::RUNNERS))
            .map(|_| {
                let spans = self.number_chain(
                    rng,
                    alloc,
                    p::FIRST_RUNNER_SIM_DAYS,
                    p::RUNNER_SIM_DAYS,
                    |rng| rng.gen_bool(p::RUNNER_NEW_HANDSET_PROB),
                );
                let spans = self.keep_sim_on_new_handsets(spans);
                let out_hour = rng.gen_range(p::RUNNER_OUT_HOURS);
                let away_hours = rng.gen_range(p::RUNNER_AWAY_HOURS);
                // Later trips from their own stream, so the rest of the city is drawn as
                // before.
                let mut trng = rng_for(self.seed, TAG_TRIPS ^ u64::from(spans[0].handset));
                let mut trips = Vec::new();
                let mut t = clock(self.start, out_hour * HOUR_MS);
                let mut len = away_hours * HOUR_MS;
                while t < self.end {
                    trips.push((t, t + len));
                    let city = (trng.gen_range(p::RUNNER_CITY_HOURS) * HOUR_MS as f64) as i64;
                    t += len + city;
                    len = (trng.gen_range(p::RUNNER_TRIP_HOURS) * HOUR_MS as f64) as i64;
                }
                Runner { spans, trips }
            })
            .collect();
        let metro = &self.by_area[METRO as usize];
        let controller = if metro.is_empty() {
            rng.gen_range(0..n as u32)
        } else {
            metro[rng.gen_range(0..metro.len())]
        };
        Network {
            town,
            base_cell: self.geo.random_cell(rng, town),
            chain,
            handsets,
            customers,
            runners,
            controller,
        }
    }

    /// A runner's handset is mostly replaced on its own (broken, lost, taken in a stop) and
    /// the SIM goes into the new one: the number is what the line and the runner's contacts
    /// know. Only [`p::RUNNER_BURN_BOTH_PROB`] of the replacements burn handset and SIM
    /// together. `number_chain` makes every replacement a burn of both at a SIM change;
    /// here the others move to a moment within the previous SIM's life, on that SIM. Drawn
    /// from a stream of its own, so the rest of the city is drawn as before.
    fn keep_sim_on_new_handsets(&self, spans: Vec<Span>) -> Vec<Span> {
        let mut rng = rng_for(self.seed, TAG_SWAPS ^ u64::from(spans[0].handset));
        let mut out: Vec<Span> = Vec::with_capacity(spans.len() + 2);
        for s in spans {
            let prev = out.last().copied();
            match prev {
                Some(prev)
                    if prev.handset != s.handset && !rng.gen_bool(p::RUNNER_BURN_BOTH_PROB) =>
                {
                    // The old SIM goes into the new handset somewhere in its last stretch.
                    let len = prev.end - prev.start;
                    let at = prev.start + (len as f64 * rng.gen_range(0.2..0.9)) as i64;
                    if let Some(last) = out.last_mut() {
                        last.end = at;
                    }
                    out.push(Span {
                        handset: s.handset,
                        start: at,
                        ..prev
                    });
                    out.push(s);
                }
                _ => out.push(s),
            }
        }
        out
    }

    fn lookalikes(&mut self, rng: &mut ChaCha8Rng, alloc: &mut Alloc) {
        let n = self.subs.len();
        for _ in 0..(n / p::SUBSCRIBERS_PER_BUSINESS).max(1) {
            let area = self.subs[rng.gen_range(0..n)].area;
            let daily = rng.gen_range(p::BUSINESS_DAILY).min(n / 20);
            let clientele = pick_distinct(
                rng,
                &self.by_area[area as usize],
                n,
                daily * p::BUSINESS_CLIENTELE_FACTOR,
                p::LOCAL_SHARE,
            );
            self.businesses.push(Business {
                line: alloc.line(),
                sim: alloc.sim(),
                handset: alloc.handset(),
                cell: self.geo.random_cell(rng, area),
                daily,
                clientele,
            });
        }
        for _ in 0..(n / p::SUBSCRIBERS_PER_SCHOOL).max(1) {
            let area = self.county_town(rng);
            let size = rng.gen_range(p::SCHOOL_PARENTS).min(n / 4);
            let parents = pick_distinct(rng, &self.by_area[area as usize], n, size, 0.9);
            self.schools.push(School {
                line: alloc.line(),
                sim: alloc.sim(),
                handset: alloc.handset(),
                cell: self.geo.random_cell(rng, area),
                parents,
                day: rng.gen_range(0..self.days),
            });
        }
        for _ in 0..(n / p::SUBSCRIBERS_PER_REPAIR).max(1) {
            let area = self.subs[rng.gen_range(0..n)].area;
            self.shops.push(Shop {
                line: alloc.line(),
                test_handset: alloc.handset(),
                area,
                cell: self.geo.random_cell(rng, area),
            });
        }
        let candidates: Vec<u32> = (0..n as u32)
            .filter(|&i| self.friends(i).len() >= p::FESTIVE_MIN_FRIENDS)
            .collect();
        let want = ((n as f64 * p::FESTIVE_SHARE).round() as usize).min(candidates.len());
        self.festive = index::sample(rng, candidates.len(), want)
            .into_iter()
            .map(|i| candidates[i])
            .collect();
        self.festive.sort_unstable();
    }

    /// `want` ordinary subscribers (neither a network's customer nor a festive texter, so
    /// each subject has one label) who run a club, each with its members (any other
    /// subscribers), its evenings and its hour.
    fn choose_organisers(&mut self, want: usize) {
        if want == 0 {
            return;
        }
        let mut rng = rng_for(self.seed, TAG_ORGANISERS);
        let n = self.subs.len();
        let mut taken: HashSet<u32> = self.festive.iter().copied().collect();
        for net in &self.networks {
            taken.extend(net.customers.iter().map(|c| c.0));
        }
        let candidates: Vec<u32> = (0..n as u32).filter(|i| !taken.contains(i)).collect();
        let chosen = index::sample(&mut rng, candidates.len(), want.min(candidates.len()));
        for k in chosen {
            let sub = candidates[k];
            let size = rng.gen_range(p::ORGANISER_MEMBERS).min(n - 1);
            let members: Vec<u32> = index::sample(&mut rng, n, (size + 1).min(n))
                .into_iter()
                .map(|m| m as u32)
                .filter(|&m| m != sub)
                .take(size)
                .collect();
            // Two evenings a week: two days apart, then five (Tuesday and Thursday, say).
            let mut days = Vec::new();
            let mut d = rng.gen_range(0..2u32);
            while d < self.days {
                days.push(d);
                d += if days.len() % 2 == 1 { 2 } else { 5 };
            }
            self.organisers.push(Organiser {
                sub,
                members,
                days,
                hour: rng.gen_range(p::ORGANISER_HOURS),
            });
        }
        self.organisers.sort_unstable_by_key(|o| o.sub);
    }

    /// Every labelled subject, in a fixed order.
    pub fn labels(&self) -> Vec<LabelRow> {
        let mut rows = Vec::new();
        let row = |kind, id, label, group: &str, predecessor| LabelRow {
            kind,
            id,
            label,
            group: group.to_string(),
            predecessor,
        };
        for (k, net) in self.networks.iter().enumerate() {
            let g = format!("net{:03}", k + 1);
            for s in &net.chain {
                rows.push(row(IdKind::Line, s.line, "deal_line", &g, s.pred));
            }
            for &h in &net.handsets {
                rows.push(row(IdKind::Handset, h, "deal_handset", &g, None));
            }
            let (mut seen, mut lines) = (HashSet::new(), HashSet::new());
            for r in &net.runners {
                for s in &r.spans {
                    // A line moved to a new handset has two spans: one row.
                    if lines.insert(s.line) {
                        rows.push(row(IdKind::Line, s.line, "runner_line", &g, s.pred));
                    }
                    if seen.insert(s.handset) {
                        rows.push(row(IdKind::Handset, s.handset, "runner_handset", &g, None));
                    }
                }
            }
        }
        for (k, b) in self.businesses.iter().enumerate() {
            let g = format!("biz{:03}", k + 1);
            rows.push(row(IdKind::Line, b.line, "lookalike_business", &g, None));
        }
        for (k, s) in self.schools.iter().enumerate() {
            let g = format!("school{:03}", k + 1);
            rows.push(row(IdKind::Line, s.line, "lookalike_school", &g, None));
        }
        for (k, s) in self.shops.iter().enumerate() {
            let g = format!("shop{:03}", k + 1);
            rows.push(row(
                IdKind::Handset,
                s.test_handset,
                "lookalike_repair_handset",
                &g,
                None,
            ));
        }
        for &f in &self.festive {
            rows.push(row(IdKind::Line, f, "lookalike_festive", "festive", None));
        }
        for (k, o) in self.organisers.iter().enumerate() {
            let g = format!("club{:03}", k + 1);
            rows.push(row(IdKind::Line, o.sub, "lookalike_organiser", &g, None));
        }
        // Commuters between metro and county: their handsets (both, if changed).
        for (i, s) in self.subs.iter().enumerate().filter(|_| self.lookalikes) {
            if self.geo.cell_class(s.home_cell) != self.geo.cell_class(s.day_cell) {
                let g = "commuter";
                rows.push(row(
                    IdKind::Handset,
                    i as u32,
                    "lookalike_commuter",
                    g,
                    None,
                ));
                if s.new_handset != i as u32 {
                    let h = s.new_handset;
                    rows.push(row(IdKind::Handset, h, "lookalike_commuter", g, None));
                }
            }
        }
        rows
    }

    /// Event time of the festive midnight.
    pub fn festive_midnight(&self) -> i64 {
        clock(self.day_start(self.festive_day), 0)
    }

    pub fn day_start(&self, d: u32) -> i64 {
        self.start + d as i64 * DAY_MS
    }
}

/// The first instant at or after `day_start` whose clock time of day is `clock_ms`.
pub(crate) fn clock(day_start: i64, clock_ms: i64) -> i64 {
    day_start + (clock_ms - day_start.rem_euclid(DAY_MS)).rem_euclid(DAY_MS)
}

/// Clock hour of `t` (UTC).
pub(crate) fn hour_of(t: i64) -> i64 {
    t.rem_euclid(DAY_MS) / HOUR_MS
}

/// Day of week of `t`, Monday = 0.
pub(crate) fn weekday(t: i64) -> i64 {
    // 1970-01-01 was a Thursday.
    (t.div_euclid(DAY_MS) + 3).rem_euclid(7)
}

/// A local-heavy graph with heavy-tailed degrees (Chung-Lu within and across areas): each
/// subscriber draws half its target circle, partners chosen in proportion to their own
/// target, so expected degrees match the targets. Returned as CSR, each list shuffled so
/// the "favourites" (front of the list) are random.
fn social_graph(rng: &mut ChaCha8Rng, subs: &[Sub], by_area: &[Vec<u32>]) -> (Vec<u32>, Vec<u32>) {
    let n = subs.len();
    let circle = lognormal(p::CIRCLE_MEDIAN, p::CIRCLE_SIGMA);
    let target: Vec<f64> = (0..n)
        .map(|_| (circle.sample(rng).round() as usize).clamp(p::CIRCLE_MIN, p::CIRCLE_MAX) as f64)
        .collect();
    let prefix = |members: &mut dyn Iterator<Item = u32>| -> Vec<f64> {
        let mut acc = 0.0;
        members
            .map(|i| {
                acc += target[i as usize];
                acc
            })
            .collect()
    };
    let area_cum: Vec<Vec<f64>> = by_area
        .iter()
        .map(|m| prefix(&mut m.iter().copied()))
        .collect();
    let all_cum = prefix(&mut (0..n as u32));
    let pick = |rng: &mut ChaCha8Rng, cum: &[f64]| -> usize {
        let x = rng.gen::<f64>() * cum[cum.len() - 1];
        cum.partition_point(|c| *c <= x).min(cum.len() - 1)
    };
    let mut edges: Vec<(u32, u32)> = Vec::with_capacity(n * p::CIRCLE_MEDIAN as usize * 2);
    for (i, s) in subs.iter().enumerate() {
        let picks = (target[i] / 2.0).round().max(1.0) as usize;
        for _ in 0..picks {
            let area = &by_area[s.area as usize];
            let j = if rng.gen_bool(p::LOCAL_SHARE) && area.len() > 1 {
                area[pick(rng, &area_cum[s.area as usize])]
            } else {
                pick(rng, &all_cum) as u32
            };
            if j as usize != i {
                edges.push((i as u32, j));
                edges.push((j, i as u32));
            }
        }
    }
    edges.sort_unstable();
    edges.dedup();
    let mut off = vec![0u32; n + 1];
    for &(a, _) in &edges {
        off[a as usize + 1] += 1;
    }
    for i in 0..n {
        off[i + 1] += off[i];
    }
    let mut adj: Vec<u32> = edges.into_iter().map(|(_, b)| b).collect();
    for i in 0..n {
        adj[off[i] as usize..off[i + 1] as usize].shuffle(rng);
    }
    (off, adj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> World {
        World::new(&GenOptions {
            subscribers: 3_000,
            days: 3,
            ..GenOptions::default()
        })
    }

    #[test]
    fn circles_are_local_heavy_and_heavy_tailed() {
        let w = small();
        let (mut local, mut total, mut big) = (0usize, 0usize, 0usize);
        for i in 0..w.subs.len() as u32 {
            let f = w.friends(i);
            total += f.len();
            local += f
                .iter()
                .filter(|&&j| w.subs[j as usize].area == w.subs[i as usize].area)
                .count();
            big += usize::from(f.len() >= 50);
        }
        let share = local as f64 / total as f64;
        assert!((0.7..0.95).contains(&share), "local share {share}");
        let mean = total as f64 / w.subs.len() as f64;
        assert!((8.0..25.0).contains(&mean), "mean circle {mean}");
        assert!(big > 0, "no large circles: the tail is missing");
    }

    #[test]
    fn chains_are_contiguous_and_cover_the_run() {
        let w = small();
        for net in &w.networks {
            assert_eq!(net.chain[0].start, w.start);
            assert_eq!(net.chain.last().unwrap().end, w.end);
            for pair in net.chain.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert_eq!(pair[1].pred, Some(pair[0].line));
            }
            assert!(net.customers.len() >= p::CUSTOMERS_MIN.min(w.subs.len() / 4));
        }
    }

    #[test]
    fn clock_and_weekday() {
        let start = super::super::DEFAULT_START_MS; // Monday 2026-10-05T00:00Z
        assert_eq!(weekday(start), 0);
        assert_eq!(clock(start, 8 * HOUR_MS), start + 8 * HOUR_MS);
        // From mid-day, 08:00 is tomorrow's.
        assert_eq!(
            clock(start + 9 * HOUR_MS, 8 * HOUR_MS),
            start + DAY_MS + 8 * HOUR_MS
        );
        assert_eq!(hour_of(start + 13 * HOUR_MS + 5), 13);
    }
}
