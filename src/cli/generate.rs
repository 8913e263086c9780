//! `linewatch generate`: labelled synthetic traffic to a JSONL file, stdout or a Kafka topic.
//!
//! Arguments are resolved and checked (every problem in one line) before anything is
//! written. Records go through one `emit` closure, so the Kafka sink (`--kafka-brokers`,
//! `--topic`, `--rate`) sits beside the file one without touching the generator.
//!
//! To Kafka, every line is one message, malformed lines included (they are part of the
//! traffic the service must survive). The key is the record's `from` when the line parses
//! far enough to have one, else none, so one line's records stay in one partition as
//! mediation would keep them. The producer is the shared one of [`crate::kafka`] (the
//! `[kafka]` table of `--config` passes through); the command returns only when every
//! message is acknowledged, and the first failed delivery stops it with exit 1.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};

use super::{load_config, Failure, Outcome};
use crate::generate::{self, GenOptions, GenReport};
use crate::kafka::{self, KafkaSettings, Role};

/// Arguments of `linewatch generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ordinary subscribers in the synthetic city.
    #[arg(long, default_value_t = generate::DEFAULT_SUBSCRIBERS)]
    pub subscribers: usize,
    /// Days of traffic.
    #[arg(long, default_value_t = generate::DEFAULT_DAYS)]
    pub days: u32,
    /// Seed: the same seed and options give byte-identical output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Event time of the start, RFC 3339 (default 2026-10-05T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub start: Option<String>,
    /// Deal networks (default: max(2, subscribers / 2500)).
    #[arg(long)]
    pub networks: Option<usize>,
    /// Where the JSONL events go, in arrival order; `-` (the default without
    /// `--kafka-brokers`) for stdout.
    #[arg(long, value_name = "PATH|-")]
    pub output: Option<PathBuf>,
    /// Produce the events to a Kafka topic on these bootstrap servers instead of writing
    /// them (one message per line, key = the record's `from`). `[kafka]` properties of
    /// `--config` pass through.
    #[arg(long, alias = "kafka", value_name = "HOST:PORT,...")]
    pub kafka_brokers: Option<String>,
    /// The topic to produce to (with `--kafka-brokers`); it must exist.
    #[arg(long, value_name = "T")]
    pub topic: Option<String>,
    /// Messages per second to Kafka, malformed lines included; 0 = as fast as it goes.
    #[arg(long, value_name = "N", default_value_t = 0.0)]
    pub rate: f64,
    /// Labels CSV: `subject,kind,label,group,predecessor,first_seen_ms`.
    #[arg(long, value_name = "PATH")]
    pub labels: Option<PathBuf>,
    /// Manifest JSON: the options and the exact counts of what was written.
    #[arg(long, value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// Cell map CSV (`cell,area,class`) of the city, for `replay --cells`.
    #[arg(long, value_name = "PATH")]
    pub cells: Option<PathBuf>,
    /// Extra malformed lines per record.
    #[arg(long, value_name = "R", default_value_t = generate::DEFAULT_MALFORMED_RATE)]
    pub malformed_rate: f64,
    /// Share of records delivered twice.
    #[arg(long, value_name = "R", default_value_t = generate::DEFAULT_DUPLICATE_RATE)]
    pub duplicate_rate: f64,
    /// Share of records delivered more than 30 minutes after their event time.
    #[arg(long, value_name = "R", default_value_t = generate::DEFAULT_LATE_RATE)]
    pub late_rate: f64,
    /// Leave out the look-alikes (businesses, schools, repair shops, festive greetings).
    #[arg(long)]
    pub no_lookalikes: bool,
    /// Add this many club organisers (`lookalike_organiser`): ordinary subscribers who
    /// text the same 30-60 members two evenings a week, half of whom answer. None by
    /// default, so the project's cities stay as they are
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub organisers: usize,
    /// No summary line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// The manifest: the report, plus the options that made it.
#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(flatten)]
    report: &'a GenReport,
    options: &'a GenOptions,
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn create(path: &Path, what: &'static str) -> Result<BufWriter<super::Named<File>>, Failure> {
    super::create_output(path, what, 1 << 20)
}

/// Where the events go.
#[derive(Debug, Clone, PartialEq)]
enum Dest {
    /// A file, or stdout for `-`.
    File(PathBuf),
    /// A Kafka topic, paced to `rate` messages per second (0: unpaced).
    Kafka {
        brokers: String,
        topic: String,
        rate: f64,
    },
}

/// Checked arguments.
#[derive(Debug)]
struct Resolved {
    opts: GenOptions,
    dest: Dest,
}

