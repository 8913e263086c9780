//! `runner_movement`: a handset going back and forth between metro and county cells, at
//! times and with a rhythm unlike commuting, and tied to the trade.
//!
//! County lines are defined by movement: runners carry drugs and cash between the city hub
//! and the towns a line serves. Commuters travel between a city and a town too, every
//! working day, so movement alone is not enough. Three things are asked, within
//! `window_s`:
//!
//! 1. **Back and forth**: the handset's records change between metro and county cells at
//!    least `min_switches` times (2: there and back).
//! 2. **Unlike commuting**: in *both* classes the handset was seen at night (a record
//!    between `night_start_hour` and `night_end_hour`) or in more than `max_commute_hours`
//!    different clock hours of the day. A commuter is seen in the other class only in
//!    working hours; a runner sleeps in the trap house for a night or days, works the
//!    evening there, and is at home between trips.
//! 3. **Tied to the trade**: it contacted a line that carries a `deal_line` verdict or a
//!    `line_handover` (evidence the engine's other detectors made), or it held at least
//!    `churn_min_sims` SIMs (burner churn).
//!
//! A runner's handset is replaced now and then; when the runner's SIM goes into the new
//! handset (the number the line knows), the new handset takes the old one's history over:
//! the movement is the person's, and a handset that lives hours, inside one trip, is seen
//! moving through the SIM it took over. When it fires, the earlier handsets it took over
//! from (within the window) are named too, each in a finding of its own: they were the
//! runner's (what a restriction order or a records request lists).
//!
//! It needs the cell map (`--cells`): without one it does nothing and holds nothing.
//! Records without a `cell`, and cells the map does not list, are counted by the engine
//! and skipped here. The subject is the handset; `related` holds the lines it carried;
//! `lines` (for `deal_line`) the trade lines it is tied to, so a line's verdict names its
//! runners.
//!
//! State: nearly every handset stays in one class, and costs one inline stay (16 bytes plus
//! the table slot). Only a handset seen in both classes gets its history of stays, SIMs,
//! lines and contacts, each list bounded. A handset silent for the window, and a young
//! SIM's note after a day, expire lazily: gone to every read at once, removed from memory
//! at the next purge (see `Sweeps`), so a sweep walks only the moving handsets.

use std::collections::hash_map::Entry;

use serde::{Deserialize, Serialize};

use super::{Ctx, Detector, EventIds, StateStats};
use crate::alert::{Finding, SubjectKind};
use crate::cells::{CellClass, CellMap};
use crate::checkpoint::codec;
use crate::config::{Config, RunnerConfig};
use crate::event::{Event, Millis};
use crate::evidence;
use crate::exchange::{Body, Dest, Evidence, Role, Sent};
use crate::ids::{self, IdMap};
use crate::probemap::ProbeMap;

pub const NAME: &str = "runner_movement";

const METRO: u8 = 0;
const COUNTY: u8 = 1;
/// SIMs, carried lines and contacted lines remembered per moving handset: a runner has a
/// few of each in a window; more only pushes the stalest out.
const MAX_SIMS: usize = 8;
const MAX_LINES: usize = 8;
const MAX_CONTACTED: usize = 16;
/// Moving handsets remembered per trade line (for a whole burn's link): a line's runners,
/// and the few commuting customers who call it; more only pushes the stalest out.
const MAX_AT_LINE: usize = 16;

/// An id hash and a time in 12 bytes (a `(u64, u32)` takes 16): the moving handsets' SIM
/// and contact lists are most of what the detector holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    id: [u32; 2],
    at: u32,
}

impl Seen {
    fn new(id: u64, at: u32) -> Self {
        Seen {
            id: [id as u32, (id >> 32) as u32],
            at,
        }
    }

    fn id(&self) -> u64 {
        u64::from(self.id[0]) | u64::from(self.id[1]) << 32
    }
}

/// A handset's pseudonym as an arrival carries it to the SIM's shard and the young-handset
/// list keeps it: inline, no allocation (see [`Name`]). Every handset new to the detector
/// sends one ([`Body::HandsetArrived`]), and the SIM's shard keeps it a day: on the bench mix
/// (a new handset in two records of five) the two allocations and two frees per arrival
/// were a third of the detector's added instructions.
pub use crate::exchange::Name;

/// One stay: consecutive records (in event time) in cells of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stay {
    /// Clock hours (UTC) in which it has records, bit `h` for hour `h`.
    hours: u32,
    /// The class (top bit: 1 = county) and area (cell map index) of its first record, in
    /// one word: a slot of the handset table is 32 bytes instead of 40, and the table is
    /// probed for nearly every record.
    place: u32,
    first_s: u32,
    last_s: u32,
}

#[derive(Clone, Copy, Default)]
struct Track {
    /// The only stay, while the handset has been seen in one class. Once it has been seen
    /// in both, no stay: its place is [`MOVING`] and the history is in
    /// [`RunnerMovement::moving`] (the other three words are then left as they were, and a
    /// checkpoint writes the history's floor and bytes in two of them: [`TracksOut`]).
    here: Stay,
}

/// A moving handset's history, and the two words the sweep reads of it without following
/// the box ([`History::floor_s`], [`History::bytes`]). They were kept in the handset's
/// slot, and the sweep, walking this table, probed the handsets table for every moving
/// handset at every sweep (a tenth of the handsets, each a cache miss: cachegrind put the
/// sweep's probes at a fifth of the last-level misses `runner_movement` adds to
/// `runner_cost`'s passes); here the walk is this table alone.
#[derive(Clone)]
struct History {
    moved: Box<Moved>,
    /// The floor: no time in the history (a stay's end, a SIM's, line's or contact's
    /// latest time) is older, and it is zero while the history has fewer than two stays.
    /// While the floor is past the sweep's cutoff, the sweep would remove nothing and keep
    /// the history as it is, so it skips the box and the four lists behind it (a cache miss
    /// each, for every commuter at every sweep) and counts the bytes the history held when
    /// last measured ([`History::bytes`]). A record adds its own time (`on_event` lowers
    /// the floor to it); anything else that changes a history measures it again
    /// ([`History::measure`]).
    floor_s: u32,
    /// The history's heap bytes, as last measured.
    bytes: u32,
}

impl std::ops::Deref for History {
    type Target = Moved;
    fn deref(&self) -> &Moved {
        &self.moved
    }
}

impl std::ops::DerefMut for History {
    fn deref_mut(&mut self) -> &mut Moved {
        &mut self.moved
    }
}

impl History {
    /// `m`, measured.
    fn new(m: Box<Moved>) -> Self {
        let mut h = History {
            moved: m,
            floor_s: 0,
            bytes: 0,
        };
        h.measure();
        h
    }

    /// Sets the floor and bytes from the history; returns the bytes.
    fn measure(&mut self) -> usize {
        let m = &*self.moved;
        let bytes = moved_bytes(m);
        self.floor_s = match m.stays.len() {
            // The sweep turns it back into one stay (or removes it): it must visit.
            0 | 1 => 0,
            _ => (m.stays.iter().map(|x| x.last_s))
                .chain(m.sims.iter().map(|x| x.at))
                .chain(m.lines.iter().map(|x| x.2))
                .chain(m.contacted.iter().map(|x| x.at))
                .min()
                .unwrap_or(u32::MAX),
        };
        self.bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        bytes
    }

    fn bytes(&self) -> usize {
        self.bytes as usize
    }
}

/// The place of a moving handset's slot (no real place: the cell map's areas are indices,
/// far fewer than 2^31 - 1): its history is in [`RunnerMovement::moving`]. The slot holds
/// no pointer, so the table probed for nearly every record is 24 bytes a slot, not 32.
const MOVING: u32 = u32::MAX;

/// A handset's slot as checkpoints hold it (written before the history moved out of the
/// slot, and still so): the stay and, for a moving handset, its history.
#[derive(Serialize)]
struct TrackOut<'a> {
    here: Stay,
    moved: Option<&'a Moved>,
}

/// [`TrackOut`], read back.
#[derive(Deserialize)]
struct TrackIn {
    here: Stay,
    moved: Option<Box<Moved>>,
}

/// The handsets table and the moving handsets' histories, written as one map of
/// [`TrackOut`]. A moving handset's stay is written as its slot held it before the floor
/// and bytes moved to [`History`]: with the floor as `first_s` and the bytes as `hours`
/// (a load measures both again), so the bytes are as they were.
struct TracksOut<'a> {
    handsets: &'a ProbeMap<Track>,
    moving: &'a IdMap<History>,
}

impl Serialize for TracksOut<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_map(self.handsets.iter().map(|(h, t)| {
            let (mut here, mut moved) = (t.here, None);
            if let Some(x) = t.moving().then(|| self.moving.get(h)).flatten() {
                (here.first_s, here.hours, moved) = (x.floor_s, x.bytes, Some(&*x.moved));
            }
            (h, TrackOut { here, moved })
        }))
    }
}

impl Track {
    /// Seen in both classes: its history is in [`RunnerMovement::moving`].
    fn moving(&self) -> bool {
        self.here.place == MOVING
    }
}

/// The history of a handset seen in both classes (sent whole when a runner's SIM moves
/// into a new handset: [`HandOff`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Moved {
    /// Stays in event-time order; neighbours differ in class (a run-length encoding of the
    /// records' classes, so the same records in any order give the same stays).
    stays: Vec<Stay>,
    /// SIM hash and latest time seen.
    sims: Vec<Seen>,
    /// Lines the handset originated records as (hash, pseudonym, latest time): `related`.
    lines: Vec<(u64, Box<str>, u32)>,
    /// Lines it contacted (hash, latest time): matched against lines with deal evidence.
    contacted: Vec<Seen>,
    /// End of the window it last fired for, and the trade lines named then.
    fired_s: Option<u32>,
    credited: Vec<u64>,
}

impl Stay {
    fn class(&self) -> u8 {
        (self.place >> 31) as u8
    }

    fn area(&self) -> u32 {
        self.place & 0x7fff_ffff
    }
}

/// A line other detectors found deal evidence on (a `deal_line` verdict, a handover).
#[derive(Clone, Serialize, Deserialize)]
struct TradeLine {
    name: Box<str>,
    at_s: u32,
}

/// An earlier handset of the same runner: its SIM moved into this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Earlier {
    handset: u64,
    name: Box<str>,
    /// Its last record (as of the hand-off).
    last_s: u32,
    /// Linked as a whole burn (same trade line, same place, gone quiet), not by its SIM.
    #[serde(default)]
    burn: bool,
}

/// What an earlier handset's shard hands a new handset that took its SIM
/// ([`Body::HandedOver`]): the history to take over and the chain of earlier handsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandOff {
    /// The new handset's pseudonym (its shard has not kept it: it was not moving).
    name: Box<str>,
    /// A moving handset's history (its firing notes cleared: they were that handset's).
    moved: Option<Box<Moved>>,
    /// Or a young handset's one stay.
    here: Option<Stay>,
    chain: Vec<Earlier>,
    /// A whole burn's link ([`Body::BurnHandOver`]): taken only by a handset that has taken
    /// no history over yet (the first answer applied wins).
    #[serde(default)]
    burn: bool,
}

/// A finding for an earlier handset of a runner whose later handset fired
/// ([`Body::NameEarlier`]), made on the earlier handset's shard: its firing note is there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlierFinding {
    name: Box<str>,
    since_s: u32,
    newest_s: u32,
    score: f64,
    window_start: Millis,
    window_end: Millis,
    related: Vec<String>,
    /// The later handset's evidence with `taken_over_by` (a JSON object).
    #[serde(with = "codec::json_text")]
    evidence: serde_json::Value,
    lines: Vec<(u64, String)>,
}

/// How often a moving handset tells its SIM's shard again that the SIM is still in it
/// (seconds of the SIM's use), so the SIM's note outlives a window while the SIM is in use.
/// A window: the new handset's shard checks the real last use, so a stale note only costs
/// one question; a shorter period would send a message per moving handset every few hours.
fn refresh_s(cfg: &RunnerConfig) -> u32 {
    ids::span_secs(cfg.window_s).max(1)
}

#[derive(Clone)]
pub struct RunnerMovement {
    cfg: RunnerConfig,
    /// Every handset's slot, probed for nearly every record: a table whose slot for a key
    /// `warm` can prefetch without looking the key up ([`ProbeMap`]).
    handsets: ProbeMap<Track>,
    /// The histories of the handsets seen in both classes (a tenth of them), beside their
    /// slots in `handsets` (whose place says [`MOVING`]).
    moving: IdMap<History>,
    trade: IdMap<TradeLine>,
    /// Keyed by SIM (on the SIM's shard): the moving handset it was last noted in, and
    /// when: where a new handset's SIM came from. Only SIMs of handsets seen in both classes
    /// (the rest have no movement to hand over), noted by [`Body::SimSeen`].
    sim_at: IdMap<(u64, u32)>,
    /// Handset → the earlier handsets whose history it took over (hand-offs are rare: a
    /// runner's new burner, an ordinary subscriber's new phone).
    earlier: IdMap<Vec<Earlier>>,
    /// Keyed by SIM (on the SIM's shard): a handset first seen with it within
    /// `young_handset_s` (id, first record, pseudonym): a handset replaced within hours has
    /// too few records to be moving, and is found by its SIM here.
    young: IdMap<(u64, u32, Name)>,
    /// Keyed by trade line (on the line's shard): the moving handsets that called it, and
    /// when last ([`Body::RunnerContact`]), for a whole burn's new handset to find its
    /// predecessor ([`Body::BurnAsk`]).
    at_line: IdMap<Vec<(u64, u32)>>,
    /// Old handset → the new one it was handed to as a whole burn: one successor each.
    burnt: IdMap<u64>,
    /// A moving handset whose previous record is no later than this is read again at its
    /// next record: `trade` changed, or a history was handed over, after it.
    trade_changed_s: u32,
    /// Newest record time this instance has seen (seconds): evidence applied at a barrier
    /// changes what every record seen so far would have read.
    clock_s: u32,
    /// The night hours as a mask of clock hours ([`night_mask`] of the config).
    night: u32,
    /// The ages (seconds since a handset's first record) at which a young handset's trade
    /// calls ask about a whole burn: `burn_quiet_s` to `young_handset_s` ([`burn_ages`]),
    /// precomputed because every record of a handset in one class checks them.
    burn_ages: (u32, u32),
    /// Pseudonyms of the handsets seen in both classes: an earlier handset is named in a
    /// finding of its own when the runner's later one fires.
    names: IdMap<Box<str>>,
    /// Moving handset → the lines it contacted, as a 64-bit filter ([`reach_bits`]): a
    /// superset, never missing a line its history holds (a line dropped from the history
    /// may keep its bits until the sweep measures it again). A new trade line reads this
    /// small table instead of every moving handset's history: on the bench mix, whose low
    /// thresholds make hundreds of trade lines, that walk (a table probe, the box and the
    /// contacted list, each a cache miss, for every moving handset at every new trade
    /// line) was 1.3 % of the engine's time with the detector. Derived: not saved in a
    /// checkpoint, rebuilt from the histories after a load, a split or a merge.
    reach: IdMap<u64>,
    max_keys: usize,
    cap_hits: u64,
    /// Heap bytes of the moving handsets' histories, each as last measured (when the sweep
    /// last trimmed it, or it was begun or taken over) plus the histories begun since the
    /// last sweep; not their growth: measuring it cost 1 % of the engine's time, as a
    /// profile of `replay` showed.
    heap_bytes: usize,
    /// The newest sweep's cutoffs: a handset in one class whose last record is older than
    /// the first, and a young handset first seen before the second, count as gone (see
    /// [`Sweeps`]).
    gone_before: Sweeps,
    /// What the gone entries of the two large tables were last purged up to.
    purged: Sweeps,
}

