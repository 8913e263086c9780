//! The alert (contract §2) and how a detector's finding becomes one.

use serde::{Deserialize, Serialize};

use crate::event::Millis;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    Line,
    Handset,
}

/// One alert, as published on the alert topic and written by `replay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic: detector, subject and the record that completed the detection.
    pub alert_id: String,
    pub detector: String,
    pub subject: String,
    pub subject_kind: SubjectKind,
    /// Strength of the evidence, 0..1.
    pub score: f64,
    /// Event time of the record that completed the detection.
    pub event_time: Millis,
    pub window_start: Millis,
    pub window_end: Millis,
    pub related: Vec<String>,
    /// The detector's figures and the thresholds they crossed.
    pub evidence: serde_json::Map<String, serde_json::Value>,
    /// Wall-clock time the alert was made.
    pub detected_at: Millis,
    /// Short hash of the detection configuration that made the alert (an addition to the
    /// contract: consumers that do not know it ignore it).
    #[serde(default)]
    pub config_version: String,
}

/// What a detector reports; the engine turns it into an [`Alert`] unless cooldown holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub detector: &'static str,
    pub subject: String,
    /// Hash of `subject` (cooldown and deal-line state are keyed by it).
    pub subject_id: u64,
    pub subject_kind: SubjectKind,
    pub score: f64,
    pub event_time: Millis,
    pub window_start: Millis,
    pub window_end: Millis,
    pub related: Vec<String>,
    pub evidence: serde_json::Map<String, serde_json::Value>,
    /// Lines this finding is evidence about, for the combined verdict: the subject line, both
    /// lines of a handover, the lines seen in a churning handset.
    pub lines: Vec<(u64, String)>,
}

/// Deterministic alert id: 128 bits of hash over detector, subject and completing record.
pub fn alert_id(detector: &str, subject: &str, event_id: &str) -> String {
    let mut buf = Vec::with_capacity(detector.len() + subject.len() + event_id.len() + 2);
    buf.extend_from_slice(detector.as_bytes());
    buf.push(0);
    buf.extend_from_slice(subject.as_bytes());
    buf.push(0);
    buf.extend_from_slice(event_id.as_bytes());
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&buf))
}

impl Finding {
    /// Makes the alert; `event_id` is the record that completed the detection.
    pub fn into_alert(self, event_id: &str, detected_at: Millis, config_version: &str) -> Alert {
        Alert {
            alert_id: alert_id(self.detector, &self.subject, event_id),
            detector: self.detector.to_string(),
            subject: self.subject,
            subject_kind: self.subject_kind,
            score: (self.score.clamp(0.0, 1.0) * 1000.0).round() / 1000.0,
            event_time: self.event_time,
            window_start: self.window_start,
            window_end: self.window_end,
            related: self.related,
            evidence: self.evidence,
            detected_at,
            config_version: config_version.to_string(),
        }
    }
}

/// Builds an evidence object: `evidence!{"recipients" => 41, "min_recipients" => 40}`.
#[macro_export]
macro_rules! evidence {
    ($($k:expr => $v:expr),* $(,)?) => {{
        let mut m = serde_json::Map::new();
        $( m.insert($k.to_string(), serde_json::json!($v)); )*
        m
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_id_is_deterministic_and_separates_fields() {
        assert_eq!(
            alert_id("bulk_sms", "a", "e1"),
            alert_id("bulk_sms", "a", "e1")
        );
        assert_ne!(
            alert_id("bulk_sms", "a", "e1"),
            alert_id("bulk_sms", "a", "e2")
        );
        assert_ne!(
            alert_id("bulk_sms", "ab", "c"),
            alert_id("bulk_sms", "a", "bc")
        );
        assert_eq!(alert_id("x", "y", "z").len(), 32);
    }
}
