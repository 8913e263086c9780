//! The realism knobs of the synthetic city, one constant each, with the reason for its value.
//!
//! They are constants rather than options because they describe the city, not the run: the
//! tuning tool compares thresholds across seeds, and that only means something if the
//! population behaves the same way every time. Change one here and every figure moves.
//! Clock times are UTC hours of day.

use std::ops::{Range, RangeInclusive};

const MIN_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

// ---- Geography -------------------------------------------------------------------------

/// Share of subscribers living in the metro (exporting) city; the rest live in county towns.
pub const METRO_SHARE: f64 = 0.45;
/// One county town per this many subscribers, within [`MIN_TOWNS`, `MAX_TOWNS`].
pub const SUBSCRIBERS_PER_TOWN: usize = 4_000;
pub const MIN_TOWNS: usize = 3;
pub const MAX_TOWNS: usize = 16;
/// Town sizes vary by this factor around the mean, so some towns are small markets.
pub const TOWN_SIZE_SPREAD: Range<f64> = 0.5..1.5;
/// Subscribers served per cell (an urban macro cell serves a few hundred active phones).
pub const SUBSCRIBERS_PER_CELL: usize = 300;
pub const MIN_CELLS_METRO: usize = 10;
pub const MIN_CELLS_TOWN: usize = 3;
/// Share of subscribers whose daytime cell is in the metro although they live elsewhere
/// (commuters), or elsewhere in the metro for metro residents.
pub const COMMUTER_SHARE: f64 = 0.15;
/// Share of metro residents who work in a county town (reverse commuters: fewer than the
/// other way, as in England's travel-to-work figures). With the above, about one subscriber
/// in ten crosses between metro and county every working day: the look-alike of a runner.
pub const REVERSE_COMMUTER_SHARE: f64 = 0.05;
/// Probability a record is served by some other cell of the same area (moving about).
pub const CELL_AWAY_PROB: f64 = 0.10;
/// Probability a record carries no cell at all (mediation drops it sometimes).
pub const NO_CELL_PROB: f64 = 0.02;

// ---- Social graph ----------------------------------------------------------------------

/// Social circle size: lognormal, median 12 and sigma 0.75, so most people have a dozen
/// contacts and a few percent have 50 or more (heavy tail).
pub const CIRCLE_MEDIAN: f64 = 12.0;
pub const CIRCLE_SIGMA: f64 = 0.75;
pub const CIRCLE_MIN: usize = 3;
pub const CIRCLE_MAX: usize = 150;
/// Share of contacts chosen in the subscriber's own area: phone graphs are local.
pub const LOCAL_SHARE: f64 = 0.80;
/// Contact choice skew: index = floor(n * u^k). A few favourites take most of the traffic.
pub const FAVOURITE_SKEW: f64 = 2.5;

// ---- Ordinary activity -----------------------------------------------------------------

/// Records a subscriber originates per day: lognormal median 8, sigma 0.5 (replies and the
/// rest bring the total to roughly 8-15 records per subscriber per day).
pub const ORIGINATED_MEDIAN_PER_DAY: f64 = 8.0;
pub const ORIGINATED_SIGMA: f64 = 0.5;
/// Saturday and Sunday activity relative to a weekday.
pub const WEEKEND_FACTOR: f64 = 0.85;
/// Share of originated records that are texts (the rest are calls).
pub const SMS_SHARE: f64 = 0.55;
/// Probability a text gets a text back, after a lognormal delay (median 3 min).
pub const SMS_REPLY_PROB: f64 = 0.35;
pub const REPLY_MEDIAN_S: f64 = 180.0;
pub const REPLY_SIGMA: f64 = 1.2;
pub const REPLY_MAX_S: f64 = 7_200.0;
/// Call durations: lognormal median 60 s, sigma 1.0, at most two hours; 15% unanswered (0 s).
pub const CALL_MEDIAN_S: f64 = 60.0;
pub const CALL_SIGMA: f64 = 1.0;
pub const CALL_MAX_S: f64 = 7_200.0;
pub const CALL_UNANSWERED: f64 = 0.15;
/// Share of subscribers who switch to a new handset once during the run, and who take a
/// replacement SIM once: two SIMs in one handset at most, never burner-like churn.
pub const HANDSET_CHANGE_SHARE: f64 = 0.003;
pub const SIM_CHANGE_SHARE: f64 = 0.002;
/// Relative activity per clock hour: quiet at night, busy through the day, evening peak.
pub const ORDINARY_HOURLY: [f64; 24] = [
    0.6, 0.3, 0.2, 0.15, 0.15, 0.3, 1.0, 2.5, 4.0, 4.5, 4.8, 5.0, 5.5, 5.2, 5.0, 5.0, 5.3, 6.0,
    6.5, 6.8, 6.5, 5.5, 3.8, 1.8,
];
/// Hours (weekdays) in which people are at their daytime cell.
pub const WORK_HOURS: Range<i64> = 9..17;

