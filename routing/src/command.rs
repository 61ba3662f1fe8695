//! Statements the proxy answers itself, without a server:
//! `SET lagrouter.min_lsn = '0/1A2B3C40'`, `SET lagrouter.route = primary`,
//! `RESET lagrouter.*`, `SHOW lagrouter.last_write_lsn` and friends.
//!
//! These carry causal tokens between connections and proxy instances, so
//! they must work without a round trip and on any node. Accepted forms
//! follow PostgreSQL's own `SET`: `SET [SESSION] name {= | TO} value`, the
//! value quoted or not, `DEFAULT` to reset, keywords case-insensitive.

use std::time::Duration;

use lagrouter_health::Lsn;

use crate::hints::RouteOverride;
use crate::lexer::{Backslash, Token, TokenKind, lex};
use crate::words::WordSet;

/// A lagrouter setting a client can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySetting {
    /// `lagrouter.last_write_lsn`: the LSN of this session's last write (read-only).
    LastWriteLsn,
    /// `lagrouter.min_lsn`: the causal token this session's reads must see.
    MinLsn,
    /// `lagrouter.route`: the session's route override.
    Route,
}

impl ProxySetting {
    /// The full setting name, as `SHOW` reports it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::LastWriteLsn => "lagrouter.last_write_lsn",
            Self::MinLsn => "lagrouter.min_lsn",
            Self::Route => "lagrouter.route",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "last_write_lsn" => Some(Self::LastWriteLsn),
            "min_lsn" => Some(Self::MinLsn),
            "route" => Some(Self::Route),
            _ => None,
        }
    }
}

/// A statement for the proxy itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyCommand {
    /// `SET lagrouter.min_lsn = 'X/Y'`; `None` for `RESET` / `TO DEFAULT`.
    SetMinLsn(Option<Lsn>),
    /// `SET lagrouter.route = primary|replica|default`, `RESET lagrouter.route`.
    SetRoute(RouteOverride),
    /// `SHOW lagrouter.<setting>`.
    Show(ProxySetting),
    /// `SELECT lagrouter.wait_replicas(n, timeout_ms)`: wait until `n`
    /// replicas replayed the session's last write (or causal token), at
    /// most `timeout`; answer how many did.
    WaitReplicas { replicas: u32, timeout: Duration },
    /// A `lagrouter.*` statement that is wrong: answer with this error.
    Error(CommandError),
}

/// Why a `lagrouter.*` statement was refused. Sent as an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    /// SQLSTATE.
    pub sqlstate: &'static str,
    /// Primary message.
    pub message: String,
    /// What to do about it.
    pub hint: &'static str,
}

const SETTINGS_HINT: &str = "lagrouter settings are lagrouter.min_lsn, lagrouter.route and (read-only) lagrouter.last_write_lsn.";

fn unknown_setting(name: &str) -> ProxyCommand {
    ProxyCommand::Error(CommandError {
        sqlstate: "42704", // undefined_object
        message: format!("unrecognized configuration parameter \"lagrouter.{name}\""),
        hint: SETTINGS_HINT,
    })
}

/// Recognises a statement the proxy must answer itself. `None` means the
/// statement is not one (it goes to a server). Multi-statement text is never
/// a proxy command; `SET lagrouter.*` inside one still takes effect through
/// routing.
pub fn parse_proxy_command(sql: &str) -> Option<ProxyCommand> {
    // Every statement the proxy answers names `lagrouter`: skip lexing the
    // others (every query a client sends comes through here).
    if !mentions_lagrouter(sql) {
        return None;
    }
    let lexed = lex(sql, Backslash::Literal);
    if lexed.failed() {
        return None;
    }
    let mut toks = lexed.tokens.as_slice();
    while let Some((last, rest)) = toks.split_last() {
        if last.kind != TokenKind::Semicolon {
            break;
        }
        toks = rest;
    }
    if toks.iter().any(|t| t.kind == TokenKind::Semicolon) {
        return None;
    }
    parse_tokens(sql, toks)
}

/// Whether `sql` contains `lagrouter` in any letter case.
pub(crate) fn mentions_lagrouter(sql: &str) -> bool {
    static WORD: WordSet<1> = WordSet::new(["lagrouter"]);
    WORD.any_in(sql)
}