/// The two tables that hold an entry for nearly every handset (`handsets`) and SIM
/// (`young`) are not walked at every sweep. Their entries expire all the same: a read
/// counts an entry older than the newest sweep's cutoff as gone, exactly as if that sweep
/// had removed it (a record is never older than the watermark less the allowed lateness,
/// far less than either span, so nothing newer than the cutoff can be mistaken for gone).
/// The gone entries are purged, for memory, once the cutoff has moved on an eighth of the
/// span (`handsets`, four days by default) or half of it (`young`, a day), or when a table
/// is at its key cap. Every sweep walked both tables (20,000 handsets and as many SIMs on
/// the bench city) for a few hundred expiries; without those walks, and with `young`
/// purged every twelve hours rather than three, the misses the detector adds to the
/// engine fell from 5.0 to 4.2 per record in the last-level cache and from 7.5 to 6.8 in
/// the first (cachegrind, `warm_city`'s records). The moving handsets (a tenth) are still
/// walked at every sweep, their histories expiring piece by piece, but a history is read
/// only once the cutoff passes its floor ([`History::floor_s`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Sweeps {
    handsets_s: u32,
    young_s: u32,
}

fn moved_bytes(m: &Moved) -> usize {
    std::mem::size_of::<Moved>()
        + m.stays.capacity() * std::mem::size_of::<Stay>()
        + m.sims.capacity() * std::mem::size_of::<Seen>()
        + m.lines.iter().map(|l| l.1.len() + 32).sum::<usize>()
        + m.contacted.capacity() * std::mem::size_of::<Seen>()
        + m.credited.capacity() * 8
}

/// Adds one record's class at `s` to the stays, keeping them a run-length encoding by class.
/// True if that changed what a reading sees (a stay begun or split, a clock hour newly
/// seen); a stay only lengthened changes nothing a rule asks.
fn observe(stays: &mut Vec<Stay>, obs: Stay) -> bool {
    let s = obs.first_s;
    // Most records extend the newest stay: no search.
    if let Some(last) = stays.last_mut() {
        if last.class() == obs.class() && last.first_s <= s {
            last.last_s = last.last_s.max(s);
            let before = last.hours;
            last.hours |= obs.hours;
            return last.hours != before;
        }
    }
    let i = stays.partition_point(|x| x.last_s < s);
    if i < stays.len() && stays[i].first_s <= s {
        // Inside stay i.
        if stays[i].class() == obs.class() {
            let before = stays[i].hours;
            stays[i].hours |= obs.hours;
            return stays[i].hours != before;
        }
        // A record of the other class inside a stay (arrived late): the stay is split
        // around it.
        let mut right = stays[i];
        right.first_s = s;
        stays[i].last_s = s;
        stays.insert(i + 1, obs);
        stays.insert(i + 2, right);
        return true;
    }
    // Between stay i-1 (ended before s) and stay i (starts after s), or at either end.
    let st = if i > 0 && stays[i - 1].class() == obs.class() {
        let st = &mut stays[i - 1];
        st.last_s = s;
        st
    } else if i < stays.len() && stays[i].class() == obs.class() {
        let st = &mut stays[i];
        st.first_s = s;
        st
    } else {
        stays.insert(i, obs);
        return true;
    };
    let before = st.hours;
    st.hours |= obs.hours;
    st.hours != before
}

/// Adds a whole stay (another handset's, at a hand-off) to the stays: its first record
/// with its clock hours, then its last.
fn merge_stay(stays: &mut Vec<Stay>, st: Stay) {
    observe(
        stays,
        Stay {
            last_s: st.first_s,
            ..st
        },
    );
    observe(
        stays,
        Stay {
            hours: 0,
            first_s: st.last_s,
            ..st
        },
    );
}

/// Keeps `(key, time)` entries unique by key with the latest time, at most `max` (the
/// stalest goes).
fn note<K: PartialEq, T>(
    list: &mut Vec<T>,
    max: usize,
    key: impl Fn(&T) -> K,
    time: impl Fn(&mut T) -> &mut u32,
    k: K,
    s: u32,
    make: impl FnOnce() -> T,
) -> bool {
    if let Some(x) = list.iter_mut().find(|x| key(x) == k) {
        let t = time(x);
        *t = (*t).max(s);
        return false;
    }
    if list.len() >= max {
        if let Some(i) = (0..list.len()).min_by_key(|&i| *time(&mut list[i])) {
            list.swap_remove(i);
        }
    }
    list.push(make());
    true
}

/// A line's two bits in a [`RunnerMovement::reach`] filter: two 6-bit fields of its
/// fingerprint (a hash already). A handset holds at most [`MAX_CONTACTED`] lines; at the
/// bench mix's 7 (median) two bits give one handset in 25 a false match, read and let go.
fn reach_bits(line: u64) -> u64 {
    1 << (line & 63) | 1 << ((line >> 6) & 63)
}

/// The filter of every line `m` contacted.
fn reach_of(m: &Moved) -> u64 {
    m.contacted.iter().fold(0, |r, c| r | reach_bits(c.id()))
}

/// What the window ending at the handset's newest stay shows.
struct Reading {
    since_s: u32,
    newest_s: u32,
    /// Index of the first stay in the window.
    start: usize,
    switches: usize,
    /// Per class (metro, county): the clock hours it was seen in there (bit per hour).
    hours: [u32; 2],
}

impl RunnerMovement {
    pub fn new(cfg: &Config, max_keys: usize) -> Self {
        RunnerMovement {
            cfg: cfg.runner_movement.clone(),
            handsets: ProbeMap::default(),
            moving: IdMap::default(),
            trade: IdMap::default(),
            sim_at: IdMap::default(),
            earlier: IdMap::default(),
            names: IdMap::default(),
            reach: IdMap::default(),
            young: IdMap::default(),
            at_line: IdMap::default(),
            burnt: IdMap::default(),
            trade_changed_s: 0,
            clock_s: 0,
            night: night_mask(&cfg.runner_movement),
            burn_ages: burn_ages(&cfg.runner_movement),
            max_keys,
            cap_hits: 0,
            heap_bytes: 0,
            gone_before: Sweeps::default(),
            purged: Sweeps::default(),
        }
    }
}

/// See [`RunnerMovement::burn_ages`]; an empty range when the burn link is off.
fn burn_ages(cfg: &RunnerConfig) -> (u32, u32) {
    if cfg.burn_gap_s == 0 {
        return (u32::MAX, 0);
    }
    (
        ids::span_secs(cfg.burn_quiet_s),
        ids::span_secs(cfg.young_handset_s),
    )
}

/// The night hours as a mask of clock hours.
fn night_mask(cfg: &RunnerConfig) -> u32 {
    let (a, b) = (cfg.night_start_hour, cfg.night_end_hour);
    // A night that wraps midnight (22-06) or one that does not (00-05).
    (0..24)
        .filter(|&h| {
            if a > b {
                h >= a || h < b
            } else {
                a <= h && h < b
            }
        })
        .fold(0, |m, h| m | 1 << h)
}

/// The window ending at the newest stay, if it holds enough switches. Asked on every
/// record of a handset seen in both classes (a commuter's, mostly), so it allocates nothing.
fn read(cfg: &RunnerConfig, stays: &[Stay]) -> Option<Reading> {
    // Stays are in time order and do not overlap: the last ends last.
    let newest_s = stays.last()?.last_s;
    let since_s = newest_s.saturating_sub(ids::span_secs(cfg.window_s));
    let start = stays.partition_point(|x| x.last_s < since_s);
    let switches = (stays.len() - start).saturating_sub(1);
    if switches < cfg.min_switches as usize {
        return None;
    }
    let mut hours = [0u32; 2];
    for x in &stays[start..] {
        hours[x.class() as usize] |= x.hours;
    }
    Some(Reading {
        since_s,
        newest_s,
        start,
        switches,
        hours,
    })
}

impl RunnerMovement {
    /// A handset new to the detector (or back after its state expired), just held: its SIM's
    /// shard is asked where the SIM came from (a moving or a young handset, whose history is
    /// handed over at the barrier).
    #[cold]
    fn arrived(imei: u64, imei_s: &str, sim: Option<u64>, s: u32, outbox: &mut Vec<Sent>) {
        if let Some(sim) = sim {
            let body = Body::HandsetArrived {
                handset: imei,
                name: imei_s.into(),
                at_s: s,
            };
            outbox.push(Sent::new(Dest::Handset(sim), body));
        }
    }

    /// On the SIM's shard: handset `to` arrived with `sim` at `s`. The moving handset the SIM
    /// was last noted in (within the window) hands its history over; or else a young handset
    /// first seen with it hands its one stay over, and `to` becomes the SIM's young handset.
    fn sim_arrived(&mut self, sim: u64, to: u64, name: &Name, s: u32, outbox: &mut Vec<Sent>) {
        let window = ids::span_secs(self.cfg.window_s);
        let reach = window.saturating_add(refresh_s(&self.cfg));
        let from = self
            .sim_at
            .get(&sim)
            .filter(|&&(h, at)| h != to && at.saturating_add(reach) >= s)
            .map(|&(h, _)| h);
        let ask = |young_name| Body::HandOver {
            to,
            to_name: name.as_str().into(),
            sim,
            at_s: s,
            young_name,
        };
        if let Some(h) = from {
            outbox.push(Sent::new(Dest::Handset(h), ask(None)));
            return;
        }
        // One probe of the SIM's young-handset entry, not three (read, cap check, write):
        // the table holds every SIM first seen within `young_handset_s`, far larger than the
        // caches, and nearly every arrival is a SIM new to it (cachegrind, bench mix).
        if self.young.len() >= self.max_keys {
            self.purge_gone_young();
        }
        let full = self.young.len() >= self.max_keys;
        let gone_before = self.gone_before.young_s;
        match self.young.entry(sim) {
            // Gone at the last sweep (see `Sweeps`): as if not there.
            Entry::Occupied(mut o) if o.get().1 < gone_before => {
                *o.get_mut() = (to, s, name.clone());
            }
            Entry::Occupied(mut o) => {
                let y = o.get_mut();
                if y.0 != to {
                    outbox.push(Sent::new(
                        Dest::Handset(y.0),
                        ask(Some(y.2.as_str().into())),
                    ));
                }
                *y = (to, s, name.clone());
            }
            Entry::Vacant(v) if !full => {
                v.insert((to, s, name.clone()));
            }
            Entry::Vacant(_) => self.cap_hits += 1,
        }
    }

    /// On the earlier handset `h`'s shard: its SIM went into handset `to` at `s`; sends `to`
    /// a copy of `h`'s history (a moving handset that used the SIM within the window) or its
    /// one stay (a young handset, still in one class).
    fn hand_over(
        &mut self,
        h: u64,
        ask: (u64, &str, u64, u32),
        young_name: Option<&str>,
    ) -> Option<Sent> {
        let (to, to_name, sim, s) = ask;
        let window = ids::span_secs(self.cfg.window_s);
        let t = self.handsets.get(&h)?;
        let moved = self.moving.get(&h).filter(|_| t.moving());
        let off = match (young_name, moved.map(|m| &**m)) {
            (None, Some(m)) => {
                // The SIM's note may be up to a refresh period old: its real last use here.
                let used = m.sims.iter().find(|x| x.id() == sim)?.at;
                if used.saturating_add(window) < s {
                    return None;
                }
                let last_s = m.stays.last()?.last_s;
                let name = self.names.get(&h)?.clone();
                let mut chain = self.earlier.get(&h).cloned().unwrap_or_default();
                chain.retain(|e| e.last_s.saturating_add(window) >= s);
                chain.push(Earlier {
                    handset: h,
                    name,
                    last_s,
                    burn: false,
                });
                let mut copy = m.clone();
                (copy.fired_s, copy.credited) = (None, Vec::new());
                HandOff {
                    name: to_name.into(),
                    moved: Some(Box::new(copy)),
                    here: None,
                    chain,
                    burn: false,
                }
            }
            (Some(_), None) if gone(t, self.gone_before.handsets_s) => return None,
            (Some(name), None) => HandOff {
                name: to_name.into(),
                moved: None,
                here: Some(t.here),
                chain: vec![Earlier {
                    handset: h,
                    name: name.into(),
                    last_s: t.here.last_s,
                    burn: false,
                }],
                burn: false,
            },
            _ => return None,
        };
        Some(Sent::new(Dest::Handset(to), Body::HandedOver(off)))
    }

