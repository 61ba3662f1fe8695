//! Session parameters: what the client believes its session's settings are,
//! and the `SET`s that bring a pooled server connection in line with them.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Reported parameters a client cannot set.
const READ_ONLY: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
    "scram_iterations",
];

/// Startup packet keys that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// Whether a client may set `name` with `SET`.
pub fn settable(name: &str) -> bool {
    !READ_ONLY.contains(&name) && !NOT_SETTINGS.contains(&name) && !name.starts_with("_pq_.")
}

/// Parses libpq's `options` startup parameter (`-c name=value` and
/// `--name=value`, space-separated, `\ ` escapes a space).
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("`-c` without a setting")?
        } else if let Some(s) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            s.to_string()
        } else {
            return Err(format!(
                "unsupported startup option `{w}` (only -c name=value)"
            ));
        };
        let (k, v) = setting
            .split_once('=')
            .ok_or_else(|| format!("startup option `{setting}` has no `=`"))?;
        out.push((k.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

/// The settings of one client session.
#[derive(Debug, Clone, Default)]
pub struct SessionParams {
    values: BTreeMap<String, String>,
    fingerprint: u64,
}

impl SessionParams {
    /// Settings from the startup packet (settable ones only).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> SessionParams {
        let mut p = SessionParams::default();
        for (k, v) in pairs {
            if settable(&k) {
                p.values.insert(k, v);
            }
        }
        p.refresh();
        p
    }

    /// Adds the server's default for a setting the client did not choose.
    pub fn default_to(&mut self, defaults: &BTreeMap<String, String>) {
        let mut changed = false;
        for (k, v) in defaults {
            if settable(k) && !self.values.contains_key(k) {
                self.values.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        if changed {
            self.refresh();
        }
    }

    /// Records a value the server reported to this client.
    pub fn set(&mut self, name: &str, value: &str) {
        if !settable(name) || self.values.get(name).is_some_and(|v| v == value) {
            return;
        }
        self.values.insert(name.to_string(), value.to_string());
        self.refresh();
    }

    fn refresh(&mut self) {
        let mut h = DefaultHasher::new();
        self.values.hash(&mut h);
        self.fingerprint = h.finish() | 1; // never 0, which means "never synced"
    }

    /// The value of `name`, if the session has one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Content hash: equal settings give equal fingerprints.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The settings.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// One query that sets every setting whose value on the server
    /// (`current(name)`) differs, and the pairs it sets.
    ///
    /// `set_config(name, value, false)` takes the value as a startup packet
    /// does: a list such as `search_path=a,b` is two schemas (`SET
    /// search_path TO 'a,b'` would be one schema called "a,b").
    pub fn sync_sql<'a>(
        &'a self,
        current: impl Fn(&str) -> Option<&'a str>,
    ) -> Option<(String, Vec<(String, String)>)> {
        let mut sql = String::from("SELECT ");
        let mut set = Vec::new();
        for (k, v) in &self.values {
            if current(k) == Some(v.as_str()) {
                continue;
            }
            if !set.is_empty() {
                sql.push_str(", ");
            }
            sql.push_str("pg_catalog.set_config(");
            quote_literal(&mut sql, k);
            sql.push_str(", ");
            quote_literal(&mut sql, v);
            sql.push_str(", false)");
            set.push((k.clone(), v.clone()));
        }
        if set.is_empty() {
            None
        } else {
            Some((sql, set))
        }
    }
}

/// A string literal that reads the same whatever
/// `standard_conforming_strings` is: `E'...'` when it holds a backslash.
fn quote_literal(out: &mut String, s: &str) {
    if s.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_settings_skip_non_settings() {
        let p = SessionParams::from_pairs([
            ("user".into(), "app".into()),
            ("application_name".into(), "x".into()),
            ("server_version".into(), "1".into()),
        ]);
        assert_eq!(
            p.iter().collect::<Vec<_>>(),
            vec![("application_name", "x")]
        );
    }

    #[test]
    fn fingerprint_follows_content() {
        let mut a = SessionParams::from_pairs([("TimeZone".into(), "UTC".into())]);
        let b = SessionParams::from_pairs([("TimeZone".into(), "UTC".into())]);
        assert_eq!(a.fingerprint(), b.fingerprint());
        a.set("TimeZone", "Europe/Paris");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), 0);
    }

    #[test]
    fn sync_sets_only_differences_with_quoting() {
        let p = SessionParams::from_pairs([
            ("application_name".into(), "it's".into()),
            ("TimeZone".into(), "UTC".into()),
        ]);
        let (sql, set) = p
            .sync_sql(|k| if k == "TimeZone" { Some("UTC") } else { None })
            .unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config('application_name', 'it''s', false)"
        );
        let q = SessionParams::from_pairs([("application_name".into(), r"a\b".into())]);
        let (sql, _) = q.sync_sql(|_| None).unwrap();
        assert_eq!(
            sql,
            r"SELECT pg_catalog.set_config('application_name', E'a\\b', false)"
        );
        assert_eq!(set.len(), 1);
        assert!(
            p.sync_sql(|k| p.values.get(k).map(String::as_str))
                .is_none()
        );
    }

    #[test]
    fn options_parameter() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -csynchronous_commit=off")
                .unwrap(),
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("synchronous_commit".into(), "off".into())
            ]
        );
        assert_eq!(
            parse_options(r"-c application_name=a\ b").unwrap(),
            vec![("application_name".into(), "a b".into())]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-c novalue").is_err());
    }
}