// ---- Delivery (mediation) --------------------------------------------------------------

/// Arrival delay mixture: most records within half a minute, a quarter within minutes, a tail
/// up to ten minutes. Never more than [`MAX_DELAY_MS`] (the engine allows 15 minutes).
pub const DELAY_FAST_SHARE: f64 = 0.70;
pub const DELAY_FAST_MS: Range<i64> = 1_000..30_000;
pub const DELAY_MEDIUM_SHARE: f64 = 0.25;
pub const DELAY_MEDIUM_MS: Range<i64> = 30_000..3 * MIN_MS;
pub const DELAY_SLOW_MS: Range<i64> = 3 * MIN_MS..MAX_DELAY_MS;
pub const MAX_DELAY_MS: i64 = 10 * MIN_MS;
/// A re-delivery comes this long after its original (producer retry, consumer replay).
pub const DUPLICATE_DELAY_MS: Range<i64> = 2_000..5 * MIN_MS;
/// Deliberately late records are delivered this long after their event time...
pub const LATE_DELAY_MS: Range<i64> = 31 * MIN_MS..60 * MIN_MS;
/// ...and only once the stream's newest event time is more than this ahead of them, so
/// they are late under any allowed lateness below 30 minutes, however sparse the traffic.
pub const LATE_MARGIN_MS: i64 = 30 * MIN_MS;
/// A late record not yet that far behind waits this much longer.
pub const LATE_RETRY_MS: i64 = 5 * MIN_MS;
/// Only events this far before the end can be made late (the stream must move past them).
pub const LATE_HEADROOM_MS: i64 = 2 * HOUR_MS;
/// The engine's default allowed lateness (config `engine.allowed_lateness_s`): used only for
/// the last few records of a stream, when nothing newer is left to push them past the margin.
pub const ASSUMED_LATENESS_MS: i64 = 15 * MIN_MS;
/// One record in this many carries `ts` as an RFC 3339 string rather than milliseconds.
pub const RFC3339_ONE_IN: u64 = 100;
/// Malformed lines are injected this long after the record they were made from.
pub const MALFORMED_DELAY_MS: Range<i64> = 0..MIN_MS;

// ---- Deal networks ---------------------------------------------------------------------

