//! Parsing admin console commands. Pure: no IO, no shared state.
//!
//! Commands are case-insensitive; a query text may hold several separated
//! by `;` (psql sends what the user typed, trailing `;` included). Node
//! names may be bare words or quoted (`DRAIN "replica-1"`), because names
//! in the config may hold characters a bare word cannot.

/// What `SHOW` can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Help,
    Nodes,
    Pools,
    Clients,
    Servers,
    Stats,
    Breaker,
    Safety,
    Slots,
    Config,
    Reload,
}

impl Show {
    const ALL: [(&'static str, Show); 11] = [
        ("help", Show::Help),
        ("nodes", Show::Nodes),
        ("pools", Show::Pools),
        ("clients", Show::Clients),
        ("servers", Show::Servers),
        ("stats", Show::Stats),
        ("breaker", Show::Breaker),
        ("safety", Show::Safety),
        ("slots", Show::Slots),
        ("config", Show::Config),
        ("reload", Show::Reload),
    ];
}

/// One admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    Reload,
    Drain(String),
    Undrain(String),
}

/// Every command with a one-line description, for `SHOW HELP` and hints.
pub const HELP: [(&str, &str); 14] = [
    ("SHOW HELP", "this list"),
    (
        "SHOW NODES",
        "health state, lag, good checks and transactions served per node",
    ),
    ("SHOW POOLS", "server connection pools and their counters"),
    ("SHOW CLIENTS", "connected clients and what they are doing"),
    ("SHOW SERVERS", "server connections per node and pool"),
    (
        "SHOW STATS",
        "totals: transactions by target, decisions by reason",
    ),
    ("SHOW BREAKER", "the primary-read breaker"),
    (
        "SHOW SAFETY",
        "the write gate, data at risk, synchronous replication, waiters",
    ),
    (
        "SHOW SLOTS",
        "replication slots on the primary and the WAL they retain",
    ),
    (
        "SHOW CONFIG",
        "the running configuration (secrets redacted)",
    ),
    (
        "SHOW RELOAD",
        "the configuration file and the last reload error",
    ),
    ("RELOAD", "re-read the configuration file"),
    (
        "DRAIN node",
        "stop routing reads to a replica (transactions in flight finish)",
    ),
    ("UNDRAIN node", "route reads to a drained replica again"),
];

/// A command that does not parse: SQLSTATE 42601 with a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    pub hint: String,
}

fn syntax(message: String) -> ParseError {
    let names: Vec<&str> = HELP.iter().map(|(c, _)| *c).collect();
    ParseError {
        message,
        hint: format!("Commands: {}.", names.join(", ")),
    }
}

/// Splits a query text into its statements at `;` outside quotes, dropping
/// empty ones. A quote left open runs to the end of the text.
pub fn split_statements(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quote = None;
    let mut start = 0;
    for (i, ch) in text.char_indices() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(ch),
            (None, ';') => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses one statement (no `;` inside, except in a quoted name).
pub fn parse(stmt: &str) -> Result<Command, ParseError> {
    let stmt = stmt.trim().trim_end_matches(';').trim();
    let (verb, rest) = match stmt.split_once(char::is_whitespace) {
        Some((v, r)) => (v, r.trim()),
        None => (stmt, ""),
    };
    match verb.to_ascii_lowercase().as_str() {
        "show" => {
            let what = rest.to_ascii_lowercase();
            Show::ALL
                .iter()
                .find(|(name, _)| *name == what)
                .map(|(_, s)| Command::Show(*s))
                .ok_or_else(|| syntax(format!("unknown SHOW \"{}\"", shorten(rest))))
        }
        "reload" if rest.is_empty() => Ok(Command::Reload),
        "reload" => Err(syntax("RELOAD takes no argument".into())),
        "drain" => node_name(rest, "DRAIN").map(Command::Drain),
        "undrain" => node_name(rest, "UNDRAIN").map(Command::Undrain),
        _ => Err(syntax(format!(
            "unknown admin console command \"{}\"",
            shorten(stmt)
        ))),
    }
}

/// One node name: a bare word, or a `"double"` / `'single'` quoted name.
fn node_name(arg: &str, verb: &str) -> Result<String, ParseError> {
    let usage = || syntax(format!("{verb} needs one node name, as in {verb} replica1"));
    let name = match arg.chars().next() {
        None => return Err(usage()),
        Some(q @ ('"' | '\'')) => {
            let inner = &arg[1..];
            match inner.find(q) {
                Some(end) if inner[end + 1..].trim().is_empty() => &inner[..end],
                _ => return Err(usage()),
            }
        }
        Some(_) if arg.contains(char::is_whitespace) => return Err(usage()),
        Some(_) => arg,
    };
    if name.is_empty() {
        return Err(usage());
    }
    Ok(name.to_string())
}

/// A bounded excerpt of user input for an error message.
fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_commands_any_case_with_or_without_semicolon() {
        assert_eq!(parse("SHOW NODES"), Ok(Command::Show(Show::Nodes)));
        assert_eq!(parse("show pools;"), Ok(Command::Show(Show::Pools)));
        assert_eq!(
            parse("  Show   Clients ; "),
            Ok(Command::Show(Show::Clients))
        );
        for (name, s) in Show::ALL {
            assert_eq!(parse(&format!("show {name}")), Ok(Command::Show(s)));
        }
    }

    #[test]
    fn reload_drain_undrain() {
        assert_eq!(parse("reload"), Ok(Command::Reload));
        assert_eq!(parse("RELOAD;"), Ok(Command::Reload));
        assert!(parse("reload now").is_err());
        assert_eq!(
            parse("DRAIN replica1"),
            Ok(Command::Drain("replica1".into()))
        );
        assert_eq!(
            parse("drain \"Replica 1\";"),
            Ok(Command::Drain("Replica 1".into()))
        );
        assert_eq!(parse("undrain 'r;2'"), Ok(Command::Undrain("r;2".into())));
        assert!(parse("drain").is_err());
        assert!(parse("drain a b").is_err());
        assert!(parse("drain \"a").is_err());
        assert!(parse("drain \"\"").is_err());
        assert!(parse("drain \"a\" b").is_err());
    }

    #[test]
    fn unknown_commands_get_a_hint_listing_the_commands() {
        let e = parse("SELECT 1").unwrap_err();
        assert!(e.message.contains("SELECT 1"), "{e:?}");
        assert!(e.hint.contains("SHOW NODES") && e.hint.contains("UNDRAIN"));
        assert!(parse("show").is_err());
        assert!(parse("show everything").is_err());
        let long = "x".repeat(10_000);
        assert!(parse(&long).unwrap_err().message.len() < 200);
        // Multibyte input is cut on a character boundary.
        assert!(parse(&"é".repeat(100)).is_err());
    }

    #[test]
    fn statements_split_outside_quotes() {
        assert_eq!(
            split_statements("show nodes; show pools;"),
            ["show nodes", "show pools"]
        );
        assert_eq!(
            split_statements("drain 'a;b'; reload"),
            ["drain 'a;b'", "reload"]
        );
        assert!(split_statements(" ; ;").is_empty());
        assert_eq!(split_statements("drain \"x;"), ["drain \"x;"]);
    }
}
