//! Session parameters: what the client believes its session's settings are,
//! and the `SET`s that bring a pooled server connection in line with them.

use std::collections::BTreeMap;
use std::fmt::Write;
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
    /// (`current`: what the connection is known to have) differs, and
    /// returns to its default every setting the connection has that the
    /// session does not (another session's startup option, such as
    /// `search_path`); `None` when nothing differs.
    ///
    /// `set_config(name, value, false)` takes the value as a startup packet
    /// does: a list such as `search_path=a,b` is two schemas (`SET
    /// search_path TO 'a,b'` would be one schema called "a,b").
    /// `set_config(name, NULL, false)` is `RESET name` (PostgreSQL's
    /// `set_config_by_name`), in the same `SELECT`.
    pub fn sync_sql(&self, current: &BTreeMap<String, String>) -> Option<Sync> {
        let mut sync = Sync {
            sql: String::from("SELECT "),
            set: Vec::new(),
            reset: Vec::new(),
        };
        for (k, v) in &self.values {
            if current.get(k) == Some(v) {
                continue;
            }
            sync.item(k, Some(v));
            sync.set.push((k.clone(), v.clone()));
        }
        for k in current.keys() {
            if settable(k) && !self.values.contains_key(k) {
                sync.item(k, None);
                sync.reset.push(k.clone());
            }
        }
        (!sync.set.is_empty() || !sync.reset.is_empty()).then_some(sync)
    }
}

/// What brings a server connection's settings in line with a session's
/// ([`SessionParams::sync_sql`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Sync {
    /// The one query that does it.
    pub sql: String,
    /// The settings it sets, with their values.
    pub set: Vec<(String, String)>,
    /// The settings it returns to their defaults.
    pub reset: Vec<String>,
}

impl Sync {
    /// Appends `set_config(name, value or NULL, false)`.
    fn item(&mut self, name: &str, value: Option<&str>) {
        if !self.set.is_empty() || !self.reset.is_empty() {
            self.sql.push_str(", ");
        }
        self.sql.push_str("pg_catalog.set_config(");
        quote_literal(&mut self.sql, name);
        self.sql.push_str(", ");
        match value {
            Some(v) => quote_literal(&mut self.sql, v),
            None => self.sql.push_str("NULL"),
        }
        self.sql.push_str(", false)");
    }
}

/// A string literal that reads the same whatever
/// `standard_conforming_strings` is (`E'...'` when it holds a backslash),
/// and whatever the connection's `client_encoding`: the server reads a
/// query's text in the encoding the connection has when the query arrives,
/// which may be one another client left (LATIN1, say), so a value that is
/// not ASCII goes as its UTF-8 bytes in hex, which the server converts
/// (`convert_from`).
fn quote_literal(out: &mut String, s: &str) {
    if !s.is_ascii() {
        out.push_str("pg_catalog.convert_from(E'\\\\x");
        for b in s.bytes() {
            let _ = write!(out, "{b:02x}"); // into a String: cannot fail
        }
        out.push_str("'::bytea, 'UTF8')");
        return;
    }
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
        let on = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let p = SessionParams::from_pairs([
            ("application_name".into(), "it's".into()),
            ("TimeZone".into(), "UTC".into()),
        ]);
        let s = p.sync_sql(&on(&[("TimeZone", "UTC")])).unwrap();
        assert_eq!(
            s.sql,
            "SELECT pg_catalog.set_config('application_name', 'it''s', false)"
        );
        assert_eq!(s.set.len(), 1);
        let q = SessionParams::from_pairs([("application_name".into(), r"a\b".into())]);
        assert_eq!(
            q.sync_sql(&on(&[])).unwrap().sql,
            r"SELECT pg_catalog.set_config('application_name', E'a\\b', false)"
        );
        let q = SessionParams::from_pairs([("application_name".into(), "é'\\".into())]);
        let sql = q.sync_sql(&on(&[])).unwrap().sql;
        assert_eq!(
            sql,
            r"SELECT pg_catalog.set_config('application_name', pg_catalog.convert_from(E'\\xc3a9275c'::bytea, 'UTF8'), false)"
        );
        assert!(sql.is_ascii());
        assert!(p.sync_sql(&p.values).is_none());
    }

    /// What another session set on the connection and this one did not
    /// (a startup option) goes back to its default; what no client may
    /// set (reported by the server) stays.
    #[test]
    fn sync_resets_what_another_session_set() {
        let p = SessionParams::from_pairs([("TimeZone".into(), "UTC".into())]);
        let mut conn = p.values.clone();
        conn.insert("search_path".into(), "other".into());
        conn.insert("server_version".into(), "15.8".into());
        let s = p.sync_sql(&conn).unwrap();
        assert_eq!(
            s.sql,
            "SELECT pg_catalog.set_config('search_path', NULL, false)"
        );
        assert_eq!((s.set.len(), s.reset), (0, vec!["search_path".to_string()]));
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