/// Stage two of argument handling: checked options, or every problem in one line.
fn resolve(args: &Args) -> Result<Resolved, Failure> {
    let mut problems = Vec::new();
    let start_ms = match &args.start {
        None => generate::DEFAULT_START_MS,
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.timestamp_millis(),
            Err(e) => {
                problems.push(format!("--start {s:?} is not RFC 3339 ({e})"));
                generate::DEFAULT_START_MS
            }
        },
    };
    let opts = GenOptions {
        seed: args.seed,
        subscribers: args.subscribers,
        days: args.days,
        start_ms,
        networks: args.networks,
        malformed_rate: args.malformed_rate,
        duplicate_rate: args.duplicate_rate,
        late_rate: args.late_rate,
        lookalikes: !args.no_lookalikes,
        organisers: args.organisers,
    };
    problems.extend(opts.problems());
    for (flag, p) in [
        ("--labels", &args.labels),
        ("--manifest", &args.manifest),
        ("--cells", &args.cells),
    ] {
        if p.as_deref().is_some_and(is_dash) {
            problems.push(format!(
                "{flag} needs a file path (stdout is for the events)"
            ));
        }
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        problems.push(format!("--rate {} must be a number >= 0", args.rate));
    }
    let dest = match (&args.kafka_brokers, &args.topic) {
        (Some(b), Some(t)) => {
            if b.trim().is_empty() {
                problems.push("--kafka-brokers is empty".into());
            } else if !crate::config::brokers_ok(b) {
                problems.push(format!(
                    "--kafka-brokers {b:?} is not {}",
                    crate::config::BROKERS_ALLOWED
                ));
            }
            if t.trim().is_empty() {
                problems.push("--topic is empty".into());
            }
            if args.output.is_some() {
                problems.push("--output and --kafka-brokers exclude each other".into());
            }
            Dest::Kafka {
                brokers: b.clone(),
                topic: t.clone(),
                rate: args.rate,
            }
        }
        (Some(_), None) => {
            problems.push("--kafka-brokers needs --topic".into());
            Dest::File("-".into())
        }
        (None, Some(_)) => {
            problems.push("--topic needs --kafka-brokers".into());
            Dest::File("-".into())
        }
        (None, None) => {
            if args.rate != 0.0 {
                problems.push("--rate needs --kafka-brokers".into());
            }
            Dest::File(args.output.clone().unwrap_or_else(|| "-".into()))
        }
    };
    if problems.is_empty() {
        Ok(Resolved { opts, dest })
    } else {
        Err(Failure::usage(problems.join("; ")))
    }
}

pub fn main(args: Args, config: Option<&Path>) -> Outcome {
    // The generator does not depend on detection settings, but a bad --config is still an
    // error, as for every subcommand.
    // The generator does not depend on detection settings, but the `[kafka]` table is the
    // producer's, and a bad --config is an error for every subcommand.
    let cfg = load_config(config)?;
    let Resolved { opts, dest } = resolve(&args)?;
    let mut outputs: Vec<(&str, &Path)> = Vec::new();
    if let Dest::File(p) = &dest {
        outputs.push(("--output", p));
    }
    outputs.extend(args.labels.as_deref().map(|p| ("--labels", p)));
    outputs.extend(args.manifest.as_deref().map(|p| ("--manifest", p)));
    outputs.extend(args.cells.as_deref().map(|p| ("--cells", p)));
    let inputs: Vec<(&str, &Path)> = config.map(|p| ("--config", p)).into_iter().collect();
    super::distinct_files(&inputs, &outputs)?;
    // Open every output before the work starts, so a bad path or topic fails at once.
    let mut kafka_out = None;
    let mut out: Box<dyn Write> = match &dest {
        Dest::File(p) if is_dash(p) => {
            Box::new(BufWriter::with_capacity(1 << 20, io::stdout().lock()))
        }
        Dest::File(p) => Box::new(create(p, "output")?),
        Dest::Kafka {
            brokers,
            topic,
            rate,
        } => {
            let settings = KafkaSettings::new(brokers.clone(), cfg.kafka.clone());
            kafka_out = Some(KafkaOut::open(&settings, topic, *rate)?);
            Box::new(io::sink())
        }
    };
    let mut labels: Box<dyn Write> = match &args.labels {
        Some(p) => Box::new(create(p, "labels file")?),
        None => Box::new(io::sink()),
    };
    let manifest = args
        .manifest
        .as_deref()
        .map(|p| create(p, "manifest"))
        .transpose()?;
    if let Some(p) = &args.cells {
        let mut w = create(p, "cell map")?;
        generate::write_cells(&opts, &mut w)
            .map_err(|e| Failure::runtime(format!("writing cell map: {e}")))?;
    }

    let started = Instant::now();
    let generated = match &mut kafka_out {
        Some(k) => generate::generate(&opts, &mut |line| k.send(line), &mut labels),
        None => {
            let mut emit = |line: &[u8]| -> io::Result<()> {
                out.write_all(line)?;
                out.write_all(b"\n")
            };
            generate::generate(&opts, &mut emit, &mut labels)
        }
    };
    let report = match generated {
        Ok(r) => r,
        // A failed delivery stops the generator; say what failed, not that it stopped.
        Err(e) => {
            return Err(match kafka_out.as_ref().and_then(KafkaOut::failure) {
                Some(f) => f,
                None => Failure::runtime(format!("generating events: {e}")),
            })
        }
    };
    out.flush()
        .map_err(|e| Failure::runtime(format!("writing events: {e}")))?;
    let produced = kafka_out.map(KafkaOut::finish).transpose()?;
    let elapsed = started.elapsed().as_secs_f64();

    if let Some(mut m) = manifest {
        serde_json::to_writer_pretty(
            &mut m,
            &Manifest {
                report: &report,
                options: &opts,
            },
        )
        .map_err(|e| Failure::runtime(format!("writing manifest: {e}")))?;
        m.write_all(b"\n")
            .and_then(|_| m.flush())
            .map_err(|e| Failure::runtime(format!("writing manifest: {e}")))?;
    }
    if !args.quiet {
        // Counts only: no pseudonym ever goes to a log.
        eprintln!(
            "linewatch generate: {} lines ({} valid, {} malformed, {} duplicate, {} late), \
             {} deal lines in {} networks, {} labels, {:.1} s",
            report.events_written,
            report.valid,
            report.malformed,
            report.duplicates,
            report.late,
            report.deal_lines,
            report.networks,
            report.labels,
            elapsed
        );
        if let Some(p) = produced {
            eprintln!(
                "linewatch generate: {} messages acknowledged by topic {} in {:.1} s ({:.0} messages/s{})",
                p.delivered,
                p.topic,
                p.seconds,
                p.delivered as f64 / p.seconds.max(1e-9),
                if p.rate > 0.0 {
                    format!(", paced to {}", p.rate)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

/// Counts delivery reports; runs on the producer's polling thread.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<KafkaError>>,
}

impl ClientContext for Tally {}

impl ProducerContext for Tally {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| e.clone());
            }
        }
    }
}