/// Deal networks by default: one per this many subscribers, at least [`MIN_NETWORKS`].
pub const SUBSCRIBERS_PER_NETWORK: usize = 2_500;
pub const MIN_NETWORKS: usize = 2;
/// Customer list size: lognormal median 90, sigma 0.55, within 40..300.
pub const CUSTOMERS_MEDIAN: f64 = 90.0;
pub const CUSTOMERS_SIGMA: f64 = 0.55;
pub const CUSTOMERS_MIN: usize = 40;
pub const CUSTOMERS_MAX: usize = 300;
/// Share of customers living in the network's county town.
pub const CUSTOMER_LOCAL_SHARE: f64 = 0.85;
/// Contacts per customer per week: lognormal median 3, sigma 0.6 ("a few times a week").
pub const CUSTOMER_CONTACTS_WEEK_MEDIAN: f64 = 3.0;
pub const CUSTOMER_CONTACTS_SIGMA: f64 = 0.6;
/// Customer contacts are calls this often (short: 5-90 s, a few unanswered), else texts.
pub const DEAL_CALL_SHARE: f64 = 0.55;
pub const DEAL_CALL_S: RangeInclusive<u32> = 5..=90;
pub const DEAL_CALL_UNANSWERED: f64 = 0.10;
/// The line texts a customer back ("10 mins", "outside") this often, within 30 s-8 min.
pub const LINE_REPLY_PROB: f64 = 0.40;
pub const LINE_REPLY_MS: Range<i64> = 30_000..8 * MIN_MS;
/// Customer contacts by clock hour: afternoons and nights.
pub const CUSTOMER_HOURLY: [f64; 24] = [
    3.0, 2.5, 1.5, 0.8, 0.3, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0, 4.5, 4.5, 4.5, 4.0, 3.5,
    3.5, 4.0, 4.5, 4.5, 4.0,
];
/// Adverts: a morning blast every day and an evening one this often.
pub const SECOND_BLAST_PROB: f64 = 0.6;
pub const FIRST_BLAST_HOURS: Range<i64> = 10..13;
pub const SECOND_BLAST_HOURS: Range<i64> = 16..20;
/// Share of the list each advert reaches (a few numbers are skipped or fail).
pub const BLAST_REACH: f64 = 0.95;
/// A blast goes out over this long.
pub const BLAST_SPREAD_MS: Range<i64> = 2 * MIN_MS..10 * MIN_MS;
/// The "new number" text reaches nearly the whole list, soon after the new line starts.
pub const NEW_NUMBER_REACH: f64 = 0.98;
pub const NEW_NUMBER_AFTER_MS: Range<i64> = 0..20 * MIN_MS;
/// A number is replaced every 1-3 days; the first one seen was already running, and lives
/// at least a day into the data so it is seen advertising (a number that shows no deal
/// behaviour in the window is not findable from metadata, and would only measure luck).
pub const LINE_LIFE_DAYS: Range<f64> = 1.0..3.0;
pub const FIRST_LINE_LIFE_DAYS: Range<f64> = 1.0..2.5;
/// No replacement this close to the end, so every new line is seen working.
pub const LAST_SWAP_BEFORE_END_MS: i64 = 8 * HOUR_MS;
/// The new number keeps the handset this often (the handset sees a new SIM each time).
pub const SAME_HANDSET_PROB: f64 = 0.7;
/// For this long after a change some customers still contact the old number.
pub const STRAGGLER_WINDOW_MS: i64 = 12 * HOUR_MS;
pub const STRAGGLER_PROB: f64 = 0.25;
/// Runners per network, their SIM (and line) lifetime, and how often they also change handset.
pub const RUNNERS: RangeInclusive<usize> = 1..=3;
pub const RUNNER_SIM_DAYS: Range<f64> = 0.7..1.6;
pub const FIRST_RUNNER_SIM_DAYS: Range<f64> = 0.2..1.6;
pub const RUNNER_NEW_HANDSET_PROB: f64 = 0.2;
/// Of those handset replacements, the share that burns handset and SIM together (after a
/// scare); the rest replace a broken, lost or seized handset and move the runner's SIM
/// (and number, which the line knows) into the new one, at any moment of the SIM's life.
pub const RUNNER_BURN_BOTH_PROB: f64 = 0.25;
/// Per runner per day: calls to the line, calls from the line, calls to the controller.
pub const RUNNER_CALLS_TO_LINE: f64 = 4.0;
pub const LINE_CALLS_TO_RUNNER: f64 = 2.0;
pub const RUNNER_CALLS_TO_CONTROLLER: f64 = 1.5;
/// Runner call durations: lognormal median 40 s.
pub const RUNNER_CALL_MEDIAN_S: f64 = 40.0;
/// A runner's first trip to the town leaves at this clock hour on the first day and lasts
/// this many hours.
pub const RUNNER_OUT_HOURS: Range<i64> = 10..15;
pub const RUNNER_AWAY_HOURS: Range<i64> = 10..16;
/// Later trips follow the trade: out to the town for hours to days (a "shift" in the trap
/// house, delivering the orders the line takes), back to the city for a rest and to
/// restock, at any hour.
pub const RUNNER_TRIP_HOURS: Range<f64> = 6.0..60.0;
pub const RUNNER_CITY_HOURS: Range<f64> = 8.0..36.0;
/// While a runner is in the town, it delivers this share of customer orders: it rings the
/// customer ("outside", "two minutes") a few minutes after the order reached the line.
pub const RUNNER_DELIVERY_PROB: f64 = 0.5;
pub const RUNNER_DELIVERY_AFTER_MS: Range<i64> = 2 * MIN_MS..20 * MIN_MS;
pub const RUNNER_DELIVERY_CALL_S: RangeInclusive<u32> = 8..=45;