    /// A handset still young (first seen at `first_s` in `place`) calls the trade line `to`
    /// `burn_quiet_s` or more after its first record, and has taken no history over: the
    /// line's shard is asked whether a moving handset that called it went quiet just before
    /// it appeared, there (a whole burn). Checked on every record of a young handset, so the
    /// times come first and the trade list only then.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn ask_burn(
        &self,
        imei: u64,
        imei_s: &str,
        to: u64,
        first_s: u32,
        place: u32,
        s: u32,
        outbox: &mut Vec<Sent>,
    ) {
        let age = s.saturating_sub(first_s);
        if age < self.burn_ages.0 || age > self.burn_ages.1 {
            return;
        }
        self.ask_burn_young(imei, imei_s, to, first_s, place, outbox);
    }

    /// [`Self::ask_burn`] for a handset of the age to ask: a call to a trade line, and no
    /// history taken over yet.
    #[inline(never)]
    fn ask_burn_young(
        &self,
        imei: u64,
        imei_s: &str,
        to: u64,
        first_s: u32,
        place: u32,
        outbox: &mut Vec<Sent>,
    ) {
        if !self.trade.contains_key(&to) || self.earlier.contains_key(&imei) {
            return;
        }
        let body = Body::BurnAsk {
            handset: imei,
            name: imei_s.into(),
            first_s,
            place,
        };
        outbox.push(Sent::new(Dest::Number(to), body));
    }

    /// A line just became a trade line (on every shard): the moving handsets here that
    /// called it are told to it and read now.
    ///
    /// - Told: each tells the line's shard so, as it would have had the line been one then
    ///   (a deal line is found hours after its runners start calling it, and a burnt
    ///   handset may have gone quiet by then). Hinted by handset, so every shard's notes
    ///   apply in the same order.
    /// - Read: at the barrier that brought the news, not at its next record. A runner's
    ///   record can precede the news of its line's verdict (made on another partition, or
    ///   a barrier later), and a runner that then goes quiet would never be read again; so
    ///   whether it is found no longer depends on which came first. In handset order: the
    ///   findings are the same whatever the shard count.
    #[cold]
    fn new_trade_line(&mut self, line: u64, at: Millis, ctx: &mut Ctx<'_>) {
        // Only the moving handsets whose filter has the line's bits (`reach`) are read: a
        // few in a hundred, where reading every moving history (a tenth of the handsets)
        // cost the bench mix, whose low thresholds make hundreds of trade lines, 1.3 % of
        // its time (and walking every handset, before `names`, half of it).
        let bits = reach_bits(line);
        let mut callers: Vec<(u64, u32)> = self
            .reach
            .iter()
            .filter(|&(_, &r)| r & bits == bits)
            .filter_map(|(&h, _)| self.caller_of(h, line))
            .collect();
        debug_assert_eq!(
            {
                let mut v = callers.clone();
                v.sort_unstable();
                v
            },
            {
                let mut all: Vec<(u64, u32)> = (self.names.keys())
                    .filter_map(|&h| self.caller_of(h, line))
                    .collect();
                all.sort_unstable();
                all
            },
            "the reach filter missed a caller"
        );
        if callers.is_empty() {
            return;
        }
        callers.sort_unstable();
        if self.cfg.burn_gap_s != 0 {
            for &(h, at_s) in &callers {
                let body = Body::RunnerContact { handset: h, at_s };
                ctx.outbox
                    .push(Sent::hinted(Dest::Number(line), body, [h, 0]));
            }
        }
        let Some(map) = ctx.cells else {
            return;
        };
        for (h, _) in callers {
            let Some(name) = self.names.get(&h).cloned() else {
                continue;
            };
            self.judge(h, &name, at, map, ctx);
        }
    }

    /// The named moving handset `h`'s latest contact with `line`, if its history holds one.
    fn caller_of(&self, h: u64, line: u64) -> Option<(u64, u32)> {
        if !self.names.contains_key(&h) {
            return None;
        }
        let m = self.moving.get(&h)?;
        let c = m.contacted.iter().find(|c| c.id() == line)?;
        Some((h, c.at))
    }

    /// On the trade line's shard: the moving handsets that called it before `first_s` and
    /// not since are asked whether they went quiet just before the new handset `to` showed.
    fn burn_asked(&self, line: u64, ask: (u64, &str, u32, u32), outbox: &mut Vec<Sent>) {
        let (to, to_name, first_s, place) = ask;
        let Some(seen) = self.at_line.get(&line) else {
            return;
        };
        let window = ids::span_secs(self.cfg.window_s);
        for &(h, at) in seen {
            if h != to && at <= first_s && at.saturating_add(window) >= first_s {
                let body = Body::BurnHandOver {
                    to,
                    to_name: to_name.into(),
                    first_s,
                    place,
                };
                outbox.push(Sent::new(Dest::Handset(h), body));
            }
        }
    }

    /// On the old handset `h`'s shard: if it is moving, was last seen where `to` first
    /// showed, and went quiet at most `burn_gap_s` before that (no record since), its
    /// history goes to `to`, once.
    fn burn_hand_over(&mut self, h: u64, ask: (u64, &str, u32, u32)) -> Option<Sent> {
        let (to, to_name, first_s, place) = ask;
        if self.burnt.contains_key(&h) {
            return None;
        }
        let m: &Moved = self.moving.get(&h)?;
        let last = m.stays.last()?;
        let gap = ids::span_secs(self.cfg.burn_gap_s);
        if last.last_s > first_s || last.last_s.saturating_add(gap) < first_s || last.place != place
        {
            return None;
        }
        let window = ids::span_secs(self.cfg.window_s);
        let mut chain = self.earlier.get(&h).cloned().unwrap_or_default();
        chain.retain(|e| e.last_s.saturating_add(window) >= first_s);
        chain.push(Earlier {
            handset: h,
            name: self.names.get(&h)?.clone(),
            last_s: last.last_s,
            burn: true,
        });
        let mut copy = m.clone();
        (copy.fired_s, copy.credited) = (None, Vec::new());
        self.burnt.insert(h, to);
        let off = HandOff {
            name: to_name.into(),
            moved: Some(Box::new(copy)),
            here: None,
            chain,
            burn: true,
        };
        Some(Sent::new(Dest::Handset(to), Body::HandedOver(off)))
    }

    /// On the new handset `imei`'s shard: takes the earlier handset's history over, merged
    /// with what this handset has seen since it arrived (the barrier comes after it), and
    /// reads it as of `at`, the arrival: the record that brought the SIM is judged with the
    /// history it brought, as when the hand-off was seen in place (a runner's new handset
    /// may have no other record for hours).
    fn take_over(&mut self, imei: u64, off: &HandOff, at: Millis, ctx: &mut Ctx<'_>) {
        if off.burn && self.earlier.contains_key(&imei) {
            return; // linked already (its SIM, or another burn answered first)
        }
        let gone_before = self.gone_before.handsets_s;
        let Some(t) = self
            .handsets
            .get_mut(&imei)
            .filter(|t| !gone(t, gone_before))
        else {
            return; // gone again, or refused by the key cap
        };
        let own_stays: Vec<Stay> = match self.moving.get(&imei) {
            Some(m) => m.stays.clone(),
            None => vec![t.here],
        };
        let mut m = match (&off.moved, off.here) {
            (Some(copy), _) => (**copy).clone(),
            (None, Some(here)) => Moved {
                stays: vec![here],
                ..Moved::default()
            },
            (None, None) => return,
        };
        for st in own_stays {
            merge_stay(&mut m.stays, st);
        }
        if let Some(own) = self.moving.get(&imei) {
            for x in &own.sims {
                let seen = *x;
                let (sim, at) = (seen.id(), seen.at);
                note(
                    &mut m.sims,
                    MAX_SIMS,
                    Seen::id,
                    |x| &mut x.at,
                    sim,
                    at,
                    || seen,
                );
            }
            for (id, name, at) in &own.lines {
                let make = || (*id, name.clone(), *at);
                note(
                    &mut m.lines,
                    MAX_LINES,
                    |x| x.0,
                    |x| &mut x.2,
                    *id,
                    *at,
                    make,
                );
            }
            for x in &own.contacted {
                let seen = *x;
                let (id, at) = (seen.id(), seen.at);
                note(
                    &mut m.contacted,
                    MAX_CONTACTED,
                    Seen::id,
                    |x| &mut x.at,
                    id,
                    at,
                    || seen,
                );
            }
            (m.fired_s, m.credited) = (own.fired_s, own.credited.clone());
            self.heap_bytes = self.heap_bytes.saturating_sub(moved_bytes(own));
        }
        while m.stays.len() > (self.cfg.max_stays_per_handset as usize).max(1) {
            m.stays.remove(0);
            self.cap_hits += 1;
        }
        self.earlier.insert(imei, off.chain.clone());
        if let ([one], false) = (&m.stays[..], t.moving()) {
            // A young handset's stay in the class this one is still in: one stay.
            t.here = *one;
            return;
        }
        // The SIM index follows the handset now holding the SIMs (the sweep's rebuild did
        // this when every SIM was on one thread).
        for x in &m.sims {
            let body = Body::SimSeen {
                handset: imei,
                at_s: x.at,
            };
            ctx.outbox.push(Sent::new(Dest::Handset(x.id()), body));
        }
        t.here.place = MOVING;
        self.reach.insert(imei, reach_of(&m));
        let x = History::new(Box::new(m));
        self.heap_bytes += x.bytes();
        self.moving.insert(imei, x);
        self.names.insert(imei, off.name.clone());
        // Its reading changed: read again at its next record too.
        self.trade_changed_s = self.trade_changed_s.max(self.clock_s);
        if let Some(map) = ctx.cells {
            self.judge(imei, &off.name, at, map, ctx);
        }
    }

    /// Rebuilds the SIM index from the moving handsets (after a load; a sweep does it as it
    /// goes) and forgets the hand-offs of handsets no longer held (the names and filters of
    /// handsets no longer moving go in `rederive`, which every load ends with).
    fn reindex(&mut self, cutoff: u32) {
        self.sim_at.clear();
        for (&h, m) in &self.moving {
            for (sim, at) in m.sims.iter().map(|x| (x.id(), x.at)) {
                if self.sim_at.get(&sim).is_none_or(|x| x.1 <= at) {
                    self.sim_at.insert(sim, (h, at));
                }
            }
        }
        self.forget_earlier(cutoff);
    }

    /// Drops the hand-off notes of handsets no longer held, and earlier handsets silent
    /// since before `cutoff`.
    fn forget_earlier(&mut self, cutoff: u32) {
        let gone_before = self.gone_before.handsets_s;
        let held = |h: &u64| self.handsets.get(h).is_some_and(|t| !gone(t, gone_before));
        self.earlier.retain(|h, list| {
            list.retain(|e| e.last_s >= cutoff);
            !list.is_empty() && held(h)
        });
    }

    /// Reads the moving handset `imei`'s history as of event time `at` and fires if it
    /// shows a runner tied to the trade (and was not already reported for the window).
    fn judge(&mut self, imei: u64, imei_s: &str, at: Millis, map: &CellMap, ctx: &mut Ctx<'_>) {
        let Some(m) = self.moving.get_mut(&imei) else {
            return;
        };
        // Back and forth, unlike commuting?
        let Some(r) = read(&self.cfg, &m.stays) else {
            return;
        };
        // A commuter is seen in one of the two classes only in working hours; a runner is
        // seen in both at night, or through more of the day than a working day. Clock hours
        // seen, not stay lengths: a handset silent all evening would make two working days
        // look like one long stay.
        let night = self.night;
        let max_hours = self.cfg.max_commute_hours;
        let resident = |c: usize| r.hours[c] & night != 0 || r.hours[c].count_ones() > max_hours;
        if !(resident(0) && resident(1)) {
            return;
        }
        // Tied to the trade?
        let sims = m.sims.iter().filter(|x| x.at >= r.since_s).count();
        let churn = sims >= self.cfg.churn_min_sims as usize;
        let mut trade: Vec<(u64, String)> = m
            .contacted
            .iter()
            .filter(|c| c.at >= r.since_s)
            .filter_map(|c| {
                let t = self.trade.get(&c.id())?;
                (t.at_s >= r.since_s).then(|| (c.id(), t.name.to_string()))
            })
            .collect();
        trade.sort_by(|a, b| a.1.cmp(&b.1));
        if trade.is_empty() && !churn {
            return;
        }
        // Once per window, unless the handset is now tied to a line it was not before.
        let new_line = trade.iter().any(|(id, _)| !m.credited.contains(id));
        if m.fired_s.is_some_and(|f| f >= r.since_s) && !new_line {
            return;
        }
        m.fired_s = Some(r.newest_s);
        for (id, _) in &trade {
            if !m.credited.contains(id) {
                m.credited.push(*id);
            }
        }
        let mut ties = Vec::new();
        if !trade.is_empty() {
            ties.push("deal_contact");
        }
        if churn {
            ties.push("sim_churn");
        }
        let mut carried: Vec<&(u64, Box<str>, u32)> =
            m.lines.iter().filter(|l| l.2 >= r.since_s).collect();
        carried.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.1.cmp(&b.1)));
        let recent = &m.stays[r.start..];
        let names = |c: u8| -> Vec<String> {
            let mut v: Vec<String> = recent
                .iter()
                .filter(|x| x.class() == c)
                .map(|x| map.area_name(x.area()).to_string())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let min = self.cfg.min_switches as usize;
        ctx.out.push(Finding {
            detector: NAME,
            subject: imei_s.to_string(),
            subject_id: imei,
            subject_kind: SubjectKind::Handset,
            score: (r.switches as f64 / (2.0 * min as f64)).min(1.0),
            event_time: at,
            window_start: ids::millis(recent[0].first_s),
            window_end: ids::millis(r.newest_s).max(at),
            related: carried.iter().map(|l| l.1.to_string()).collect(),
            evidence: evidence! {
                "switches" => r.switches,
                "min_switches" => min,
                "window_s" => self.cfg.window_s,
                "metro_areas" => names(METRO),
                "county_areas" => names(COUNTY),
                "metro_night" => r.hours[0] & night != 0,
                "county_night" => r.hours[1] & night != 0,
                "night_hours" => format!("{:02}-{:02}", self.cfg.night_start_hour, self.cfg.night_end_hour),
                "metro_hours" => r.hours[0].count_ones(),
                "county_hours" => r.hours[1].count_ones(),
                "max_commute_hours" => max_hours,
                "ties" => ties,
                "trade_lines" => trade.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(),
                "sims" => sims,
                "churn_min_sims" => self.cfg.churn_min_sims,
            },
            lines: trade,
        });
        self.name_earlier(imei, imei_s, r.since_s, r.newest_s, ctx);
    }

    /// The runner's handset `imei` just fired: the earlier handsets whose history it took
    /// over (its SIM moved from them) within the window are the runner's too, and are named
    /// in findings of their own, once per window, with the same evidence and which handset
    /// took over. Each is made on the earlier handset's shard ([`Body::NameEarlier`]), where
    /// its firing note is.
    fn name_earlier(
        &mut self,
        imei: u64,
        imei_s: &str,
        since_s: u32,
        newest_s: u32,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(earlier) = self.earlier.get(&imei) else {
            return;
        };
        let Some(found) = ctx.out.last().cloned() else {
            return;
        };
        let names: Vec<&str> = earlier.iter().map(|e| &*e.name).collect();
        let burnt: Vec<&str> = earlier
            .iter()
            .filter(|e| e.burn)
            .map(|e| &*e.name)
            .collect();
        if let Some(f) = ctx.out.last_mut() {
            f.evidence
                .insert("earlier_handsets".into(), serde_json::json!(names));
            if !burnt.is_empty() {
                f.evidence
                    .insert("burnt_handsets".into(), serde_json::json!(burnt));
            }
        }
        let mut evidence = found.evidence;
        evidence.insert("taken_over_by".into(), serde_json::json!(imei_s));
        for e in earlier.iter().filter(|e| e.last_s >= since_s) {
            let mut evidence = evidence.clone();
            if e.burn {
                evidence.insert("taken_over_as".into(), serde_json::json!("burn"));
            }
            let body = Body::NameEarlier(Box::new(EarlierFinding {
                name: e.name.clone(),
                since_s,
                newest_s,
                score: found.score,
                window_start: found.window_start,
                window_end: found.window_end,
                related: found.related.clone(),
                evidence: serde_json::Value::Object(evidence),
                lines: found.lines.clone(),
            }));
            ctx.outbox.push(Sent::new(Dest::Handset(e.handset), body));
        }
    }

    /// On an earlier handset's shard: names it, once per window.
    fn named(&mut self, h: u64, x: &EarlierFinding, at: Millis, out: &mut Vec<Finding>) {
        // Back in one class or gone, it keeps no note of firing: the engine's cooldown
        // holds a repeat back.
        if let Some(m) = self.moving.get_mut(&h) {
            if m.fired_s.is_some_and(|f| f >= x.since_s) {
                return;
            }
            m.fired_s = Some(x.newest_s);
        }
        let serde_json::Value::Object(evidence) = &x.evidence else {
            return;
        };
        out.push(Finding {
            detector: NAME,
            subject: x.name.to_string(),
            subject_id: h,
            subject_kind: SubjectKind::Handset,
            score: x.score,
            event_time: at,
            window_start: x.window_start,
            window_end: x.window_end,
            related: x.related.clone(),
            evidence: evidence.clone(),
            lines: x.lines.clone(),
        });
    }

    /// [`Detector::on_event`] in the handset role, the detector enabled.
    #[inline(never)]
    fn on_handset_record(&mut self, ev: &Event<'_>, ids: &EventIds, ctx: &mut Ctx<'_>) {
        // No map, no cell, or a cell the map lacks: the engine has counted it.
        let (Some(map), Some(place)) = (ctx.cells, ctx.cell) else {
            return;
        };
        let (Some(imei), Some(imei_s)) = (ids.imei, ev.imei.as_deref()) else {
            return;
        };
        let s = ids::secs(ev.ts);
        self.clock_s = self.clock_s.max(s);
        let class = match place.class {
            CellClass::Metro => METRO,
            CellClass::County => COUNTY,
        };
        let obs = Stay {
            hours: 1 << ((s % 86_400) / 3_600),
            place: u32::from(class) << 31 | (place.area & 0x7fff_ffff),
            first_s: s,
            last_s: s,
        };
        // One probe for the record nearly every record is: one more in the only class
        // seen, or a handset's first (on the bench mix, two records in five).
        if self.handsets.len() >= self.max_keys {
            self.purge_gone_handsets();
        }
        let held = self.handsets.len();
        let gone_before = self.gone_before.handsets_s;
        let t = match self.handsets.get_mut(&imei) {
            Some(t) if !gone(t, gone_before) => t,
            Some(t) => {
                // Gone at the last sweep (see `Sweeps`): new to the detector again.
                *t = Track { here: obs };
                Self::arrived(imei, imei_s, ids.imsi, s, ctx.outbox);
                self.ask_burn(imei, imei_s, ids.to, s, obs.place, s, ctx.outbox);
                return;
            }
            None => {
                // A new handset's one stay is this record: nothing a rule reads yet but
                // the burn link's age (zero), as for any record in the only class seen.
                if held >= self.max_keys {
                    self.cap_hits += 1;
                    return;
                }
                self.handsets.insert(imei, Track { here: obs });
                Self::arrived(imei, imei_s, ids.imsi, s, ctx.outbox);
                self.ask_burn(imei, imei_s, ids.to, s, obs.place, s, ctx.outbox);
                return;
            }
        };
        if !t.moving() {
            if t.here.class() == obs.class() {
                t.here.first_s = t.here.first_s.min(s);
                t.here.last_s = t.here.last_s.max(s);
                t.here.hours |= obs.hours;
                let (first_s, place) = (t.here.first_s, t.here.place);
                self.ask_burn(imei, imei_s, ids.to, first_s, place, s, ctx.outbox);
                return;
            }
            let m = Moved {
                stays: vec![t.here],
                ..Moved::default()
            };
            t.here.place = MOVING;
            let x = History::new(Box::new(m));
            self.heap_bytes += x.bytes();
            self.moving.insert(imei, x);
            self.names.insert(imei, imei_s.into());
        }
        let Some(m) = self.moving.get_mut(&imei) else {
            return;
        };
        // This record's time goes into the history (see `History::floor_s`).
        m.floor_s = m.floor_s.min(s);
        let previous_s = m.stays.last().map_or(0, |x| x.last_s);
        let mut changed = observe(&mut m.stays, obs);
        if m.stays.len() > self.cfg.max_stays_per_handset as usize {
            m.stays.remove(0);
            self.cap_hits += 1;
            if m.stays.len() < 2 {
                m.floor_s = 0;
            }
        }
        if let Some(sim) = ids.imsi {
            let period = refresh_s(&self.cfg);
            let before = m.sims.iter().find(|x| x.id() == sim).map(|x| x.at);
            let new = note(
                &mut m.sims,
                MAX_SIMS,
                Seen::id,
                |x| &mut x.at,
                sim,
                s,
                || Seen::new(sim, s),
            );
            // The SIM's shard is told of a SIM new to the handset, and again once a period
            // of its use, so its note outlives the window while the SIM is in use.
            if new || before.is_some_and(|b| b / period != s / period) {
                let body = Body::SimSeen {
                    handset: imei,
                    at_s: s,
                };
                ctx.outbox.push(Sent::new(Dest::Handset(sim), body));
            }
            changed |= new;
        }
        let from = ev.from.as_ref();
        changed |= note(
            &mut m.lines,
            MAX_LINES,
            |x| x.0,
            |x| &mut x.2,
            ids.from,
            s,
            || (ids.from, from.into(), s),
        );
        if note(
            &mut m.contacted,
            MAX_CONTACTED,
            Seen::id,
            |x| &mut x.at,
            ids.to,
            s,
            || Seen::new(ids.to, s),
        ) {
            changed = true;
            *self.reach.entry(imei).or_default() |= reach_bits(ids.to);
        }
        let to_trade = self.trade.contains_key(&ids.to);
        let first = m.stays.first().map(|x| (x.first_s, x.place));
        if to_trade {
            // The line's shard learns which moving handsets call it (a whole burn's
            // successor asks there).
            let body = Body::RunnerContact {
                handset: imei,
                at_s: s,
            };
            ctx.outbox.push(Sent::new(Dest::Number(ids.to), body));
        }

        // Judged again only when something a rule asks could have changed: this record
        // changed the history, contacts a trade line, came after a line became one, or a
        // window has passed since the handset last fired. Nearly every record of a moving
        // handset (a commuter's, mostly) changes nothing, and the reading is skipped.
        // Against the newest stay, as the reading's window is: a late record after the
        // window has passed is read too, so skipping a reading never hides a finding (the
        // readings evidence forces after a barrier then change nothing else).
        let newest_s = m.stays.last().map_or(s, |x| x.last_s);
        let fired_window_passed = m
            .fired_s
            .is_some_and(|f| f.saturating_add(ids::span_secs(self.cfg.window_s)) < newest_s);
        if !changed && !fired_window_passed && self.trade_changed_s < previous_s && !to_trade {
            return;
        }
        if let (true, Some((first_s, place))) = (to_trade, first) {
            self.ask_burn(imei, imei_s, ids.to, first_s, place, s, ctx.outbox);
        }
        self.judge(imei, imei_s, ev.ts, map, ctx);
    }
}

