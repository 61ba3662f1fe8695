//! Finds the line of a key path in TOML text, for error messages.
//!
//! Handles the forms the config file uses: `[table]`, `[[array]]`,
//! `[[parent.array]]` headers and `key = value` lines. A key that cannot be
//! found (inline tables, defaults) yields `None`; the message still names
//! the key.

/// A segment of a key path: a table key or an index into an array of tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Splits `routing.rules[2].pattern` into segments.
pub fn parse_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Key(name.to_string()));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(n) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(n));
            }
        }
    }
    out
}

/// 1-based line of `path` in `text`, if found.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let segs = parse_path(path);
    // Split into the table part (everything up to the last key) and the key.
    let (table_segs, leaf) = match segs.last() {
        Some(Seg::Key(k)) => (&segs[..segs.len() - 1], Some(k.as_str())),
        _ => (&segs[..], None),
    };
    let target_header = header_name(table_segs);
    let target_index = table_segs.iter().rev().find_map(|s| match s {
        Seg::Index(i) => Some(*i),
        Seg::Key(_) => None,
    });
    let mut in_target = target_header.is_empty();
    let mut seen: usize = 0;
    let mut header_line = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(h) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let h = h.trim();
            in_target = false;
            if h == target_header {
                if Some(seen) == target_index {
                    in_target = true;
                    header_line = Some(n + 1);
                }
                seen += 1;
            }
            continue;
        }
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            in_target = h.trim() == target_header && target_index.is_none();
            if in_target {
                header_line = Some(n + 1);
            }
            continue;
        }
        if in_target
            && let Some(k) = leaf
            && let Some((lhs, _)) = line.split_once('=')
            && lhs.trim().trim_matches('"') == k
        {
            return Some(n + 1);
        }
    }
    header_line
}

fn header_name(segs: &[Seg]) -> String {
    segs.iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// 1-based line of a byte offset.
pub fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[server]\nlisten = \"x\"\n\n[[nodes]]\nname = \"a\"\nport = 1\n\n[[nodes]]\nname = \"b\"\nport = 2\n\n[routing]\ncap = 1\n[[routing.rules]]\npattern = \"p\"\n";

    #[test]
    fn finds_keys_in_tables_and_arrays() {
        assert_eq!(line_of(DOC, "server.listen"), Some(2));
        assert_eq!(line_of(DOC, "nodes[0].port"), Some(6));
        assert_eq!(line_of(DOC, "nodes[1].port"), Some(10));
        assert_eq!(line_of(DOC, "nodes[1].role"), Some(8));
        assert_eq!(line_of(DOC, "routing.cap"), Some(13));
        assert_eq!(line_of(DOC, "routing.rules[0].pattern"), Some(15));
        assert_eq!(line_of(DOC, "health.check_interval"), None);
    }

    #[test]
    fn offsets_to_lines() {
        assert_eq!(line_of_offset("a\nb\nc", 0), 1);
        assert_eq!(line_of_offset("a\nb\nc", 2), 2);
        assert_eq!(line_of_offset("a\nb\nc", 99), 3);
    }
}