/// [`parse_proxy_command`] over one statement's code tokens.
pub(crate) fn parse_tokens(sql: &str, t: &[Token]) -> Option<ProxyCommand> {
    let first = t.first()?;
    if first.is_word(sql, "select") {
        return wait_replicas(sql, &t[1..]);
    }
    if first.is_word(sql, "show") {
        let (name, rest) = setting_name(sql, &t[1..])?;
        if !rest.is_empty() {
            return None;
        }
        return Some(match ProxySetting::from_name(&name) {
            Some(s) => ProxyCommand::Show(s),
            None => unknown_setting(&name),
        });
    }
    if first.is_word(sql, "reset") {
        let (name, rest) = setting_name(sql, &t[1..])?;
        if !rest.is_empty() {
            return None;
        }
        return Some(assign(&name, None));
    }
    if !first.is_word(sql, "set") {
        return None;
    }
    let mut rest = &t[1..];
    if rest.first().is_some_and(|w| w.is_word(sql, "session")) {
        rest = &rest[1..];
    }
    let local = rest.first().is_some_and(|w| w.is_word(sql, "local"));
    if local {
        rest = &rest[1..];
    }
    let (name, rest) = setting_name(sql, rest)?;
    if local {
        return Some(ProxyCommand::Error(CommandError {
            sqlstate: "0A000", // feature_not_supported
            message: format!("SET LOCAL is not supported for lagrouter.{name}"),
            hint: "Use SET for the session, or a /* lagrouter:... */ comment for one statement.",
        }));
    }
    let (op, value) = rest.split_first()?;
    let is_assign =
        (op.kind == TokenKind::Operator && op.text(sql) == "=") || op.is_word(sql, "to");
    if !is_assign {
        return None;
    }
    if value.is_empty() {
        return None;
    }
    if value.len() == 1 && value[0].is_word(sql, "default") {
        return Some(assign(&name, None));
    }
    let raw = if value.len() == 1 && value[0].kind == TokenKind::String {
        string_value(value[0].text(sql))?
    } else {
        // Unquoted: `0/1A2B3C40` lexes as several tokens; take the text.
        sql[value[0].start as usize..value[value.len() - 1].end as usize].to_string()
    };
    Some(assign(&name, Some(&raw)))
}

/// Longest `wait_replicas` timeout: one hour.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Most replicas one may wait for (more than any cluster has).
pub const MAX_WAIT_REPLICAS: u32 = 1000;

const WAIT_HINT: &str = "Call it as SELECT lagrouter.wait_replicas(numreplicas, timeout_ms) with \
    two integer literals, alone in its statement.";

/// `lagrouter.wait_replicas(n, ms)` after `SELECT`; `None` when the
/// statement does not call a `lagrouter.` function (it goes to a server).
fn wait_replicas(sql: &str, t: &[Token]) -> Option<ProxyCommand> {
    let (name, rest) = setting_name(sql, t)?;
    let bad = |message: String| {
        Some(ProxyCommand::Error(CommandError {
            sqlstate: "22023", // invalid_parameter_value
            message,
            hint: WAIT_HINT,
        }))
    };
    if name != "wait_replicas" {
        return Some(ProxyCommand::Error(CommandError {
            sqlstate: "42883", // undefined_function
            message: format!("function lagrouter.{name} does not exist"),
            hint: WAIT_HINT,
        }));
    }
    let args = match rest {
        [l, args @ .., r] if l.kind == TokenKind::LParen && r.kind == TokenKind::RParen => args,
        _ => return bad("lagrouter.wait_replicas needs its arguments in parentheses".into()),
    };
    let int = |tok: &Token| -> Option<u64> {
        (tok.kind == TokenKind::Number)
            .then(|| tok.text(sql).parse().ok())
            .flatten()
    };
    let (n, ms) = match args {
        [a, comma, b] if comma.kind == TokenKind::Punct && comma.text(sql) == "," => {
            match (int(a), int(b)) {
                (Some(n), Some(ms)) => (n, ms),
                _ => {
                    return bad(format!(
                        "lagrouter.wait_replicas takes two non-negative integer literals, got ({})",
                        args_text(sql, args)
                    ));
                }
            }
        }
        _ => {
            return bad(format!(
                "lagrouter.wait_replicas takes two arguments (numreplicas, timeout_ms), got ({})",
                args_text(sql, args)
            ));
        }
    };
    if n > MAX_WAIT_REPLICAS as u64 {
        return bad(format!(
            "numreplicas {n} is out of range (0 to {MAX_WAIT_REPLICAS})"
        ));
    }
    if ms > MAX_WAIT.as_millis() as u64 {
        return bad(format!(
            "timeout_ms {ms} is out of range (0 to {})",
            MAX_WAIT.as_millis()
        ));
    }
    Some(ProxyCommand::WaitReplicas {
        replicas: n as u32,
        timeout: Duration::from_millis(ms),
    })
}