// ---- Look-alikes -----------------------------------------------------------------------

/// Businesses sending appointment reminders: one per this many subscribers.
pub const SUBSCRIBERS_PER_BUSINESS: usize = 2_500;
/// Reminders per morning (Monday-Saturday), to different clients each day.
pub const BUSINESS_DAILY: RangeInclusive<usize> = 40..=120;
/// Clientele is this many times the daily count; a client is not reminded twice in this many days.
pub const BUSINESS_CLIENTELE_FACTOR: usize = 10;
pub const BUSINESS_REMIND_GAP_DAYS: u32 = 5;
/// Reminders go out from 08:00, one every few seconds (an automated sender).
pub const BUSINESS_SEND_HOUR: i64 = 8;
pub const BUSINESS_SEND_STEP_MS: Range<i64> = 3_000..20_000;
/// Clients text back ("confirmed") or call (2-6 minutes) this often.
pub const BUSINESS_REPLY_PROB: f64 = 0.25;
pub const BUSINESS_CALL_PROB: f64 = 0.12;
pub const BUSINESS_CALL_S: RangeInclusive<u32> = 120..=360;
/// Schools: one per this many subscribers; each texts every parent once, on one morning.
pub const SUBSCRIBERS_PER_SCHOOL: usize = 8_000;
pub const SCHOOL_PARENTS: RangeInclusive<usize> = 200..=500;
pub const SCHOOL_SEND_MS: Range<i64> = 7 * HOUR_MS + 30 * MIN_MS..8 * HOUR_MS + 30 * MIN_MS;
pub const SCHOOL_SEND_STEP_MS: Range<i64> = 500..3_000;
pub const SCHOOL_REPLY_PROB: f64 = 0.05;
/// Repair shops: one per this many subscribers; the test handset sees customers' SIMs.
pub const SUBSCRIBERS_PER_REPAIR: usize = 10_000;
pub const REPAIR_DAILY: RangeInclusive<usize> = 15..=40;
pub const REPAIR_HOURS: Range<i64> = 9..18;
pub const REPAIR_CALL_S: RangeInclusive<u32> = 0..=8;
pub const REPAIR_TEST_SMS_PROB: f64 = 0.3;
/// Festive greetings: this share of subscribers, among those with enough friends, text all
/// their friends (up to the maximum) within half an hour of one midnight.
pub const FESTIVE_SHARE: f64 = 0.01;
pub const FESTIVE_MIN_FRIENDS: usize = 30;
pub const FESTIVE_MAX_FRIENDS: usize = 80;
pub const FESTIVE_START_MS: Range<i64> = 0..5 * MIN_MS;
pub const FESTIVE_SPREAD_MS: Range<i64> = 10 * MIN_MS..25 * MIN_MS;
/// About half the friends reply, after a lognormal delay (median 25 min, at most 4 h).
pub const FESTIVE_REPLY_PROB: f64 = 0.5;
pub const FESTIVE_REPLY_MEDIAN_S: f64 = 1_500.0;
pub const FESTIVE_REPLY_MAX_S: f64 = 14_400.0;

/// Club organisers (opt-in: `generate --organisers N`): an ordinary subscriber who runs a
/// team or a club and texts the same members on set evenings ("game on tonight? reply IN"),
/// two evenings a week (two days apart, then five), from this hour (UTC).
pub const ORGANISER_MEMBERS: Range<usize> = 30..60;
pub const ORGANISER_HOURS: Range<i64> = 16..19;
/// The texts go out one by one, a few seconds apart, from a start within half an hour.
pub const ORGANISER_START_MS: Range<i64> = 0..30 * MIN_MS;
pub const ORGANISER_GAP_MS: Range<i64> = 2_000..8_000;
/// Half the members answer within the hour; a fifth of those ring too, briefly.
pub const ORGANISER_REPLY_PROB: f64 = 0.5;
pub const ORGANISER_REPLY_MS: Range<i64> = MIN_MS..HOUR_MS;
pub const ORGANISER_CALL_PROB: f64 = 0.2;
pub const ORGANISER_CALL_AFTER_MS: Range<i64> = MIN_MS..30 * MIN_MS;
pub const ORGANISER_CALL_S: Range<u32> = 20..180;
