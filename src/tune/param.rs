//! `--param section.key=VALUES`: parsing, and making one validated [`Config`] per combination.
//!
//! A parameter is set into a `toml::Value` copy of the base configuration and the result is
//! deserialised as a [`Config`], so the config's own serde model decides which keys
//! exist and what type they take, and [`Config::validate`] checks every combination. Nothing
//! here repeats the config's rules.

use std::fmt;

use crate::config::Config;

use super::TuneError;

/// Most values one `--param` may expand to: a typo such as `0..1000000:1` should be an
/// error, not a day of replays.
pub const MAX_VALUES: usize = 1_000;
/// Most combinations one sweep may run (each is a full replay).
pub const MAX_COMBINATIONS: usize = 10_000;

/// One value of a swept parameter, typed like the config key it sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl ParamValue {
    /// Position on a plot axis.
    pub fn as_f64(self) -> f64 {
        match self {
            ParamValue::Int(i) => i as f64,
            ParamValue::Float(f) => f,
            ParamValue::Bool(b) => f64::from(u8::from(b)),
        }
    }

    fn to_toml(self) -> toml::Value {
        match self {
            ParamValue::Int(i) => toml::Value::Integer(i),
            ParamValue::Float(f) => toml::Value::Float(f),
            ParamValue::Bool(b) => toml::Value::Boolean(b),
        }
    }

    /// As JSON, for `--format json`.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            ParamValue::Int(i) => i.into(),
            ParamValue::Float(f) => f.into(),
            ParamValue::Bool(b) => b.into(),
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// The type of a config key, read from the base configuration's TOML form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Bool,
}

/// One swept parameter: `section.key` and its values in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// `section.key`, as in the config file.
    pub key: String,
    pub section: String,
    pub name: String,
    pub values: Vec<ParamValue>,
}

/// Sections that do not change what the detectors find: sweeping them would replay the same
/// result many times over.
const NOT_DETECTION: [&str; 2] = ["service", "kafka"];

impl Param {
    /// Parses `section.key=v1,v2,...` or `section.key=start..end:step` (end inclusive)
    /// against the keys and types of `base`.
    pub fn parse(spec: &str, base: &Config) -> Result<Param, TuneError> {
        let (key, values) = spec.split_once('=').ok_or_else(|| {
            TuneError(format!(
                "--param {spec:?}: expected section.key=VALUES (a list a,b,c or a range start..end:step)"
            ))
        })?;
        let key = key.trim();
        let (section, name) = key.split_once('.').ok_or_else(|| {
            TuneError(format!(
                "--param {key}: name the key as section.key, e.g. bulk_sms.min_recipients"
            ))
        })?;
        if NOT_DETECTION.contains(&section) {
            return Err(TuneError(format!(
                "--param {key}: [{section}] does not affect detection, so it cannot be tuned"
            )));
        }
        let root = base_toml(base)?;
        let table = root
            .get(section)
            .and_then(toml::Value::as_table)
            .ok_or_else(|| {
                TuneError(format!(
                    "--param {key}: unknown parameter (no section [{section}] in the configuration)"
                ))
            })?;
        let current = table.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = table.keys().map(String::as_str).collect();
            known.sort_unstable();
            TuneError(format!(
                "--param {key}: unknown parameter (section [{section}] has {})",
                known.join(", ")
            ))
        })?;
        let kind = match current {
            toml::Value::Integer(_) => Kind::Int,
            toml::Value::Float(_) => Kind::Float,
            toml::Value::Boolean(_) => Kind::Bool,
            _ => {
                return Err(TuneError(format!(
                    "--param {key}: only numbers and true/false can be swept"
                )))
            }
        };
        let values = parse_values(key, values.trim(), kind)?;
        Ok(Param {
            key: key.to_string(),
            section: section.to_string(),
            name: name.to_string(),
            values,
        })
    }
}

fn base_toml(base: &Config) -> Result<toml::Value, TuneError> {
    toml::Value::try_from(base)
        .map_err(|e| TuneError(format!("cannot represent the configuration as TOML: {e}")))
}

