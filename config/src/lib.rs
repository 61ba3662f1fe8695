//! lagrouter's configuration: the TOML schema users write, its validation,
//! and [`ConfigHandle`], the live-swappable copy every component reads.
//!
//! Loading is `from_toml_str` → `validate` (both in [`Config::from_toml_str`])
//! → [`ConfigHandle::store`]. A file that fails either step never replaces a
//! running configuration. Errors name the line and key that are wrong.
//!
//! Layout:
//! - `schema`: the structs, their defaults and which fields reload live.
//! - `validate`: cross-field checks.
//! - `error`: [`ConfigError`] and [`Problem`].
//! - `locate`: finds the line of a key for messages.
//! - `handle`: [`ConfigHandle`].

mod error;
mod handle;
mod locate;
mod schema;
mod tls;
mod validate;

use std::path::Path;

pub use error::{ConfigError, Problem};
pub use handle::{ConfigCache, ConfigHandle};
pub use schema::*;
pub use tls::{NodeTls, ServerTls};

impl Config {
    /// Parses and validates a configuration from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(vec![parse_problem(text, &e)]))?;
        config.validate().map_err(|mut problems| {
            for p in &mut problems {
                p.line = locate::line_of(text, &p.key);
            }
            ConfigError::Invalid(problems)
        })?;
        let mut config = config;
        config.server_tls_loaded =
            ServerTls::load(&config.server_tls).map_err(|(key, message)| {
                let key = format!("server_tls.{key}");
                ConfigError::Invalid(vec![Problem {
                    line: locate::line_of(text, &key),
                    key,
                    message,
                }])
            })?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text)
    }
}

/// Turns a TOML/serde error into a problem with a line and the key it is about.
fn parse_problem(text: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return Problem {
            key: "(file)".into(),
            line: None,
            message,
        };
    };
    let line = locate::line_of_offset(text, span.start);
    let key = key_at_line(text, line).unwrap_or_else(|| "(file)".into());
    Problem {
        key,
        line: Some(line),
        message,
    }
}

/// The dotted key defined on `line` (1-based): the enclosing table header
/// plus the left-hand side of `=`.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let this = lines.get(line.checked_sub(1)?)?.trim();
    let header = lines[..line - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("[[")
            .and_then(|h| h.split("]]").next())
            .or_else(|| l.strip_prefix('[').and_then(|h| h.split(']').next()))
            .map(str::trim)
    });
    if this.starts_with('[') {
        return Some(
            this.trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string(),
        );
    }
    let lhs = this
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .unwrap_or(this);
    Some(match header {
        Some(h) if !h.is_empty() => format!("{h}.{lhs}"),
        _ => lhs.to_string(),
    })
}

#[cfg(test)]
mod tests;