impl Detector for RunnerMovement {
    fn name(&self) -> &'static str {
        NAME
    }

    fn warm(&self, ids: &EventIds, role: Role) {
        if role == Role::Handset && self.cfg.enabled {
            if let Some(imei) = ids.imei {
                // The slot is prefetched, not read: the core goes on with the other
                // tables' misses and the other detectors' work while it comes. Looked up
                // here, as `std`'s table has to be, it held the core until it came
                // (`ProbeMap`).
                self.handsets.prefetch(imei);
                // A moving handset (a commuter's, mostly) reads its history behind two more
                // pointers: the box, then each list. Waited for one after the other in
                // `on_event`, they were a third of its samples (`perf annotate`, warm city);
                // here they overlap the other tables' misses. The lists are prefetched, not
                // read: nothing waits on them. The moving table holds a tenth of the
                // handsets and stays in cache; a handset it lacks is told by its control
                // bytes alone.
                if let Some(m) = self.moving.get(&imei) {
                    ids::prefetch(
                        m.stays
                            .as_ptr()
                            .wrapping_add(m.stays.len().saturating_sub(1)),
                    );
                    ids::prefetch(m.sims.as_ptr());
                    ids::prefetch(m.lines.as_ptr());
                    ids::prefetch(m.contacted.as_ptr());
                }
            }
        }
    }

    fn on_event(&mut self, ev: &Event<'_>, ids: &EventIds, ctx: &mut Ctx<'_>) {
        // Keyed by handset: everything here is the record's handset's own state; what
        // concerns a SIM or another handset is sent. The engine calls this in each of a
        // record's three roles; the two it ignores return here, before the body saves the
        // registers it uses (a fifth of this function's samples were its entry and exit:
        // `perf annotate`, `runner_cost`).
        if ctx.role != Role::Handset || !self.cfg.enabled {
            return;
        }
        self.on_handset_record(ev, ids, ctx);
    }

    fn on_findings(&mut self, _at: Millis, findings: &[Finding], ctx: &mut Ctx<'_>) {
        if !self.cfg.enabled {
            return;
        }
        // Every shard keeps the same list of trade lines: each is sent to all of them.
        for f in findings {
            let lines: &[(u64, String)] = match f.detector {
                super::deal_line::NAME | super::line_handover::NAME => &f.lines,
                _ => continue,
            };
            let at_s = ids::secs(f.event_time);
            for (id, name) in lines {
                let body = Body::TradeLine {
                    line: *id,
                    name: name.as_str().into(),
                    at_s,
                };
                ctx.outbox.push(Sent::new(Dest::Every, body));
            }
        }
    }

    fn on_evidence(&mut self, e: &Evidence, ctx: &mut Ctx<'_>) {
        if !self.cfg.enabled {
            return;
        }
        match (&e.body, e.dest) {
            (Body::TradeLine { line, name, at_s }, _) => {
                let new = !self.trade.contains_key(line);
                let t = self.trade.entry(*line).or_insert_with(|| TradeLine {
                    name: name.clone(),
                    at_s: *at_s,
                });
                t.at_s = t.at_s.max(*at_s);
                if new {
                    self.new_trade_line(*line, e.at, ctx);
                }
                // Every handset seen so far reads again at its next record.
                self.trade_changed_s = self.trade_changed_s.max(*at_s).max(self.clock_s);
            }
            (Body::SimSeen { handset, at_s }, Dest::Handset(sim)) => {
                if self.sim_at.len() >= self.max_keys && !self.sim_at.contains_key(&sim) {
                    self.cap_hits += 1;
                    return;
                }
                let at = self.sim_at.entry(sim).or_insert((*handset, *at_s));
                if at.1 <= *at_s {
                    *at = (*handset, *at_s);
                }
            }
            (
                Body::HandsetArrived {
                    handset,
                    name,
                    at_s,
                },
                Dest::Handset(sim),
            ) => self.sim_arrived(sim, *handset, name, *at_s, ctx.outbox),
            (
                Body::HandOver {
                    to,
                    to_name,
                    sim,
                    at_s,
                    young_name,
                },
                Dest::Handset(h),
            ) => {
                let ask = (*to, &**to_name, *sim, *at_s);
                if let Some(sent) = self.hand_over(h, ask, young_name.as_deref()) {
                    ctx.outbox.push(sent);
                }
            }
            (Body::HandedOver(off), Dest::Handset(h)) => self.take_over(h, off, e.at, ctx),
            (Body::NameEarlier(x), Dest::Handset(h)) => self.named(h, x, e.at, ctx.out),
            (Body::RunnerContact { handset, at_s }, Dest::Number(line)) => {
                let seen = self.at_line.entry(line).or_default();
                note(
                    seen,
                    MAX_AT_LINE,
                    |x| x.0,
                    |x| &mut x.1,
                    *handset,
                    *at_s,
                    || (*handset, *at_s),
                );
            }
            (
                Body::BurnAsk {
                    handset,
                    name,
                    first_s,
                    place,
                },
                Dest::Number(line),
            ) => self.burn_asked(line, (*handset, name, *first_s, *place), ctx.outbox),
            (
                Body::BurnHandOver {
                    to,
                    to_name,
                    first_s,
                    place,
                },
                Dest::Handset(h),
            ) => {
                if let Some(sent) = self.burn_hand_over(h, (*to, to_name, *first_s, *place)) {
                    ctx.outbox.push(sent);
                }
            }
            _ => {}
        }
    }

    fn expire(&mut self, watermark: Millis) {
        let now_s = ids::secs(watermark);
        let cutoff = now_s.saturating_sub(ids::span_secs(self.cfg.window_s));
        let young_cutoff = now_s.saturating_sub(ids::span_secs(self.cfg.young_handset_s));
        // From here on, handsets in one class silent since before `cutoff` and young
        // handsets first seen before `young_cutoff` are gone (see `Sweeps`).
        self.gone_before = Sweeps {
            handsets_s: self.gone_before.handsets_s.max(cutoff),
            young_s: self.gone_before.young_s.max(young_cutoff),
        };
        let cutoff = self.gone_before.handsets_s;
        // The moving handsets expire piece by piece.
        // A handset no longer moving loses its name and filter here, not by a walk of
        // those tables probing this one for each entry (a cache miss a moving handset at
        // every sweep).
        let mut heap = 0;
        let (names, reach) = (&mut self.names, &mut self.reach);
        self.moving.retain(|h, m| {
            if m.floor_s > cutoff {
                // Nothing in it to expire (see `History::floor_s`).
                heap += m.bytes();
                return true;
            }
            let Some(t) = self.handsets.get_mut(h) else {
                names.remove(h);
                reach.remove(h);
                return false;
            };
            m.stays.retain(|x| x.last_s >= cutoff);
            m.sims.retain(|x| x.at >= cutoff);
            m.lines.retain(|x| x.2 >= cutoff);
            m.contacted.retain(|x| x.at >= cutoff);
            let keep = match m.stays.len() {
                0 => {
                    self.handsets.remove(h);
                    false
                }
                1 => {
                    // Back in one class only: the history is no longer needed.
                    t.here = m.stays[0];
                    false
                }
                _ => {
                    heap += m.measure();
                    reach.insert(*h, reach_of(m));
                    true
                }
            };
            if !keep {
                names.remove(h);
                reach.remove(h);
            }
            keep
        });
        self.trade.retain(|_, t| t.at_s >= cutoff);
        // A SIM's note is refreshed once a period of its use (see `refresh_s`).
        let sim_cutoff = cutoff.saturating_sub(refresh_s(&self.cfg));
        self.sim_at.retain(|_, x| x.1 >= sim_cutoff);
        if self.sim_at.capacity() > 2 * self.sim_at.len() + 1024 {
            self.sim_at.shrink_to_fit();
        }
        self.heap_bytes = heap;
        self.forget_earlier(cutoff);
        self.at_line.retain(|_, seen| {
            seen.retain(|x| x.1 >= cutoff);
            !seen.is_empty()
        });
        let gone_before = cutoff;
        let held = &self.handsets;
        self.burnt
            .retain(|h, _| held.get(h).is_some_and(|t| !gone(t, gone_before)));
        // The gone entries of the two large tables, once their cutoff has moved on far
        // enough (see `Sweeps`).
        let part = |span: u64, n: u32| ids::span_secs(span) / n;
        if cutoff
            >= self
                .purged
                .handsets_s
                .saturating_add(part(self.cfg.window_s, 8))
        {
            self.purge_gone_handsets();
        }
        let young_cutoff = self.gone_before.young_s;
        if young_cutoff
            >= self
                .purged
                .young_s
                .saturating_add(part(self.cfg.young_handset_s, 2))
        {
            self.purge_gone_young();
        }
    }

    fn stats(&self) -> StateStats {
        StateStats {
            keys: self.handsets.len(),
            bytes: self.handsets.bytes()
                + ids::map_bytes(&self.moving)
                + ids::map_bytes(&self.trade)
                + ids::map_bytes(&self.sim_at)
                + ids::map_bytes(&self.names)
                + ids::map_bytes(&self.reach)
                + self.names.values().map(|n| n.len()).sum::<usize>()
                + ids::map_bytes(&self.earlier)
                + ids::map_bytes(&self.young)
                + ids::map_bytes(&self.at_line)
                + self
                    .at_line
                    .values()
                    .map(|v| v.capacity() * 12)
                    .sum::<usize>()
                + ids::map_bytes(&self.burnt)
                + self.young.values().map(|y| y.2.heap_len()).sum::<usize>()
                + self
                    .earlier
                    .values()
                    .flatten()
                    .map(|e| e.name.len() + std::mem::size_of::<Earlier>())
                    .sum::<usize>()
                + self.trade.values().map(|t| t.name.len()).sum::<usize>()
                + self.heap_bytes,
            cap_hits: self.cap_hits,
        }
    }

    fn reconfigure(&mut self, cfg: &Config) {
        self.cfg = cfg.runner_movement.clone();
        self.night = night_mask(&self.cfg);
        self.burn_ages = burn_ages(&self.cfg);
        self.max_keys = cfg.engine.max_keys_per_detector;
    }

    fn box_clone(&self) -> Box<dyn Detector> {
        Box::new(self.clone())
    }

    /// The hand-off notes follow the older state as a second value, and the SIM index (now
    /// kept by each SIM's shard, no longer rebuilt from the handsets) as a third, so a
    /// checkpoint from before them still loads: no hand-offs noted, the index rebuilt from
    /// the handsets held.
    fn save_state(&self) -> Result<Vec<u8>, codec::Error> {
        let tracks = TracksOut {
            handsets: &self.handsets,
            moving: &self.moving,
        };
        let mut v = codec::encode(&(tracks, &self.trade, self.cap_hits))?;
        v.extend(codec::encode(&(&self.earlier, &self.names, &self.young))?);
        v.extend(codec::encode(&self.sim_at)?);
        v.extend(codec::encode(&(&self.at_line, &self.burnt))?);
        v.extend(codec::encode(&self.gone_before)?);
        Ok(v)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), codec::Error> {
        let mut rest;
        let tracks: IdMap<TrackIn>;
        ((tracks, self.trade, self.cap_hits), rest) = codec::decode_prefix(bytes)?;
        self.handsets = ProbeMap::with_capacity(tracks.len());
        self.moving = IdMap::default();
        for (h, TrackIn { mut here, moved }) in tracks {
            if let Some(m) = moved {
                here.place = MOVING;
                // Its floor and bytes are measured in `rederive`, below.
                let x = History {
                    moved: m,
                    floor_s: 0,
                    bytes: 0,
                };
                self.moving.insert(h, x);
            }
            self.handsets.insert(h, Track { here });
        }
        (self.earlier, self.names, self.young) = if rest.is_empty() {
            Default::default()
        } else {
            let second;
            (second, rest) = codec::decode_prefix(rest)?;
            second
        };
        if rest.is_empty() {
            self.reindex(0);
        } else {
            (self.sim_at, rest) = codec::decode_prefix(rest)?;
        }
        // Whole burns' notes, written after the SIM index (none in older checkpoints).
        (self.at_line, self.burnt) = if rest.is_empty() {
            Default::default()
        } else {
            let burns;
            (burns, rest) = codec::decode_prefix(rest)?;
            burns
        };
        // The last sweep's cutoffs: older checkpoints were written after sweeps that
        // removed every entry gone.
        self.gone_before = if rest.is_empty() {
            Sweeps::default()
        } else {
            codec::decode(rest)?
        };
        self.purged = Sweeps::default();
        self.rederive();
        Ok(())
    }

    /// Every map but `trade` goes by the key it is kept on: the handset (`handsets`,
    /// `earlier`, `names`, `burnt`), the SIM (`sim_at`, `young`) or the trade line
    /// (`at_line`). `trade` is written by a
    /// broadcast: every shard holds all of it, so every part gets a copy.
    fn split(
        &mut self,
        parts: usize,
        owner: &dyn Fn(u64) -> usize,
        counted: usize,
    ) -> Vec<Box<dyn Detector>> {
        let cap_hits = std::mem::take(&mut self.cap_hits);
        let mut handsets = self.handsets.split(parts, owner).into_iter();
        let mut moving = super::split_map(&mut self.moving, parts, owner).into_iter();
        let mut sim_at = super::split_map(&mut self.sim_at, parts, owner).into_iter();
        let mut earlier = super::split_map(&mut self.earlier, parts, owner).into_iter();
        let mut names = super::split_map(&mut self.names, parts, owner).into_iter();
        let mut young = super::split_map(&mut self.young, parts, owner).into_iter();
        let mut at_line = super::split_map(&mut self.at_line, parts, owner).into_iter();
        let mut burnt = super::split_map(&mut self.burnt, parts, owner).into_iter();
        let trade = std::mem::take(&mut self.trade);
        self.rederive();
        (0..parts.max(1))
            .map(|p| {
                let mut d = RunnerMovement {
                    cfg: self.cfg.clone(),
                    handsets: handsets.next().unwrap_or_default(),
                    moving: moving.next().unwrap_or_default(),
                    trade: trade.clone(),
                    sim_at: sim_at.next().unwrap_or_default(),
                    earlier: earlier.next().unwrap_or_default(),
                    young: young.next().unwrap_or_default(),
                    at_line: at_line.next().unwrap_or_default(),
                    burnt: burnt.next().unwrap_or_default(),
                    trade_changed_s: 0,
                    clock_s: 0,
                    night: self.night,
                    burn_ages: self.burn_ages,
                    names: names.next().unwrap_or_default(),
                    reach: IdMap::default(),
                    max_keys: self.max_keys,
                    cap_hits: if p == counted { cap_hits } else { 0 },
                    heap_bytes: 0,
                    gone_before: self.gone_before,
                    purged: Sweeps::default(),
                };
                d.rederive();
                Box::new(d) as Box<dyn Detector>
            })
            .collect()
    }

    fn merge(&mut self, part: Box<dyn Detector>) {
        let part = super::part_of::<Self>(part);
        self.handsets.absorb(part.handsets);
        super::absorb_map(&mut self.moving, part.moving);
        super::absorb_map(&mut self.sim_at, part.sim_at);
        super::absorb_map(&mut self.earlier, part.earlier);
        super::absorb_map(&mut self.names, part.names);
        super::absorb_map(&mut self.young, part.young);
        super::absorb_map(&mut self.at_line, part.at_line);
        super::absorb_map(&mut self.burnt, part.burnt);
        // Every shard got the same broadcasts: the copies agree; the newest is kept all
        // the same.
        for (line, t) in part.trade {
            match self.trade.get(&line) {
                Some(mine) if mine.at_s >= t.at_s => {}
                _ => {
                    self.trade.insert(line, t);
                }
            }
        }
        self.cap_hits += part.cap_hits;
        self.gone_before = Sweeps {
            handsets_s: self.gone_before.handsets_s.max(part.gone_before.handsets_s),
            young_s: self.gone_before.young_s.max(part.gone_before.young_s),
        };
        self.purged = Sweeps::default();
        self.rederive();
    }

    #[cfg(test)]
    fn keys(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self.handsets.keys().map(|&k| ("handsets", k)).collect();
        v.extend(super::named_keys("moving", &self.moving));
        v.extend(super::named_keys("sim_at", &self.sim_at));
        v.extend(super::named_keys("earlier", &self.earlier));
        v.extend(super::named_keys("names", &self.names));
        v.extend(super::named_keys("young", &self.young));
        v.extend(super::named_keys("at_line", &self.at_line));
        v.extend(super::named_keys("burnt", &self.burnt));
        v.extend(super::named_keys("every/trade", &self.trade));
        v
    }
}