/// What `--kafka-brokers` produced, for the summary line.
struct Produced {
    topic: String,
    delivered: u64,
    seconds: f64,
    rate: f64,
}

/// The Kafka sink: one message per line, keyed by `from`, paced, every delivery counted.
struct KafkaOut {
    producer: ThreadedProducer<Tally>,
    topic: String,
    rate: f64,
    /// When the first message was sent (pacing and the reported rate start there, not
    /// while the city is being built).
    first: Option<Instant>,
    sent: u64,
}

/// How long to wait for the last acknowledgements: librdkafka gives up on a message after
/// `delivery.timeout.ms` (two minutes by default) and reports it failed, so this only
/// guards against a report that never comes.
const FLUSH_LIMIT: Duration = Duration::from_secs(600);

impl KafkaOut {
    /// A producer with the shared settings, after checking the brokers answer and the topic
    /// exists (the broker does not create topics; failing here beats failing per message).
    fn open(settings: &KafkaSettings, topic: &str, rate: f64) -> Result<KafkaOut, Failure> {
        let producer: ThreadedProducer<Tally> = settings
            .client_config(Role::Producer)
            .create_with_context(Tally::default())
            .map_err(|e| {
                // librdkafka quotes the offending value, which may be a password.
                let mut m = e.to_string();
                for v in settings.properties.values().filter(|v| !v.is_empty()) {
                    m = m.replace(v.as_str(), "***");
                }
                Failure::usage(format!("invalid Kafka producer configuration: {m}"))
            })?;
        let md = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(15))
            .map_err(|e| {
                Failure::runtime(format!(
                    "Kafka brokers {} did not answer ({}): {e}",
                    settings.brokers,
                    kafka::error_kind(&e)
                ))
            })?;
        let exists = md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            return Err(Failure::runtime(format!(
                "topic {topic} does not exist on {} (topics are not created automatically; \
                 e.g. deploy/local/kafka.sh topic {topic} 4)",
                settings.brokers
            )));
        }
        Ok(KafkaOut {
            producer,
            topic: topic.to_string(),
            rate,
            first: None,
            sent: 0,
        })
    }

    /// Sends one line, waiting for its slot under `--rate` and for room in the producer's
    /// bounded queue. Fails once any delivery has failed, which stops the generator.
    fn send(&mut self, line: &[u8]) -> io::Result<()> {
        let first = *self.first.get_or_insert_with(Instant::now);
        if self.rate > 0.0 {
            let due = first + Duration::from_secs_f64(self.sent as f64 / self.rate);
            let now = Instant::now();
            // Sleeping only when a millisecond ahead keeps the sleeps few at high rates; the
            // schedule is absolute, so the overshoot of one sleep is made up by the next ones.
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
        if self.producer.context().failed.load(Ordering::Relaxed) > 0 {
            return Err(io::Error::other("a delivery to Kafka failed"));
        }
        let key = from_key(line);
        let mut rec = BaseRecord::<[u8], [u8]>::to(&self.topic).payload(line);
        if let Some(k) = &key {
            rec = rec.key(k.as_bytes());
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The queue is bounded: wait for acknowledgements to make room.
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    self.producer
                        .context()
                        .first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    self.producer
                        .context()
                        .failed
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(io::Error::other("a message could not be queued"));
                }
            }
        }
        self.sent += 1;
        Ok(())
    }

    /// The failure to report, if a delivery failed.
    fn failure(&self) -> Option<Failure> {
        let t = self.producer.context();
        let failed = t.failed.load(Ordering::Relaxed);
        if failed == 0 {
            return None;
        }
        let first = t
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (kind, message) = match &first {
            Some(e) => (kafka::error_kind(e), e.to_string()),
            None => ("other", "unknown error".to_string()),
        };
        Some(Failure::runtime(format!(
            "producing to topic {}: {failed} of {} messages not delivered ({kind}): {message}",
            self.topic, self.sent
        )))
    }

    /// Waits until every message is acknowledged; an error if any was not.
    fn finish(self) -> Result<Produced, Failure> {
        let flushed = self.producer.flush(FLUSH_LIMIT);
        if let Some(f) = self.failure() {
            return Err(f);
        }
        if let Err(e) = flushed {
            return Err(Failure::runtime(format!(
                "producing to topic {}: {} messages still unacknowledged after {} s ({})",
                self.topic,
                self.producer.in_flight_count(),
                FLUSH_LIMIT.as_secs(),
                kafka::error_kind(&e)
            )));
        }
        Ok(Produced {
            delivered: self.producer.context().delivered.load(Ordering::Relaxed),
            seconds: self.first.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            topic: self.topic,
            rate: self.rate,
        })
    }
}