/// The argument text for an error message, cut short.
fn args_text(sql: &str, args: &[Token]) -> String {
    match (args.first(), args.last()) {
        (Some(a), Some(b)) => sql[a.start as usize..b.end as usize]
            .chars()
            .take(64)
            .collect(),
        _ => String::new(),
    }
}

/// `lagrouter.<name>` (or `"lagrouter.<name>"`) at the head of `t`: the
/// lowercase `<name>` and the tokens after it. `None` if not ours.
fn setting_name<'t>(sql: &str, t: &'t [Token]) -> Option<(String, &'t [Token])> {
    match t {
        [ns, dot, name, rest @ ..]
            if ns.is_word(sql, "lagrouter")
                && dot.kind == TokenKind::Punct
                && dot.text(sql) == "."
                && matches!(name.kind, TokenKind::Word | TokenKind::QuotedIdent) =>
        {
            let n = name.text(sql).trim_matches('"').to_ascii_lowercase();
            Some((n, rest))
        }
        [q, rest @ ..] if q.kind == TokenKind::QuotedIdent => {
            let inner = q.text(sql).strip_prefix('"')?.strip_suffix('"')?;
            let (ns, n) = inner.split_once('.')?;
            ns.eq_ignore_ascii_case("lagrouter")
                .then(|| (n.to_ascii_lowercase(), rest))
        }
        _ => None,
    }
}

/// Applies `value` (`None` = reset) to setting `name`.
fn assign(name: &str, value: Option<&str>) -> ProxyCommand {
    match ProxySetting::from_name(name) {
        None => unknown_setting(name),
        Some(ProxySetting::LastWriteLsn) => ProxyCommand::Error(CommandError {
            sqlstate: "55P02", // cant_change_runtime_param
            message: "parameter \"lagrouter.last_write_lsn\" cannot be changed".into(),
            hint: "Hand the value to another session with SET lagrouter.min_lsn.",
        }),
        Some(ProxySetting::MinLsn) => match value {
            None => ProxyCommand::SetMinLsn(None),
            Some(v) => match v.parse::<Lsn>() {
                Ok(l) => ProxyCommand::SetMinLsn(Some(l)),
                Err(e) => ProxyCommand::Error(CommandError {
                    sqlstate: "22023", // invalid_parameter_value
                    message: format!("invalid value for parameter \"lagrouter.min_lsn\": {e}"),
                    hint: "Use the value of SHOW lagrouter.last_write_lsn, e.g. '0/1A2B3C40'.",
                }),
            },
        },
        Some(ProxySetting::Route) => match value.map(RouteOverride::parse) {
            None => ProxyCommand::SetRoute(RouteOverride::Default),
            Some(Some(r)) => ProxyCommand::SetRoute(r),
            Some(None) => ProxyCommand::Error(CommandError {
                sqlstate: "22023",
                message: format!(
                    "invalid value for parameter \"lagrouter.route\": \"{}\"",
                    value
                        .unwrap_or_default()
                        .chars()
                        .take(64)
                        .collect::<String>()
                ),
                hint: "Available values: primary, replica, default.",
            }),
        },
    }
}