/// A handset in one class whose last record is older than `before`: gone at the last
/// sweep (see [`Sweeps`]). A moving handset's history is trimmed by the sweep that passes its
/// floor ([`History::floor_s`]).
fn gone(t: &Track, before: u32) -> bool {
    !t.moving() && t.here.last_s < before
}

impl RunnerMovement {
    /// Removes the handsets gone at the last sweep (memory only: every read already
    /// counts them as gone). Cheap when nothing can have gone since the last purge.
    #[cold]
    fn purge_gone_handsets(&mut self) {
        let before = self.gone_before.handsets_s;
        if self.purged.handsets_s >= before {
            return;
        }
        self.handsets.retain(|_, t| !gone(t, before));
        if self.handsets.capacity() > 2 * self.handsets.len() + 1024 {
            self.handsets.shrink_to_fit();
        }
        self.purged.handsets_s = before;
    }

    /// Removes the young handsets gone at the last sweep (memory only, as above).
    #[cold]
    fn purge_gone_young(&mut self) {
        let before = self.gone_before.young_s;
        if self.purged.young_s >= before {
            return;
        }
        self.young.retain(|_, y| y.1 >= before);
        if self.young.capacity() > 2 * self.young.len() + 1024 {
            self.young.shrink_to_fit();
        }
        self.purged.young_s = before;
    }

