//! The Prometheus text exposition format (version 0.0.4), written by hand: label escaping,
//! number spelling, one HELP and TYPE per family written with its first sample (a family with
//! no samples leaves no lines), cumulative histogram buckets and summaries.

use std::fmt::{self, Write as _};

/// What a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
        }
    }
}

/// A label set, rendered as `k="v",k2="v2"` with the values escaped. Cheap to extend: each
/// [`Labels::with`] is a new set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Labels(String);

impl Labels {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// These labels and `name="value"`.
    pub(super) fn with(&self, name: &str, value: impl fmt::Display) -> Labels {
        let mut s = self.0.clone();
        if !s.is_empty() {
            s.push(',');
        }
        let _ = write!(s, "{name}=\"");
        escape_into(&mut s, &value.to_string());
        s.push('"');
        Labels(s)
    }
}

/// Escapes a label value: backslash, double quote and line feed, as the format requires.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value: integers as integers, floats in the shortest form that reads back exactly,
/// with the format's spelling of the specials (`NaN`, `+Inf`, `-Inf`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Value {
    Int(i128),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Self::Int(i128::from(v))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(i128::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Int(i128::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) if x.is_nan() => f.write_str("NaN"),
            Self::Float(x) if x == f64::INFINITY => f.write_str("+Inf"),
            Self::Float(x) if x == f64::NEG_INFINITY => f.write_str("-Inf"),
            Self::Float(x) => write!(f, "{x}"),
        }
    }
}

/// Milliseconds as seconds with at most six decimals (bucket bounds: `0.00015`, not
/// `0.00015000000000000001`), no trailing zeros.
pub(super) fn ms_as_seconds_label(ms: f64) -> String {
    let s = format!("{:.6}", ms / 1000.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// A page being written.
#[derive(Debug, Default)]
pub(super) struct Page {
    out: String,
}

impl Page {
    pub(super) fn with_capacity(n: usize) -> Self {
        Self { out: String::with_capacity(n) }
    }

    /// Starts family `name`; its samples must all be written before the next family starts.
    pub(super) fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &'a str) -> Family<'a> {
        Family { out: &mut self.out, name, kind, help, started: false }
    }

    pub(super) fn finish(self) -> String {
        self.out
    }
}

/// One family's samples.
#[derive(Debug)]
pub(super) struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
    kind: Kind,
    help: &'a str,
    started: bool,
}

impl Family<'_> {
    fn header(&mut self) {
        if !self.started {
            self.started = true;
            let _ =
                writeln!(self.out, "# HELP {} {}\n# TYPE {} {}", self.name, self.help, self.name, self.kind.as_str());
        }
    }

    /// `name{labels} value`.
    pub(super) fn sample(&mut self, labels: &Labels, value: impl Into<Value>) {
        self.suffixed("", labels, value.into());
    }

    fn suffixed(&mut self, suffix: &str, labels: &Labels, value: Value) {
        self.header();
        let _ = if labels.0.is_empty() {
            writeln!(self.out, "{}{suffix} {value}", self.name)
        } else {
            writeln!(self.out, "{}{suffix}{{{}}} {value}", self.name, labels.0)
        };
    }

    /// A histogram from per-bucket (not cumulative) `counts`, whose upper bounds are `le`
    /// (the last count is above the last bound: `+Inf`), and the sum of the observations.
    pub(super) fn histogram(&mut self, labels: &Labels, le: &[String], counts: &[u64], sum: f64) {
        debug_assert_eq!(self.kind, Kind::Histogram);
        let mut cumulative = 0u64;
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            let bound = le.get(i).map_or("+Inf", String::as_str);
            self.suffixed("_bucket", &labels.with("le", bound), cumulative.into());
        }
        if counts.len() <= le.len() {
            // No overflow count given: +Inf is everything.
            self.suffixed("_bucket", &labels.with("le", "+Inf"), cumulative.into());
        }
        self.suffixed("_sum", labels, sum.into());
        self.suffixed("_count", labels, cumulative.into());
    }

    /// A summary: `quantiles` (`NaN` when unknown) over some window, `sum` and `count` over
    /// everything observed.
    pub(super) fn summary(&mut self, labels: &Labels, quantiles: &[(&str, Option<f64>)], sum: f64, count: u64) {
        debug_assert_eq!(self.kind, Kind::Summary);
        for (q, v) in quantiles {
            self.suffixed("", &labels.with("quantile", q), v.unwrap_or(f64::NAN).into());
        }
        self.suffixed("_sum", labels, sum.into());
        self.suffixed("_count", labels, count.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_nothing_else_is() {
        let l = Labels::new().with("target", "a\\b\"c\nd").with("probe", "http://x:1/ä?q=1");
        assert_eq!(l.0, r#"target="a\\b\"c\nd",probe="http://x:1/ä?q=1""#);
    }

    #[test]
    fn values_are_spelled_as_the_format_wants() {
        let spell = |v: Value| v.to_string();
        assert_eq!(spell(f64::NAN.into()), "NaN");
        assert_eq!(spell(f64::INFINITY.into()), "+Inf");
        assert_eq!(spell(f64::NEG_INFINITY.into()), "-Inf");
        assert_eq!(spell(0.25.into()), "0.25");
        assert_eq!(spell(3.0.into()), "3");
        assert_eq!(spell(u64::MAX.into()), "18446744073709551615");
        assert_eq!(spell((-2i64).into()), "-2");
        assert_eq!(spell(true.into()), "1");
        assert_eq!(ms_as_seconds_label(0.15), "0.00015");
        assert_eq!(ms_as_seconds_label(60000.0), "60");
        assert_eq!(ms_as_seconds_label(7.5), "0.0075");
    }

    #[test]
    fn a_family_without_samples_writes_nothing_and_one_with_samples_one_header() {
        let mut page = Page::default();
        page.family("empty_total", Kind::Counter, "Nothing.");
        let mut f = page.family("x_total", Kind::Counter, "Things.");
        f.sample(&Labels::new().with("a", "1"), 2u64);
        f.sample(&Labels::new(), 3u64);
        assert_eq!(page.finish(), "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"1\"} 2\nx_total 3\n");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let mut page = Page::default();
        let le: Vec<String> = ["0.1", "0.5"].map(String::from).to_vec();
        let l = Labels::new().with("b", "x");
        page.family("h_seconds", Kind::Histogram, "H.").histogram(&l, &le, &[1, 0, 2], 1.5);
        page.family("g_seconds", Kind::Histogram, "G.").histogram(&l, &le, &[1, 1], 0.2);
        assert_eq!(
            page.finish(),
            "# HELP h_seconds H.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{b=\"x\",le=\"0.1\"} 1\n\
             h_seconds_bucket{b=\"x\",le=\"0.5\"} 1\n\
             h_seconds_bucket{b=\"x\",le=\"+Inf\"} 3\n\
             h_seconds_sum{b=\"x\"} 1.5\n\
             h_seconds_count{b=\"x\"} 3\n\
             # HELP g_seconds G.\n# TYPE g_seconds histogram\n\
             g_seconds_bucket{b=\"x\",le=\"0.1\"} 1\n\
             g_seconds_bucket{b=\"x\",le=\"0.5\"} 2\n\
             g_seconds_bucket{b=\"x\",le=\"+Inf\"} 2\n\
             g_seconds_sum{b=\"x\"} 0.2\n\
             g_seconds_count{b=\"x\"} 2\n"
        );
    }
}
