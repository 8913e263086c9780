//! linewatch: flags deal-line behaviour in a live stream of pseudonymised call-detail records.
//!
//! County-lines networks run drug supply through a dedicated phone line: it bulk-texts
//! adverts to its customer list, customers contact it briefly, and the network churns SIMs,
//! handsets and numbers to stay ahead of disruption. linewatch spots those patterns from
//! traffic metadata only (never content), as records arrive.
//!
//! # Layout
//!
//! The data path is the module tree, source to sink:
//!
//! - [`event`]: decoding and validating one record; every rejection has a fixed [`event::Reason`].
//! - [`engine`]: dedup, watermark and lateness, shared state, detectors, cooldown, alerts.
//!   One engine type serves `replay`, `demo`, `tune` and the Kafka service.
//! - [`watermark`]: per-partition event-time watermarks.
//! - [`state`]: the shared per-line contact store every line detector reads.
//! - [`names`]: pseudonyms kept for alerts, packed (hex two digits to a byte).
//! - [`probemap`]: an id-keyed table whose slot for a key can be prefetched before the lookup.
//! - [`detect`]: the [`detect::Detector`] trait and one file per detector.
//! - [`alert`]: the alert format and deterministic ids.
//! - [`checkpoint`]: durable engine state: checkpoints, their stores, restore.
//! - [`replay`]: JSONL in, alerts, dead letters and a summary out.
//! - [`redact`]: raw identifiers taken out of dead letters before they leave the process.
//! - [`config`]: typed, validated configuration (`config/linewatch.toml` is the default).
//! - [`eval`]: precision, recall and delay against labels.
//! - [`tune`]: threshold sweeps over labelled traffic (`linewatch tune`).
//! - [`explain`]: an alert in plain language (`linewatch explain`).
//! - [`generate`]: labelled synthetic traffic.
//! - [`cells`]: the cell map.
//! - [`sheet`]: the CSV files analysts keep in spreadsheets, read and written with the `csv` crate.
//! - [`service`]: `linewatch run`, the engine between a Kafka consumer group and producer;
//!   [`kafka`] holds the client setup and error classification it shares.
//! - [`streams`]: the Kafka side of several instances sharing the work (internal topics,
//!   their placement, wire envelope and co-partitioned assignment).
//! - [`board`]: `linewatch board`, the operations-room web board over the alert topic.
//! - [`cli`]: the subcommands; `main.rs` only calls [`cli::main`].
//!
//! Identities are pseudonyms and are treated as secrets all the same: they appear in alerts
//! and dead letters (that is their purpose) but never in logs or metric labels.

pub mod alert;
pub mod board;
pub mod cells;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod detect;
pub mod engine;
pub mod eval;
pub mod event;
pub mod exchange;
pub mod explain;
pub mod generate;
pub mod hugepages;
pub mod ids;
pub mod idset;
pub mod kafka;
pub mod names;
pub mod probemap;
pub mod redact;
pub mod replay;
pub mod service;
pub mod sheet;
pub mod state;
pub mod streams;
pub mod tune;
pub mod watermark;