    /// What follows from the handsets held, after a load or a change of the keys held:
    /// the newest record (every handset reads again at its next record) and the heap bytes.
    fn rederive(&mut self) {
        let gone_before = self.gone_before.handsets_s;
        let handsets = &mut self.handsets;
        self.moving.retain(|h, _| handsets.contains_key(h));
        let moving = &self.moving;
        self.names.retain(|h, _| moving.contains_key(h));
        self.clock_s = (handsets.iter())
            .filter(|(_, t)| !gone(t, gone_before))
            .map(|(h, t)| match t.moving() {
                true => moving
                    .get(h)
                    .and_then(|m| m.stays.last())
                    .unwrap_or(&t.here),
                false => &t.here,
            })
            .map(|x| x.last_s)
            .max()
            .unwrap_or(0);
        self.trade_changed_s = self.clock_s;
        // Floors and bytes measured: a load leaves them unmeasured, and a split or a merge
        // brings histories last measured at different times.
        self.heap_bytes = (self.moving.values_mut()).map(History::measure).sum();
        self.reach = (self.moving.iter())
            .map(|(&h, m)| (h, reach_of(m)))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cells::CellMap;
    use crate::detect::testkit::*;
    use std::borrow::Cow;

    const MAP: &str = "cell,area,class\nm1,city,metro\nm2,city,metro\nt1,town,county\n";

    /// A young handset's name is written as the string it holds, inline or not: the
    /// checkpoint's `young` reads the same as when it held a `Box<str>`, both ways.
    #[test]
    fn a_name_is_encoded_as_the_string_it_holds() {
        let long = "h:".to_string() + &"ab".repeat(40);
        for s in [
            "",
            "h:00000000000004d2",
            "h:0123456789abcdef0123",
            long.as_str(),
        ] {
            let name = Name::new(s);
            assert_eq!(name.as_str(), s);
            assert_eq!(name.heap_len() > 0, s.len() > Name::INLINE, "{s}");
            let as_box: Box<str> = s.into();
            let young = (7u64, 9u32, name.clone());
            let old = codec::encode(&(7u64, 9u32, as_box)).unwrap();
            assert_eq!(codec::encode(&young).unwrap(), old);
            assert_eq!(codec::decode::<(u64, u32, Name)>(&old).unwrap(), young);
        }
        assert_eq!(std::mem::size_of::<Name>(), 24);
    }

    /// The young-handset list at its key cap: a SIM it holds is still answered and moves to
    /// the new handset; a SIM new to it is refused and counted; the same handset again asks
    /// nobody. (Guards the arrival's single probe of the list.)
    #[test]
    fn a_full_young_list_still_answers_the_sims_it_holds() {
        let mut d = RunnerMovement::new(&Config::default(), 1);
        let mut out = Vec::new();
        let (sim_a, sim_b) = (ids::id("s:a"), ids::id("s:b"));
        d.sim_arrived(sim_a, 1, &Name::new("h:one"), 100, &mut out);
        assert!(out.is_empty());
        d.sim_arrived(sim_b, 2, &Name::new("h:two"), 110, &mut out);
        assert!(out.is_empty());
        assert_eq!((d.cap_hits, d.young.contains_key(&sim_b)), (1, false));
        d.sim_arrived(sim_a, 3, &Name::new("h:three"), 120, &mut out);
        match &out[..] {
            [Sent {
                dest: Dest::Handset(1),
                body:
                    Body::HandOver {
                        to: 3,
                        young_name: Some(n),
                        at_s: 120,
                        ..
                    },
                ..
            }] => assert_eq!(&**n, "h:one"),
            other => panic!("expected one hand-over to handset 1, got {other:?}"),
        }
        let y = &d.young[&sim_a];
        assert_eq!((y.0, y.1, y.2.as_str()), (3, 120, "h:three"));
        assert_eq!(d.cap_hits, 1);
        out.clear();
        d.sim_arrived(sim_a, 3, &Name::new("h:three"), 130, &mut out);
        assert!(out.is_empty());
        assert_eq!(d.young[&sim_a].1, 130);
    }

    /// A call from `line` on handset `h` with SIM `sim`, in `cell`, at `ts`.
    fn rec<'a>(
        id: &'a str,
        ts: Millis,
        line: &'a str,
        to: &'a str,
        h: &'a str,
        sim: &'a str,
        cell: Option<&'a str>,
    ) -> Event<'a> {
        let mut e = call(id, ts, line, to, 30);
        e.imei = Some(Cow::Borrowed(h));
        e.imsi = Some(Cow::Borrowed(sim));
        e.cell = cell.map(Cow::Borrowed);
        e
    }

    fn harness(map: Option<&str>) -> Harness {
        let mut h = Harness::new();
        h.cells = map.map(|m| CellMap::parse(m).unwrap());
        h
    }

    /// Drives `d` through (hour since Monday 00:00 UTC, cell, to, sim) records of one
    /// handset, returning every finding.
    fn drive(
        d: &mut RunnerMovement,
        h: &mut Harness,
        plan: &[(i64, &str, &str, &str)],
    ) -> Vec<Finding> {
        // 2026-10-05T00:00Z, a Monday.
        let t0: Millis = 1_791_158_400_000;
        let mut out = Vec::new();
        for (i, (hour, cell, to, sim)) in plan.iter().enumerate() {
            let id = format!("e{i}");
            let ts = t0 + hour * HOUR + (i as Millis % 7) * MIN;
            let ev = rec(&id, ts, "runnerline", to, "H1", sim, Some(cell));
            out.extend(h.feed(d, &ev));
            out.extend(h.barrier(d));
        }
        out
    }

    /// A `deal_line` finding on `line` at `at`, as the engine shows it to the detectors.
    fn deal_verdict(line: &str, at: Millis) -> Finding {
        Finding {
            detector: crate::detect::deal_line::NAME,
            subject: line.into(),
            subject_id: ids::id(line),
            subject_kind: SubjectKind::Line,
            score: 1.0,
            event_time: at,
            window_start: at,
            window_end: at,
            related: vec![],
            evidence: Default::default(),
            lines: vec![(ids::id(line), line.to_string())],
        }
    }

    /// A generated city: its records, its labelled deal lines and its cell map.
    fn city(opts: &crate::generate::GenOptions) -> (Vec<u8>, Vec<String>, String) {
        use crate::generate::{generate_in_memory, write_cells};
        let (events, labels, _) = generate_in_memory(opts).expect("generate");
        let mut cells = Vec::new();
        write_cells(opts, &mut cells).expect("cells");
        let cells = String::from_utf8(cells).expect("cells are text");
        let deal_lines: Vec<String> = labels
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f.get(2) == Some(&"deal_line")).then(|| f[0].to_string())
            })
            .collect();
        assert!(!deal_lines.is_empty());
        (events, deal_lines, cells)
    }

    /// The records of a generated city that decode.
    fn decoded(events: &[u8]) -> Vec<Event<'_>> {
        let opts = crate::event::DecodeOptions::default();
        events
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| crate::event::decode(l, &opts).ok())
            .collect()
    }

    /// A deal-line verdict on `line`, as the engine shows it to the detector, and the
    /// trade line it sends applied as at a barrier.
    fn mark_trade(d: &mut RunnerMovement, line: &str, at: Millis) {
        let f = deal_verdict(line, at);
        let mut h = Harness::new();
        let mut sent = Vec::new();
        let mut ctx = Ctx {
            role: crate::exchange::Role::Barrier,
            contacts: &mut h.contacts,
            stream_start: at,
            out: &mut Vec::new(),
            outbox: &mut sent,
            cells: None,
            cell: None,
            shards: 1,
            shard: 0,
        };
        d.on_findings(at, &[f], &mut ctx);
        assert!(matches!(
            sent[..],
            [Sent {
                dest: Dest::Every,
                body: Body::TradeLine { .. },
                ..
            }]
        ));
        h.inbox.extend(sent.into_iter().map(|x| Evidence {
            dest: x.dest,
            at,
            event_id: "verdict".into(),
            order: [at as u64, 0, 0, 0],
            body: x.body,
        }));
        assert!(h.barrier(d).is_empty());
    }

    fn det() -> RunnerMovement {
        RunnerMovement::new(&Config::default(), 1000)
    }

    /// A runner: a night in the town (trap house), back to the city overnight, out again;
    /// calls the deal line throughout.
    const RUNNER: &[(i64, &str, &str, &str)] = &[
        (10, "m1", "dealline", "s1"),
        (14, "t1", "dealline", "s1"),
        (20, "t1", "cust1", "s1"),
        (23, "t1", "dealline", "s1"),
        (26, "t1", "cust2", "s1"),
        (33, "m2", "dealline", "s1"),
        (47, "m1", "dealline", "s1"),
        (50, "m1", "boss", "s1"),
        (58, "t1", "dealline", "s1"),
    ];

    #[test]
    fn runner_tied_to_a_deal_line_fires_with_its_lines() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let f = drive(&mut d, &mut h, RUNNER);
        assert_eq!(f.len(), 1, "{f:?}");
        let f = &f[0];
        assert_eq!(
            (f.subject.as_str(), f.subject_kind),
            ("H1", SubjectKind::Handset)
        );
        assert_eq!(f.related, ["runnerline"]);
        assert_eq!(f.lines, [(ids::id("dealline"), "dealline".to_string())]);
        // There (14:00), back (33:00): it fires on the record that completes the round.
        assert_eq!(f.evidence["switches"], 2);
        assert_eq!(f.evidence["ties"], serde_json::json!(["deal_contact"]));
        assert_eq!(f.evidence["county_night"], true);
        assert_eq!(f.evidence["metro_night"], true);
        assert_eq!(f.evidence["county_areas"], serde_json::json!(["town"]));
    }

    #[test]
    fn the_same_movement_without_a_tie_to_the_trade_does_not_fire() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        assert!(drive(&mut d, &mut h, RUNNER).is_empty());
    }

    #[test]
    fn sim_churn_ties_a_runner_without_a_deal_line() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        let plan: Vec<_> = RUNNER
            .iter()
            .enumerate()
            .map(|(i, p)| (p.0, p.1, "friend", ["s1", "s2", "s3"][i / 3]))
            .collect();
        let f = drive(&mut d, &mut h, &plan);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].evidence["ties"], serde_json::json!(["sim_churn"]));
        assert!(f[0].lines.is_empty());
    }

    /// A county resident working in the city every weekday, 08:00-18:00, calling a deal line
    /// (a customer): seen in the city only in working hours, so never like a runner.
    #[test]
    fn commuter_is_never_flagged_even_when_tied_to_the_trade() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let mut plan = Vec::new();
        for day in 0..7i64 {
            let base = day * 24;
            plan.push((base + 1, "t1", "dealline", "s1"));
            plan.push((base + 7, "t1", "dealline", "s1"));
            if day < 5 {
                for hour in [8, 11, 13, 15, 17] {
                    plan.push((base + hour, "m1", "dealline", "s1"));
                }
            }
            plan.push((base + 19, "t1", "dealline", "s1"));
            plan.push((base + 23, "t1", "dealline", "s1"));
        }
        assert!(drive(&mut d, &mut h, &plan).is_empty());
        // It did move back and forth: the rhythm is what kept it quiet.
        assert!(d.moving[&ids::id("H1")].stays.len() >= 10);
    }

    /// The commuters the first rule (stay lengths) flagged in the demo city: silent at home
    /// some evenings, so two working days in the city joined into one stay of over 12 hours.
    /// Clock hours seen in the city stay within the working day.
    #[test]
    fn commuter_silent_at_home_some_evenings_is_not_flagged() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let plan = [
            (8, "t1"),
            (9, "m1"),
            (13, "m1"),
            (16, "m1"),
            (18, "t1"),
            // Tuesday: nothing at home until Wednesday evening.
            (24 + 9, "m1"),
            (24 + 12, "m1"),
            (24 + 16, "m1"),
            (48 + 9, "m2"),
            (48 + 13, "m1"),
            (48 + 19, "t1"),
            (48 + 22, "t1"),
            (72 + 8, "t1"),
            (72 + 11, "m1"),
            (72 + 20, "t1"),
        ]
        .map(|(hr, c)| (hr, c, "dealline", "s1"));
        assert!(drive(&mut d, &mut h, &plan).is_empty());
    }

    #[test]
    fn without_a_cell_map_nothing_is_held_and_nothing_fires() {
        let (mut d, mut h) = (det(), harness(None));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        assert!(drive(&mut d, &mut h, RUNNER).is_empty());
        assert_eq!(d.stats().keys, 0);
    }

    #[test]
    fn unknown_cells_and_records_without_a_cell_are_skipped() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        // Every town record in a cell the map lacks: the movement is not seen.
        let plan: Vec<_> = RUNNER
            .iter()
            .map(|p| (p.0, if p.1 == "t1" { "t9" } else { p.1 }, p.2, p.3))
            .collect();
        assert!(drive(&mut d, &mut h, &plan).is_empty());
        assert!(d.handsets.contains_key(&ids::id("H1")));
        assert!(
            !d.moving.contains_key(&ids::id("H1")),
            "only metro cells were placed"
        );
        // A record without a cell is not placed either (the engine counts both kinds).
        let ev = rec("nc", 1_791_158_400_000, "l", "x", "H2", "s", None);
        assert!(h.feed(&mut d, &ev).is_empty());
        assert!(!d.handsets.contains_key(&ids::id("H2")));
    }

    /// Never seen at night, but in both places through more of the day than a working day
    /// (13 clock hours each): not a commuter either.
    #[test]
    fn seen_through_the_day_in_both_classes_counts_like_a_night() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let mut plan = Vec::new();
        for (day, cell) in [(0i64, "m1"), (1, "t1"), (2, "m1")] {
            for hour in 7..20 {
                plan.push((day * 24 + hour, cell, "dealline", "s1"));
            }
        }
        let f = drive(&mut d, &mut h, &plan);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].evidence["county_night"], false);
        assert_eq!(f[0].evidence["county_hours"], 13);
        // Twelve hours a day in the town would be a (long) working day: nothing.
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        plan.retain(|p| !(p.1 == "t1" && p.0 % 24 == 19));
        assert!(drive(&mut d, &mut h, &plan).is_empty());
    }

    #[test]
    fn one_trip_without_coming_back_is_not_enough() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        assert!(drive(&mut d, &mut h, &RUNNER[..5]).is_empty());
    }

    /// Records arrive minutes late, so a late one lands next to the stay it belongs to:
    /// the stays come out as in time order. (A late record *inside* a stay of the other
    /// class splits that stay at its own time; stays last hours, lateness minutes.)
    #[test]
    fn stays_are_the_same_whatever_the_arrival_order_within_lateness() {
        let obs = |class: u8, s| Stay {
            hours: 1,
            place: u32::from(class) << 31,
            first_s: s,
            last_s: s,
        };
        let seq = [
            (METRO, 10),
            (METRO, 20),
            (COUNTY, 30),
            (COUNTY, 40),
            (METRO, 50),
        ];
        let mut in_order = Vec::new();
        for (c, s) in seq {
            observe(&mut in_order, obs(c, s));
        }
        let mut shuffled = Vec::new();
        // The last metro record before the trip arrives after the first county one, and
        // the first county one after the return.
        for i in [0, 2, 1, 4, 3] {
            observe(&mut shuffled, obs(seq[i].0, seq[i].1));
        }
        assert_eq!(in_order, shuffled);
        assert_eq!(in_order.len(), 3);
    }

    /// Like [`drive`], for several handsets: (hour, cell, handset, sim) records to the deal
    /// line.
    fn drive_kit(
        d: &mut RunnerMovement,
        h: &mut Harness,
        plan: &[(i64, &str, &str, &str)],
    ) -> Vec<Finding> {
        let t0: Millis = 1_791_158_400_000;
        let mut out = Vec::new();
        for (i, (hour, cell, set, sim)) in plan.iter().enumerate() {
            let id = format!("k{i}");
            let ts = t0 + hour * HOUR + (i as Millis % 7) * MIN;
            let ev = rec(&id, ts, "runnerline", "dealline", set, sim, Some(cell));
            out.extend(h.feed(d, &ev));
            // Records hours apart: a barrier comes between each two.
            out.extend(h.barrier(d));
        }
        out
    }

    /// The runner's handset is replaced during its first trip and its SIM goes into the new
    /// one: neither handset alone goes there and back, the runner does.
    const SWAP_MID_TRIP: &[(i64, &str, &str, &str)] = &[
        (10, "m1", "H1", "s1"),
        (14, "t1", "H1", "s1"),
        (20, "t1", "H1", "s1"),
        // The SIM moves into H2, still in the town.
        (23, "t1", "H2", "s1"),
        (26, "t1", "H2", "s1"),
        (33, "m2", "H2", "s1"),
        (47, "m1", "H2", "s1"),
    ];

    /// Issue 13: a burner swapped within one trip. Before hand-offs were followed neither
    /// handset fired (each saw one switch).
    #[test]
    fn a_new_handset_that_takes_the_runners_sim_carries_the_movement_and_names_the_old_one() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let f = drive_kit(&mut d, &mut h, SWAP_MID_TRIP);
        let subjects: Vec<&str> = f.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(subjects, ["H2", "H1"], "{f:?}");
        assert_eq!(f[0].evidence["earlier_handsets"], serde_json::json!(["H1"]));
        assert_eq!(f[1].evidence["taken_over_by"], "H2");
        assert_eq!(f[1].lines, f[0].lines);
        // Once per window: more movement does not name H1 again.
        let more = drive_kit(
            &mut d,
            &mut h,
            &[(70, "m1", "H2", "s1"), (80, "t1", "H2", "s1")],
        );
        assert!(more.iter().all(|f| f.subject != "H1"), "{more:?}");
    }

    /// A burner replaced an hour after it first showed (one record, never moved): the
    /// handset its SIM went into takes that record over and names it when it fires.
    #[test]
    fn a_handset_replaced_within_hours_is_named_by_the_one_that_took_its_sim() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let mut plan = vec![(9, "m1", "H0", "s1")];
        plan.extend(SWAP_MID_TRIP.iter().map(|p| (p.0 + 1, p.1, p.2, p.3)));
        let f = drive_kit(&mut d, &mut h, &plan);
        let subjects: Vec<&str> = f.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(subjects, ["H2", "H0", "H1"], "{f:?}");
        // Young no more: a handset taking the SIM a day later takes nothing over.
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        drive_kit(&mut d, &mut h, &[(0, "m1", "H0", "s1")]);
        d.expire(1_791_158_400_000 + 2 * DAY);
        drive_kit(&mut d, &mut h, &[(49, "m1", "H1", "s1")]);
        assert!(!d.earlier.contains_key(&ids::id("H1")));
    }

    /// The same swap with a new SIM too (the whole kit burnt: new handset, SIM and number).
    fn whole_burn(
        plan: &[(i64, &'static str, &'static str, &'static str)],
    ) -> Vec<(i64, &'static str, &'static str, &'static str)> {
        plan.iter()
            .map(|p| (p.0, p.1, p.2, if p.2 == "H2" { "s2" } else { p.3 }))
            .collect()
    }

    /// Issue 13: a whole burn mid-trip. The new handset, first seen in the town where the
    /// old one went quiet three hours before, calls the line the old one called: it carries
    /// the movement, and names the old one. Before the burn link neither fired.
    #[test]
    fn a_whole_burn_is_linked_by_the_trade_line_and_the_place_and_names_the_old_one() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let f = drive_kit(&mut d, &mut h, &whole_burn(SWAP_MID_TRIP));
        let subjects: Vec<&str> = f.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(subjects, ["H2", "H1"], "{f:?}");
        assert_eq!(f[0].evidence["burnt_handsets"], serde_json::json!(["H1"]));
        assert_eq!(f[1].evidence["taken_over_by"], "H2");
        assert_eq!(f[1].evidence["taken_over_as"], "burn");
    }

    /// Two handsets near in time, calling the same line in the same town, but the old one
    /// is still in use after the new one shows: two people, not a burn.
    #[test]
    fn a_handset_still_in_use_is_not_linked_to_a_new_one() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let mut plan = whole_burn(SWAP_MID_TRIP);
        plan.insert(5, (27, "t1", "H1", "s1"));
        assert!(drive_kit(&mut d, &mut h, &plan).is_empty());
        assert!(!d.earlier.contains_key(&ids::id("H2")));
    }

    /// The new handset first shows in the city while the old one went quiet in the town:
    /// not where the old one was, so not its successor.
    #[test]
    fn a_new_handset_elsewhere_is_not_linked() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let plan: Vec<_> = whole_burn(SWAP_MID_TRIP)
            .into_iter()
            .map(|p| (p.0, if p.2 == "H2" { "m1" } else { p.1 }, p.2, p.3))
            .collect();
        drive_kit(&mut d, &mut h, &plan);
        assert!(!d.earlier.contains_key(&ids::id("H2")));
    }

    /// A runner asleep in the town (last record 20:00, back at 24:00) and a customer first
    /// seen at 21:00 there, calling the same line: the customer asks only six hours after
    /// its first record, by when the runner has shown it is still in use.
    #[test]
    fn a_customer_first_seen_while_a_runner_sleeps_is_not_linked() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let plan = [
            (10, "m1", "H1", "s1"),
            (14, "t1", "H1", "s1"),
            (20, "t1", "H1", "s1"),
            (21, "t1", "C1", "c1"),
            (24, "t1", "H1", "s1"),
            (28, "t1", "C1", "c1"),
            (30, "t1", "H1", "s1"),
        ];
        drive_kit(&mut d, &mut h, &plan);
        assert!(!d.earlier.contains_key(&ids::id("C1")));
    }

    /// A commuter (a customer of the line) replaces phone, SIM and number one evening: the
    /// new phone is linked, but the history it carries is still a commuter's.
    #[test]
    fn a_commuters_whole_new_phone_is_linked_and_still_a_commuter() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let mut plan = Vec::new();
        for day in 0..5i64 {
            let (set, sim) = if day < 2 { ("H1", "s1") } else { ("H2", "s2") };
            let base = day * 24;
            plan.push((base + 7, "t1", set, sim));
            for hour in [9, 12, 16] {
                plan.push((base + hour, "m1", set, sim));
            }
            plan.push((base + 20, "t1", set, sim));
            plan.push((base + 23, "t1", set, sim));
        }
        assert!(drive_kit(&mut d, &mut h, &plan).is_empty());
        assert!(
            d.earlier.contains_key(&ids::id("H2")),
            "the burn link was seen"
        );
    }

    /// A commuter's new phone takes the old SIM and the commuting history with it: still a
    /// commuter's rhythm, never flagged.
    #[test]
    fn a_commuters_new_handset_inherits_a_commuters_rhythm() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let mut plan = Vec::new();
        for day in 0..5i64 {
            let set = if day < 2 { "H1" } else { "H2" };
            let base = day * 24;
            plan.push((base + 7, "t1", set, "s1"));
            for hour in [9, 12, 16] {
                plan.push((base + hour, "m1", set, "s1"));
            }
            plan.push((base + 20, "t1", set, "s1"));
            plan.push((base + 23, "t1", set, "s1"));
        }
        assert!(drive_kit(&mut d, &mut h, &plan).is_empty());
        assert!(
            d.earlier.contains_key(&ids::id("H2")),
            "the hand-off was seen"
        );
    }

    /// Hand-off notes ride after the older state; a checkpoint written before them (the
    /// older state alone) still loads.
    #[test]
    fn hand_offs_survive_a_checkpoint_and_older_checkpoints_still_load() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        drive_kit(&mut d, &mut h, &SWAP_MID_TRIP[..5]);
        let mut restored = det();
        restored.load_state(&d.save_state().unwrap()).unwrap();
        assert_eq!(restored.earlier.len(), 1);
        mark_trade(&mut restored, "dealline", 1_791_158_400_000);
        let f = drive_kit(&mut restored, &mut h, &SWAP_MID_TRIP[5..]);
        assert_eq!(f.len(), 2, "{f:?}");
        // As the build before the histories moved out of the slot wrote it: one map of
        // (stay, history), the stay of a moving handset holding its floor and bytes.
        #[derive(Serialize)]
        struct Slot {
            here: Stay,
            moved: Option<Box<Moved>>,
        }
        let slots: IdMap<Slot> = (d.handsets.iter())
            .map(|(h, t)| {
                let moved = d.moving.get(h).map(|x| x.moved.clone());
                let here = Stay {
                    place: if moved.is_some() { 7 } else { t.here.place },
                    ..t.here
                };
                (*h, Slot { here, moved })
            })
            .collect();
        let older = codec::encode(&(&slots, &d.trade, d.cap_hits)).unwrap();
        // This build writes the same layout.
        let ((now, _, _), _): ((IdMap<TrackIn>, IdMap<TradeLine>, u64), _) =
            codec::decode_prefix(&d.save_state().unwrap()).unwrap();
        assert_eq!(now.len(), slots.len());
        for (h, t) in &now {
            assert_eq!(t.moved.as_deref(), d.moving.get(h).map(|m| &**m));
            // A moving handset's stay as its slot held it then: the floor and the bytes.
            let here = match d.moving.get(h) {
                Some(x) => Stay {
                    first_s: x.floor_s,
                    hours: x.bytes,
                    ..d.handsets[h].here
                },
                None => d.handsets[h].here,
            };
            assert_eq!(t.here, here);
        }
        let mut old = det();
        old.load_state(&older).unwrap();
        assert_eq!(old.stats().keys, d.stats().keys);
        assert!(old.earlier.is_empty());
        // Its moving handsets, unnamed, still expire behind the window.
        assert!(!old.moving.is_empty());
        assert!(old.moving.keys().all(|h| old.handsets[h].moving()));
        assert!(old.names.is_empty());
        old.expire(1_791_158_400_000 + 10 * DAY);
        assert_eq!(old.stats().keys, 0);
    }

    #[test]
    fn state_survives_a_checkpoint_and_expires_behind_the_window() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        drive(&mut d, &mut h, &RUNNER[..7]);
        let mut restored = det();
        restored.load_state(&d.save_state().unwrap()).unwrap();
        assert_eq!(restored.stats().keys, d.stats().keys);
        assert_eq!(
            restored.moving[&ids::id("H1")].stays,
            d.moving[&ids::id("H1")].stays
        );
        // The rest of the trip and the verdict, on the restored copy: it fires as the
        // original would have.
        mark_trade(&mut restored, "dealline", 1_791_158_400_000);
        assert_eq!(drive(&mut restored, &mut h, &RUNNER[7..]).len(), 1);
        restored.expire(1_791_158_400_000 + 10 * DAY);
        assert_eq!(restored.stats().keys, 0);
    }

    /// A name from `stem` whose hash falls on shard `shard` of `n`.
    fn on(stem: &str, shard: u64, n: u64) -> String {
        (0..)
            .map(|i| format!("{stem}{i}"))
            .find(|x| ids::id(x) % n == shard)
            .unwrap_or_default()
    }

    /// The young-handset and moving hand-offs and a plain runner, over `n` shards (each
    /// handset and the SIM where its hash falls), with a barrier every `every` records.
    fn kit_findings(n: usize, every: usize) -> Vec<(Millis, String, String)> {
        use crate::detect::shardkit::{key, Shards};
        // Fixed names, on different shards of two: the SIM and each of its handsets.
        let (h0, h1, h2) = (on("H0-", 0, 2), on("H1-", 1, 2), on("H2-", 0, 2));
        let (sim, r) = (on("s-", 1, 2), on("R-", 1, 2));
        let mut x = Shards::new(det(), n, Some(MAP));
        let t0: Millis = 1_791_158_400_000;
        let deal = deal_verdict("dealline", t0);
        x.show(ids::id("dealline"), t0, &[deal]);
        let mut plan: Vec<(i64, &str, &str, &str)> = vec![(9, "m1", &h0, &sim)];
        let swap = SWAP_MID_TRIP.iter().map(|p| {
            let set = if p.2 == "H1" { &h1 } else { &h2 };
            (p.0 + 1, p.1, set.as_str(), sim.as_str())
        });
        plan.extend(swap);
        plan.extend(RUNNER.iter().map(|p| (p.0 + 30, p.1, r.as_str(), "rs")));
        plan.sort_by_key(|p| p.0);
        let mut out = Vec::new();
        for (i, (hour, cell, set, sim)) in plan.iter().enumerate() {
            let id = format!("k{i}");
            let ts = t0 + hour * HOUR + (i as Millis % 7) * MIN;
            let ev = rec(&id, ts, "runnerline", "dealline", set, sim, Some(cell));
            out.extend(x.feed(&ev));
            if (i + 1) % every == 0 {
                out.extend(x.barrier());
            }
        }
        out.extend(x.barrier());
        let mut v: Vec<_> = out.iter().map(key).collect();
        v.sort();
        v
    }

    /// The SIM's notes live on the SIM's shard, a history on its handset's, the trade list
    /// on every shard: the same findings whatever the shard count.
    #[test]
    fn hand_offs_and_trade_lines_give_the_same_findings_on_one_two_and_three_shards() {
        for every in [1, 3] {
            let one = kit_findings(1, every);
            let taken = one.iter().filter(|f| f.2.contains("taken_over_by")).count();
            assert_eq!(taken, 2, "both earlier handsets named: {one:?}");
            assert!(one.iter().any(|f| f.1.starts_with("R-")), "{one:?}");
            for n in [2, 3] {
                assert_eq!(
                    kit_findings(n, every),
                    one,
                    "{n} shards, barrier every {every}"
                );
            }
        }
    }

    /// The hand-off and the naming wait for the barrier: before it, the new handset is a
    /// handset of its own; after it, it carries the earlier one's movement.
    #[test]
    fn a_hand_off_is_applied_at_the_barrier_and_the_earlier_handset_named_at_the_next() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let t0: Millis = 1_791_158_400_000;
        let feed = |d: &mut RunnerMovement, h: &mut Harness, i: usize| {
            let (hour, cell, set, sim) = SWAP_MID_TRIP[i];
            let id = format!("k{i}");
            let ts = t0 + hour * HOUR;
            let ev = rec(&id, ts, "runnerline", "dealline", set, sim, Some(cell));
            h.feed(d, &ev);
            h.barrier(d)
        };
        for i in 0..3 {
            assert!(feed(&mut d, &mut h, i).is_empty());
        }
        // H2 arrives: it asks the SIM's shard; at the barrier H1's history comes over.
        let h2 = ids::id("H2");
        let ev = rec(
            "k3",
            t0 + 23 * HOUR,
            "runnerline",
            "dealline",
            "H2",
            "s1",
            Some("t1"),
        );
        h.feed(&mut d, &ev);
        assert!(
            !d.moving.contains_key(&h2),
            "nothing taken over before the barrier"
        );
        let sent: Vec<_> = h.inbox.iter().map(|e| e.dest).collect();
        assert_eq!(sent, [Dest::Handset(ids::id("s1"))]);
        assert!(h.barrier(&mut d).is_empty());
        let m = d.moving.get(&h2).expect("H1's history");
        assert_eq!(m.stays.len(), 2);
        assert_eq!(d.earlier[&h2][0].name.as_ref(), "H1");
        assert!(feed(&mut d, &mut h, 4).is_empty());
        assert!(feed(&mut d, &mut h, 5).is_empty());
        // Back in the city at night (47:00, 23:00 on Tuesday): H2 fires on that record, H1
        // is named at the barrier after it, as of the same record.
        let ev = rec(
            "k6",
            t0 + 47 * HOUR,
            "runnerline",
            "dealline",
            "H2",
            "s1",
            Some("m1"),
        );
        let now = h.feed(&mut d, &ev);
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].subject, "H2");
        let then = h.barrier(&mut d);
        assert_eq!(then.len(), 1);
        assert_eq!(then[0].subject, "H1");
        assert_eq!(then[0].event_time, t0 + 47 * HOUR);
        assert_eq!(then[0].evidence["taken_over_by"], "H2");
    }

    /// A deal verdict reaches a handset's trade test at the barrier, not before: a record
    /// after the verdict but before the barrier does not see it; the barrier itself reads
    /// the handsets that called the new trade line, so a runner found that way needs no
    /// record after it (its line's verdict may come a barrier late, from another partition,
    /// after the runner went quiet), and its next record finds nothing more.
    #[test]
    fn a_trade_line_is_seen_at_the_barrier_which_reads_the_handsets_that_called_it() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        let t0: Millis = 1_791_158_400_000;
        for (i, p) in RUNNER.iter().enumerate() {
            let id = format!("e{i}");
            let ev = rec(
                &id,
                t0 + p.0 * HOUR,
                "runnerline",
                p.2,
                "H1",
                p.3,
                Some(p.1),
            );
            assert!(h.feed(&mut d, &ev).is_empty());
            assert!(h.barrier(&mut d).is_empty());
        }
        // The verdict comes after the runner's last record; its broadcast waits.
        let verdict_at = t0 + 60 * HOUR;
        let f = deal_verdict("dealline", verdict_at);
        let mut sent = Vec::new();
        let mut ctx = Ctx {
            role: Role::Sender,
            contacts: &mut h.contacts,
            stream_start: t0,
            out: &mut Vec::new(),
            outbox: &mut sent,
            cells: None,
            cell: None,
            shards: 1,
            shard: 0,
        };
        d.on_findings(verdict_at, &[f], &mut ctx);
        assert!(d.trade.is_empty(), "not before the barrier");
        // Another record of the handset in the town, calling a friend: nothing new.
        let ev = rec(
            "x1",
            verdict_at + MIN,
            "runnerline",
            "friend",
            "H1",
            "s1",
            Some("t1"),
        );
        assert!(h.feed(&mut d, &ev).is_empty());
        h.inbox.extend(sent.into_iter().map(|x| Evidence {
            dest: x.dest,
            at: verdict_at,
            event_id: "verdict".into(),
            order: [verdict_at as u64, 0, 0, 0],
            body: x.body,
        }));
        let f = h.barrier(&mut d);
        assert!(d.trade.contains_key(&ids::id("dealline")));
        assert_eq!(
            f.len(),
            1,
            "read at the barrier that brought the trade line: {f:?}"
        );
        assert_eq!(f[0].subject, "H1");
        assert_eq!(f[0].event_time, verdict_at);
        assert_eq!(f[0].lines, [(ids::id("dealline"), "dealline".to_string())]);
        let ev = rec(
            "x2",
            verdict_at + 2 * MIN,
            "runnerline",
            "friend",
            "H1",
            "s1",
            Some("t1"),
        );
        assert!(h.feed(&mut d, &ev).is_empty(), "once per window");
    }

    /// A generated city through 1, 2 and 3 shards, its deal lines marked as trade lines at
    /// the start, a barrier each minute of event time: the same findings, and the exchanges
    /// counted (for the README's cost per million records).
    #[test]
    fn a_generated_city_gives_the_same_runner_findings_on_one_two_and_three_shards() {
        use crate::detect::shardkit::{key, Shards};
        let (events, deal_lines, cells) = city(&crate::generate::GenOptions {
            seed: 1,
            subscribers: 5_000,
            days: 4,
            malformed_rate: 0.0,
            duplicate_rate: 0.0,
            late_rate: 0.0,
            ..Default::default()
        });
        let evs = decoded(&events);
        let run = |n: usize| {
            let d = RunnerMovement::new(&Config::default(), 1_000_000);
            let mut x = Shards::new(d, n, Some(&cells));
            let t0 = evs[0].ts;
            for line in &deal_lines {
                let f = deal_verdict(line, t0);
                x.show(ids::id(line), t0, &[f]);
            }
            let (mut out, mut minute) = (Vec::new(), t0 / MIN);
            for ev in &evs {
                if ev.ts / MIN > minute {
                    minute = ev.ts / MIN;
                    out.extend(x.barrier());
                }
                out.extend(x.feed(ev));
            }
            out.extend(x.barrier());
            let mut v: Vec<_> = out.iter().map(key).collect();
            v.sort();
            (v, x.sent)
        };
        let (one, sent) = run(1);
        let per_million =
            |k: &str| sent.get(k).copied().unwrap_or(0) * 1_000_000 / evs.len() as u64;
        eprintln!(
            "{} records, {} findings; per million records: {:?}",
            evs.len(),
            one.len(),
            sent.keys()
                .map(|k| (k.as_str(), per_million(k)))
                .collect::<Vec<_>>()
        );
        assert!(one.len() >= 5, "{}", one.len());
        // Hand-offs happen in this city (ordinary new phones, runners' burners).
        assert!(sent.contains_key("HandedOver"), "{sent:?}");
        assert!(sent.contains_key("NameEarlier"), "{sent:?}");
        for n in [2, 3] {
            assert_eq!(run(n).0, one, "{n} shards");
        }
    }

    /// A record older than everything in a swept history (late, but within the allowed
    /// lateness: a history begun minutes ago is newer than the watermark) lowers the
    /// floor, so the sweep whose cutoff passes that record visits the history and trims it.
    #[test]
    fn a_record_older_than_a_swept_history_makes_the_sweep_visit_it() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        drive(&mut d, &mut h, &RUNNER[..3]);
        let t0: Millis = 1_791_158_400_000;
        let window = 4 * DAY;
        // Nothing to trim: the history is measured, its floor its first stay's end (10:00).
        d.expire(t0 + window + 9 * HOUR);
        assert_eq!(d.moving[&ids::id("H1")].floor_s, ids::secs(t0 + 10 * HOUR));
        let late = t0 + 9 * HOUR + 30 * MIN;
        let ev = rec("late", late, "runnerline", "late1", "H1", "s1", Some("m1"));
        h.feed(&mut d, &ev);
        assert_eq!(d.moving[&ids::id("H1")].floor_s, ids::secs(late));
        // The cutoff passes the late record's contact, not the floor measured before it.
        d.expire(t0 + window + 9 * HOUR + 45 * MIN);
        let m = d.moving.get(&ids::id("H1")).expect("moving");
        assert!(m.contacted.iter().all(|c| c.id() != ids::id("late1")));
        assert_eq!(m.stays.len(), 2);
    }

    /// The sweep skips a moving handset's history only when it would have left it as it
    /// is: on a generated city with a one-day window (so sweeps trim), the same records
    /// swept with every history visited (every floor zeroed first) leave the same state and
    /// give the same findings, and most visits were skipped.
    #[test]
    fn the_sweep_skips_only_histories_it_would_leave_as_they_are() {
        use crate::detect::shardkit::{key, Shards};
        let (events, deal_lines, cells) = city(&crate::generate::GenOptions {
            seed: 2,
            subscribers: 3_000,
            days: 4,
            malformed_rate: 0.0,
            duplicate_rate: 0.0,
            ..Default::default()
        });
        let evs = decoded(&events);
        let mut cfg = Config::default();
        cfg.runner_movement.window_s = 86_400;
        let mut skip = Shards::new(RunnerMovement::new(&cfg, 1_000_000), 1, Some(&cells));
        let mut full = Shards::new(RunnerMovement::new(&cfg, 1_000_000), 1, Some(&cells));
        // The deal lines' verdicts, again every six hours (the trade list expires with
        // the window).
        let verdicts = |x: &mut Shards<RunnerMovement>, at: Millis| {
            for line in &deal_lines {
                let f = deal_verdict(line, at);
                x.show(ids::id(line), at, &[f]);
            }
        };
        let (t0, mut shown) = (evs[0].ts, evs[0].ts);
        verdicts(&mut skip, t0);
        verdicts(&mut full, t0);
        let history = |d: &RunnerMovement| {
            let mut v: Vec<(u64, Option<Stay>, Option<Moved>)> = d
                .handsets
                .iter()
                .map(|(h, t)| match d.moving.get(h) {
                    Some(m) => (*h, None, Some((**m).clone())),
                    None => (*h, Some(t.here), None),
                })
                .collect();
            v.sort_by_key(|x| x.0);
            v
        };
        let (mut found, mut sweep) = ((Vec::new(), Vec::new()), t0);
        let (mut skipped, mut visited, mut trimmed) = (0, 0, 0);
        for ev in &evs {
            if ev.ts >= sweep + 10 * MIN {
                sweep = ev.ts;
                found.0.extend(skip.barrier());
                found.1.extend(full.barrier());
                let wm = ev.ts - 15 * MIN;
                let cutoff = ids::secs(wm).saturating_sub(86_400);
                for x in full.d[0].moving.values_mut() {
                    match x.floor_s > cutoff {
                        true => skipped += 1,
                        false => visited += 1,
                    }
                    x.floor_s = 0;
                }
                let before = history(&full.d[0]);
                skip.d[0].expire(wm);
                full.d[0].expire(wm);
                let after = history(&full.d[0]);
                trimmed += usize::from(after != before);
                assert!(after == history(&skip.d[0]), "after the sweep at {wm}");
                // A handset no longer moving has lost its name and its filter.
                for d in [&skip.d[0], &full.d[0]] {
                    let mut names: Vec<u64> = d.names.keys().copied().collect();
                    let mut moving: Vec<u64> = d.moving.keys().copied().collect();
                    names.sort();
                    moving.sort();
                    assert_eq!(names, moving, "names at {wm}");
                    assert!(d.reach.keys().all(|h| d.moving.contains_key(h)), "at {wm}");
                }
            }
            if ev.ts >= shown + 6 * HOUR {
                shown = ev.ts;
                verdicts(&mut skip, ev.ts);
                verdicts(&mut full, ev.ts);
            }
            found.0.extend(skip.feed(ev));
            found.1.extend(full.feed(ev));
        }
        found.0.extend(skip.barrier());
        found.1.extend(full.barrier());
        let keys = |v: &[Finding]| {
            let mut k: Vec<_> = v.iter().map(key).collect();
            k.sort();
            k
        };
        assert!(!found.1.is_empty());
        assert_eq!(keys(&found.0), keys(&found.1));
        eprintln!("{skipped} histories skipped, {visited} visited; {trimmed} sweeps trimmed");
        assert!(trimmed > 100, "{trimmed}");
        assert!(
            skipped > 5 * visited,
            "{skipped} skipped, {visited} visited"
        );
    }

    /// A runner's new handset whose first record (the SIM just moved in) completes the
    /// round: judged at the barrier with the history it took over, as of that record. Read
    /// only at its next record, it fired hours late or, with no next record in the window,
    /// never (seed 5 of the demo city: 14 hours late).
    #[test]
    fn a_new_handsets_first_record_is_judged_with_the_history_it_took_over() {
        let (mut d, mut h) = (det(), harness(Some(MAP)));
        mark_trade(&mut d, "dealline", 1_791_158_400_000);
        let plan = [
            (10, "m1", "H1", "s1"),
            (14, "t1", "H1", "s1"),
            (20, "t1", "H1", "s1"),
            (23, "t1", "H1", "s1"),
        ];
        assert!(drive_kit(&mut d, &mut h, &plan).is_empty());
        let t0: Millis = 1_791_158_400_000;
        let ev = rec(
            "k9",
            t0 + 47 * HOUR,
            "runnerline",
            "dealline",
            "H2",
            "s1",
            Some("m1"),
        );
        assert!(h.feed(&mut d, &ev).is_empty(), "nothing before the barrier");
        let f = h.barrier(&mut d);
        let got: Vec<_> = f
            .iter()
            .map(|f| (f.subject.as_str(), f.event_time))
            .collect();
        assert_eq!(got, [("H2", t0 + 47 * HOUR), ("H1", t0 + 47 * HOUR)]);
        assert_eq!(f[0].evidence["switches"], 2);
    }
}