fn parse_values(key: &str, text: &str, kind: Kind) -> Result<Vec<ParamValue>, TuneError> {
    let bad = |why: String| TuneError(format!("--param {key}: {why}"));
    if text.is_empty() {
        return Err(bad("no values given".into()));
    }
    let values = if let Some((range, step)) = text.split_once("..").map(|(s, rest)| {
        let (end, step) = rest.split_once(':').unwrap_or((rest, ""));
        ((s, end), step)
    }) {
        if kind == Kind::Bool {
            return Err(bad(
                "a true/false key takes a list (true,false), not a range".into(),
            ));
        }
        if step.is_empty() {
            return Err(bad(format!(
                "range {text:?} needs a step: start..end:step, e.g. 20..80:5"
            )));
        }
        let start = one(key, range.0, kind)?.as_f64();
        let end = one(key, range.1, kind)?.as_f64();
        let step_v = one(key, step, kind)?.as_f64();
        if step_v <= 0.0 {
            return Err(bad(format!("range step must be positive, got {step}")));
        }
        if end < start {
            return Err(bad(format!(
                "range end {} is below its start {}",
                range.1.trim(),
                range.0.trim()
            )));
        }
        // A small tolerance so 0.5..0.7:0.1 includes 0.7 despite binary fractions. Counted
        // in floating point: a tiny step makes more values than any integer holds, and the
        // cast would saturate and wrap to an empty sweep.
        let count = ((end - start) / step_v + 1e-9).floor() + 1.0;
        if !count.is_finite() || count > MAX_VALUES as f64 {
            return Err(bad(format!(
                "range {text:?} has {count:.0} values, more than {MAX_VALUES}"
            )));
        }
        let n = count as usize;
        (0..n)
            .map(|i| {
                let v = start + i as f64 * step_v;
                match kind {
                    Kind::Int => ParamValue::Int(v.round() as i64),
                    // Rounded so 0.5 + 0.1 prints and compares as 0.6.
                    _ => ParamValue::Float((v * 1e9).round() / 1e9),
                }
            })
            .collect::<Vec<_>>()
    } else {
        text.split(',')
            .map(|v| one(key, v, kind))
            .collect::<Result<Vec<_>, _>>()?
    };
    if values.len() > MAX_VALUES {
        return Err(bad(format!("more than {MAX_VALUES} values")));
    }
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            return Err(bad(format!("value {v} is given twice")));
        }
    }
    Ok(values)
}

fn one(key: &str, text: &str, kind: Kind) -> Result<ParamValue, TuneError> {
    let t = text.trim();
    let bad = |what: &str| TuneError(format!("--param {key}: {t:?} is not {what}"));
    match kind {
        Kind::Int => t
            .parse::<i64>()
            .map(ParamValue::Int)
            .map_err(|_| bad("a whole number (this key takes integers)")),
        Kind::Float => t
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(ParamValue::Float)
            .ok_or_else(|| bad("a number")),
        Kind::Bool => t
            .parse::<bool>()
            .map(ParamValue::Bool)
            .map_err(|_| bad("true or false")),
    }
}

/// One combination of swept values and the configuration it makes.
#[derive(Debug, Clone)]
pub struct Combination {
    /// One value per parameter, in `--param` order.
    pub values: Vec<ParamValue>,
    pub config: Config,
}

/// Every combination of the parameters' values (first parameter varying slowest), each a
/// validated configuration. Any invalid combination is an error naming its values.
pub fn grid(base: &Config, params: &[Param]) -> Result<Vec<Combination>, TuneError> {
    for (i, p) in params.iter().enumerate() {
        if params[..i].iter().any(|q| q.key == p.key) {
            return Err(TuneError(format!("--param {} is given twice", p.key)));
        }
    }
    let total = params
        .iter()
        .try_fold(1usize, |n, p| n.checked_mul(p.values.len()))
        .filter(|n| *n <= MAX_COMBINATIONS)
        .ok_or_else(|| {
            TuneError(format!(
                "the parameters make more than {MAX_COMBINATIONS} combinations; sweep fewer values"
            ))
        })?;
    let root = base_toml(base)?;
    let mut out = Vec::with_capacity(total);
    for index in 0..total {
        // Mixed-radix digits of `index`, last parameter fastest.
        let mut rest = index;
        let mut values = vec![ParamValue::Int(0); params.len()];
        for (slot, p) in params.iter().enumerate().rev() {
            values[slot] = p.values[rest % p.values.len()];
            rest /= p.values.len();
        }
        let mut doc = root.clone();
        for (p, v) in params.iter().zip(&values) {
            // Parsing the parameter checked the section is a table holding the key.
            if let Some(t) = doc.get_mut(&p.section).and_then(toml::Value::as_table_mut) {
                t.insert(p.name.clone(), v.to_toml());
            }
        }
        // Straight from the value, not through TOML text: a problem's line number in a
        // generated document would mean nothing to the user.
        let invalid = |e: &dyn fmt::Display| {
            TuneError(format!(
                "--param {} makes an invalid configuration: {}",
                describe(params, &values),
                crate::config::plain_type_error(e.to_string().trim_end())
            ))
        };
        let config: Config = doc.try_into().map_err(|e: toml::de::Error| invalid(&e))?;
        config.validate().map_err(|e| invalid(&e))?;
        out.push(Combination { values, config });
    }
    Ok(out)
}

/// `a.b=1 c.d=0.5`: a combination as the user would write it.
pub fn describe(params: &[Param], values: &[ParamValue]) -> String {
    params
        .iter()
        .zip(values)
        .map(|(p, v)| format!("{}={v}", p.key))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_too_small_to_count_is_the_value_limit_not_an_empty_sweep() {
        let e =
            Param::parse("deal_line.threshold=0.5..0.9:1e-300", &Config::default()).unwrap_err();
        assert!(e.0.contains("more than 1000"), "{e}");
        let e = Param::parse("bulk_sms.min_recipients=1..5000:1", &Config::default()).unwrap_err();
        assert!(e.0.contains("5000 values, more than 1000"), "{e}");
    }

    #[test]
    fn inclusive_float_range_has_clean_values() {
        let p = Param::parse("deal_line.threshold=0.5..0.7:0.1", &Config::default()).unwrap();
        assert_eq!(
            p.values,
            [0.5, 0.6, 0.7].map(ParamValue::Float).to_vec(),
            "{:?}",
            p.values
        );
    }
}