/// The `from` of a line that parses as a record far enough to have a string `from`.
fn from_key(line: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct From<'a> {
        #[serde(borrow)]
        from: Cow<'a, str>,
    }
    serde_json::from_slice::<From<'_>>(line)
        .ok()
        .map(|f| f.from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: Args,
    }

    fn args(v: &[&str]) -> Args {
        T::try_parse_from(std::iter::once("t").chain(v.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn defaults_resolve_to_the_library_defaults() {
        let r = resolve(&args(&[])).unwrap();
        assert_eq!(r.opts, GenOptions::default());
        assert_eq!(r.dest, Dest::File("-".into()));
    }

    #[test]
    fn kafka_flags_come_together_and_exclude_output() {
        let r = resolve(&args(&[
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--topic",
            "cdr",
            "--rate",
            "500",
        ]))
        .unwrap();
        assert_eq!(
            r.dest,
            Dest::Kafka {
                brokers: "127.0.0.1:9092".into(),
                topic: "cdr".into(),
                rate: 500.0
            }
        );
        for bad in [
            &["--kafka-brokers", "b:1"][..],
            &["--topic", "cdr"],
            &["--rate", "10"],
            &["--kafka-brokers", "b:1", "--topic", "t", "--output", "x"],
            &["--kafka-brokers", "b:1", "--topic", "t", "--rate=-1"],
        ] {
            let e = resolve(&args(bad)).unwrap_err();
            assert_eq!(e.code, 2, "{bad:?}");
        }
    }

    #[test]
    fn the_key_is_from_when_the_line_has_one() {
        assert_eq!(
            from_key(br#"{"event_id":"e","from":"a\"b","to":"c"}"#).as_deref(),
            Some("a\"b")
        );
        assert_eq!(from_key(br#"{"from":7}"#), None);
        assert_eq!(from_key(b"not json"), None);
    }

    #[test]
    fn every_bad_argument_is_named_in_one_line() {
        let e = resolve(&args(&[
            "--start",
            "monday",
            "--days",
            "0",
            "--malformed-rate=-1",
            "--labels",
            "-",
        ]))
        .unwrap_err();
        assert_eq!(e.code, 2);
        for part in ["--start", "days", "malformed rate", "--labels"] {
            assert!(e.message.contains(part), "{}", e.message);
        }
        assert!(!e.message.contains('\n'));
    }

    #[test]
    fn start_takes_any_offset() {
        let o = resolve(&args(&["--start", "2026-10-05T01:00:00+01:00"])).unwrap();
        assert_eq!(o.opts.start_ms, generate::DEFAULT_START_MS);
    }
}