/// The value of a string literal token, or `None` for forms not worth
/// decoding here (escape strings with backslashes, Unicode escapes).
fn string_value(text: &str) -> Option<String> {
    if let Some(body) = text.strip_prefix('$') {
        let tag_end = body.find('$')?;
        let delim = &text[..tag_end + 2];
        return Some(text.strip_prefix(delim)?.strip_suffix(delim)?.to_string());
    }
    let body = text
        .strip_prefix('\'')
        .or_else(|| text.strip_prefix("E'"))
        .or_else(|| text.strip_prefix("e'"))?;
    let body = body.strip_suffix('\'')?;
    if text.starts_with(['E', 'e']) && body.contains('\\') {
        return None;
    }
    Some(body.replace("''", "'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProxyCommand::*;

    #[test]
    fn wait_replicas_forms_and_errors() {
        let want = Some(WaitReplicas {
            replicas: 1,
            timeout: Duration::from_millis(500),
        });
        for sql in [
            "SELECT lagrouter.wait_replicas(1, 500)",
            "select LAGROUTER.Wait_Replicas ( 1 , 500 ) ;",
            "/* x */ SELECT \"lagrouter.wait_replicas\"(1,500)",
        ] {
            assert_eq!(parse_proxy_command(sql), want, "{sql}");
        }
        let code = |sql: &str| match parse_proxy_command(sql) {
            Some(Error(e)) => e.sqlstate,
            other => panic!("{sql}: {other:?}"),
        };
        for bad in [
            "SELECT lagrouter.wait_replicas(1)",
            "SELECT lagrouter.wait_replicas(-1, 5)",
            "SELECT lagrouter.wait_replicas(1.5, 5)",
            "SELECT lagrouter.wait_replicas($1, $2)",
            "SELECT lagrouter.wait_replicas('1', 5)",
            "SELECT lagrouter.wait_replicas(1, 3600001)",
            "SELECT lagrouter.wait_replicas(1001, 5)",
            "SELECT lagrouter.wait_replicas(99999999999999999999999, 5)",
            "SELECT lagrouter.wait_replicas",
        ] {
            assert_eq!(code(bad), "22023", "{bad}");
        }
        assert_eq!(code("SELECT lagrouter.wait_for(1, 5)"), "42883");
        // Not ours: goes to a server.
        for other in [
            "SELECT 1",
            "SELECT wait_replicas(1, 5)",
            "SELECT lagrouter.wait_replicas(1, 5); SELECT 1",
            "SELECT x.lagrouter(1)",
        ] {
            assert_eq!(parse_proxy_command(other), None, "{other}");
        }
    }

    #[test]
    fn set_min_lsn_in_every_spelling() {
        let want = Some(SetMinLsn(Some(Lsn(0x1A2B3C40))));
        for sql in [
            "SET lagrouter.min_lsn = '0/1A2B3C40'",
            "set LAGROUTER.MIN_LSN to '0/1A2B3C40';",
            "SET SESSION lagrouter.min_lsn = 0/1A2B3C40",
            "/* c */ SET lagrouter.min_lsn TO $$0/1a2b3c40$$ ;;",
            "SET \"lagrouter.min_lsn\" = E'0/1A2B3C40'",
            "SET lagrouter . min_lsn='0/1A2B3C40' -- token",
        ] {
            assert_eq!(parse_proxy_command(sql), want, "{sql}");
        }
    }

    #[test]
    fn reset_and_default() {
        for sql in [
            "RESET lagrouter.min_lsn",
            "SET lagrouter.min_lsn TO DEFAULT",
        ] {
            assert_eq!(parse_proxy_command(sql), Some(SetMinLsn(None)), "{sql}");
        }
        assert_eq!(
            parse_proxy_command("reset lagrouter.route"),
            Some(SetRoute(RouteOverride::Default))
        );
    }

    #[test]
    fn route_and_show() {
        assert_eq!(
            parse_proxy_command("SET lagrouter.route = primary"),
            Some(SetRoute(RouteOverride::Primary))
        );
        assert_eq!(
            parse_proxy_command("SET lagrouter.route TO 'Replica'"),
            Some(SetRoute(RouteOverride::Replica))
        );
        assert_eq!(
            parse_proxy_command("SET lagrouter.route = default"),
            Some(SetRoute(RouteOverride::Default))
        );
        assert_eq!(
            parse_proxy_command("SHOW lagrouter.last_write_lsn"),
            Some(Show(ProxySetting::LastWriteLsn))
        );
        assert_eq!(
            parse_proxy_command("show lagrouter.min_lsn;"),
            Some(Show(ProxySetting::MinLsn))
        );
        assert_eq!(
            parse_proxy_command("SHOW lagrouter.route"),
            Some(Show(ProxySetting::Route))
        );
    }

    #[test]
    fn errors_for_our_namespace() {
        let code = |sql: &str| match parse_proxy_command(sql) {
            Some(Error(e)) => e.sqlstate,
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(code("SET lagrouter.min_lsn = 'banana'"), "22023");
        assert_eq!(code("SET lagrouter.route = sideways"), "22023");
        assert_eq!(code("SET lagrouter.nope = 1"), "42704");
        assert_eq!(code("SHOW lagrouter.nope"), "42704");
        assert_eq!(code("SET lagrouter.last_write_lsn = '0/1'"), "55P02");
        assert_eq!(code("SET LOCAL lagrouter.route = primary"), "0A000");
    }

    #[test]
    fn not_ours() {
        for sql in [
            "SET search_path = app",
            "SHOW lagrouter",
            "SELECT 'SET lagrouter.min_lsn = 1'",
            "SET lagrouter.min_lsn = '0/1'; SELECT 1",
            "SHOW lagrouter.route extra",
            "SET lagrouter.route",
            "",
        ] {
            assert_eq!(parse_proxy_command(sql), None, "{sql}");
        }
    }
}
