//! Per-statement hints written in comments:
//! `/* lagrouter:route=primary */`, `/* lagrouter:min_lsn=0/1A2B3C40 */`,
//! `/* lagrouter:route=replica max_lag=200ms */`.
//!
//! Hints ride in comments so that the same text works with or without the
//! proxy (the server ignores them) and survives ORMs that only let an
//! application prepend a comment. Several hints may share one comment,
//! separated by spaces or commas, each optionally repeating the
//! `lagrouter:` prefix. A hint with a bad value is ignored, and reported
//! (the proxy sends it as a NOTICE) rather than silently dropped.

use std::time::Duration;

use lagrouter_health::Lsn;

/// Where a hint, a `SET lagrouter.route` or a rule sends a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum RouteOverride {
    /// No override: classification decides.
    #[default]
    Default,
    /// Always the primary.
    Primary,
    /// A fresh replica (read-your-writes and the lag bound still apply). Not
    /// honoured for statements classified as writes: they go to the primary.
    Replica,
}

impl RouteOverride {
    /// Parses `primary`, `replica` or `default` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("primary") {
            Some(Self::Primary)
        } else if s.eq_ignore_ascii_case("replica") {
            Some(Self::Replica)
        } else if s.eq_ignore_ascii_case("default") {
            Some(Self::Default)
        } else {
            None
        }
    }

    /// The value `SHOW lagrouter.route` answers.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Primary => "primary",
            Self::Replica => "replica",
        }
    }
}

/// Hints found in one statement's comments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// `route=`: overrides `SET lagrouter.route` and config rules.
    pub route: Option<RouteOverride>,
    /// `min_lsn=`: this statement must see at least this LSN (a causal token).
    pub min_lsn: Option<Lsn>,
    /// `max_lag=`: only replicas whose measured time lag is at most this.
    pub max_lag: Option<Duration>,
    /// Hints that were ignored, for a NOTICE (`None` when all were fine).
    pub ignored: Option<Box<str>>,
}

impl Hints {
    /// Whether no hint was found.
    pub fn is_empty(&self) -> bool {
        *self == Hints::default()
    }
}

const PREFIX: &str = "lagrouter:";

/// Reads the hints in one comment's text (delimiters included or not) into
/// `hints`. Later hints override earlier ones.
pub fn parse_comment(comment: &str, hints: &mut Hints) {
    let Some(first) = find_ascii_ci(comment, PREFIX) else {
        return;
    };
    let body = comment[first..].trim_end_matches("*/");
    for item in body
        .split(|c: char| c.is_ascii_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
    {
        let item = match item.get(..PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(PREFIX) => &item[PREFIX.len()..],
            _ => item,
        };
        let Some((key, value)) = item.split_once('=') else {
            ignore(hints, item);
            continue;
        };
        let value = value.trim_matches(|c| c == '\'' || c == '"');
        let ok = if key.eq_ignore_ascii_case("route") {
            RouteOverride::parse(value)
                .map(|r| hints.route = Some(r))
                .is_some()
        } else if key.eq_ignore_ascii_case("min_lsn") {
            value
                .parse::<Lsn>()
                .map(|l| hints.min_lsn = Some(l))
                .is_ok()
        } else if key.eq_ignore_ascii_case("max_lag") {
            parse_duration(value)
                .map(|d| hints.max_lag = Some(d))
                .is_some()
        } else {
            false
        };
        if !ok {
            ignore(hints, item);
        }
    }
}

fn ignore(hints: &mut Hints, item: &str) {
    let item: String = item.chars().take(64).collect();
    hints.ignored = Some(match hints.ignored.take() {
        None => item.into(),
        Some(prev) => format!("{prev}, {item}").into(),
    });
}

/// Byte offset of `needle` (ASCII, lowercase) in `hay`, ignoring ASCII case.
pub(crate) fn find_ascii_ci(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    if h.len() < n.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// `200ms`, `1s`, `1.5s`, `500us`, `2m`. No unit or a bad number: `None`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim().to_ascii_lowercase().as_str() {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(c: &str) -> Hints {
        let mut h = Hints::default();
        parse_comment(c, &mut h);
        h
    }

    #[test]
    fn route_hint() {
        assert_eq!(
            parse("/* lagrouter:route=primary */").route,
            Some(RouteOverride::Primary)
        );
        assert_eq!(
            parse("/*LAGROUTER:ROUTE=Replica*/").route,
            Some(RouteOverride::Replica)
        );
        assert!(parse("/* app=web */").is_empty());
    }

    #[test]
    fn several_hints_in_one_comment() {
        let h = parse(
            "/* controller=x, lagrouter:route=replica max_lag=200ms, lagrouter:min_lsn='0/1A' */",
        );
        assert_eq!(h.route, Some(RouteOverride::Replica));
        assert_eq!(h.max_lag, Some(Duration::from_millis(200)));
        assert_eq!(h.min_lsn, Some(Lsn(0x1A)));
        assert_eq!(h.ignored, None);
    }

    #[test]
    fn bad_values_are_reported_not_applied() {
        let h = parse("/* lagrouter:route=sideways min_lsn=zz max_lag=5 */");
        assert!(h.route.is_none() && h.min_lsn.is_none() && h.max_lag.is_none());
        assert_eq!(
            h.ignored.as_deref(),
            Some("route=sideways, min_lsn=zz, max_lag=5")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500us"), Some(Duration::from_micros(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("10"), None);
    }
}
