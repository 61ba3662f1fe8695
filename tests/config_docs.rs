//! The configuration reference stays in step with the schema.
//!
//! Reads `config/src/schema.rs` as text, lists every `pub` field of each
//! configuration struct and the TOML section it lives in, and checks that
//! each key is documented:
//! - in README.md, in a table row of the "## Configuration reference"
//!   section under its "### `[section]`" heading;
//! - in `deploy/lagrouter.toml` (commented out or not) under its section
//!   header;
//!
//! and that `deploy/lagrouter.toml` is a valid configuration. Adding a field
//! to the schema without documenting it fails here, naming the key and the
//! place it is missing from. No PostgreSQL needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Configuration structs and the TOML section each one is; `""` is the
/// file's top level, whose fields are sections themselves.
const SECTIONS: &[(&str, &str)] = &[
    ("Config", ""),
    ("ServerConfig", "server"),
    ("UserConfig", "users"),
    ("PoolConfig", "pool"),
    ("NodeConfig", "nodes"),
    ("HealthConfig", "health"),
    ("RoutingConfig", "routing"),
    ("RuleConfig", "routing.rules"),
    ("SafetyConfig", "safety"),
    ("ServerTlsConfig", "server_tls"),
    ("AuthQueryConfig", "auth_query"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn section_of(name: &str) -> Option<&'static str> {
    SECTIONS
        .iter()
        .find(|(s, _)| *s == name)
        .map(|(_, sec)| *sec)
}

/// A `pub` field of a configuration struct.
#[derive(Debug)]
struct Field {
    /// The key as written in TOML (the field name, or its serde rename).
    key: String,
    /// The field's type, as written.
    ty: String,
}

/// Every `pub struct` of the schema whose name ends in `Config`, with its
/// `pub` fields in order.
fn schema_structs(schema: &str) -> BTreeMap<String, Vec<Field>> {
    let mut structs = BTreeMap::new();
    let mut current: Option<(String, Vec<Field>)> = None;
    let mut rename: Option<String> = None;
    for line in schema.lines() {
        let t = line.trim();
        if let Some((name, fields)) = &mut current {
            if line.starts_with('}') {
                structs.insert(std::mem::take(name), std::mem::take(fields));
                current = None;
                continue;
            }
            if t.starts_with("#[serde(")
                && let Some(r) = t.split("rename = \"").nth(1)
            {
                rename = r.split('"').next().map(str::to_owned);
            }
            if let Some(rest) = t.strip_prefix("pub ")
                && let Some((ident, ty)) = rest.split_once(':')
                && ident.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                let key = rename.take().unwrap_or_else(|| ident.to_owned());
                let ty = ty.trim().trim_end_matches(',').to_owned();
                fields.push(Field { key, ty });
            } else if !t.starts_with("#[") && !t.starts_with("//") {
                rename = None;
            }
        } else if let Some(rest) = t.strip_prefix("pub struct ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.ends_with("Config") && t.ends_with('{') {
                current = Some((name, Vec::new()));
            }
        }
    }
    structs
}

/// The configuration struct a field's type names, if any (`ServerConfig`,
/// `Vec<RuleConfig>`, `Option<PoolConfig>`).
fn nested_struct<'a>(ty: &str, structs: &'a BTreeMap<String, Vec<Field>>) -> Option<&'a str> {
    ty.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find_map(|word| structs.get_key_value(word).map(|(k, _)| k.as_str()))
}

/// How a section's header is written: `[[nodes]]` for a list, `[pool]` for
/// a single table.
fn header(section: &str, list: bool) -> String {
    if list {
        format!("[[{section}]]")
    } else {
        format!("[{section}]")
    }
}

/// The documented keys of each section of the README's configuration
/// reference, by section header as written (`[server]`, `[[users]]`).
/// A row's first cell may list several keys: "| `tls_cert`, `tls_key` |".
fn readme_keys(readme: &str) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let start = readme
        .find("\n## Configuration reference")
        .ok_or("README.md has no \"## Configuration reference\" section")?;
    let body = &readme[start + 1..];
    let end = body[1..].find("\n## ").map_or(body.len(), |i| i + 1);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in body[..end].lines() {
        if let Some(h) = line.strip_prefix("### ") {
            let h = h.trim().trim_matches('`').to_owned();
            out.entry(h.clone()).or_default();
            section = Some(h);
        } else if let Some(row) = line.strip_prefix('|')
            && let Some(sec) = &section
        {
            let first = row.split('|').next().unwrap_or_default();
            for cell in first.split(',') {
                let cell = cell.trim();
                if let Some(key) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
                    out.get_mut(sec).unwrap().insert(key.to_owned());
                }
            }
        }
    }
    Ok(out)
}

/// The keys of each section of a TOML file, commented out or not, by
/// section header as written. Keys before the first header are under `""`.
fn toml_keys(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = String::new();
    out.entry(section.clone()).or_default();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.split(']').next().unwrap_or_default().to_owned();
            section.push(']');
            if section.starts_with("[[") {
                section.push(']');
            }
            out.entry(section.clone()).or_default();
            continue;
        }
        let t = t.trim_start_matches('#').trim_start();
        if let Some((key, _)) = t.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.get_mut(&section).unwrap().insert(key.to_owned());
            }
        }
    }
    out
}

/// Every key of the schema that README.md or the example file does not
/// document, as messages naming the key and where it is missing.
fn undocumented(schema: &str, readme: &str, example: &str) -> Vec<String> {
    let structs = schema_structs(schema);
    let mut problems = Vec::new();
    for name in structs.keys() {
        if section_of(name).is_none() {
            problems.push(format!(
                "config/src/schema.rs has `pub struct {name}`, which tests/config_docs.rs does not \
                 map to a TOML section: add it to SECTIONS"
            ));
        }
    }
    for (name, _) in SECTIONS {
        match structs.get(*name) {
            None => problems.push(format!(
                "tests/config_docs.rs expects `pub struct {name}` in config/src/schema.rs"
            )),
            Some(fields) if fields.is_empty() => problems.push(format!(
                "found no `pub` fields in `pub struct {name}` of config/src/schema.rs"
            )),
            Some(_) => {}
        }
    }
    let readme = match readme_keys(readme) {
        Ok(r) => r,
        Err(e) => {
            problems.push(e);
            return problems;
        }
    };
    let example = toml_keys(example);

    // Which header each section is written with: `[[x]]` when the parent
    // field is a Vec.
    let mut lists = BTreeSet::new();
    for f in structs.values().flatten() {
        if let Some(inner) = nested_struct(&f.ty, &structs)
            && f.ty.starts_with("Vec<")
        {
            lists.insert(inner.to_owned());
        }
    }

    for (name, fields) in &structs {
        let Some(section) = section_of(name) else {
            continue;
        };
        let here = header(section, lists.contains(name.as_str()));
        for f in fields {
            if let Some(inner) = nested_struct(&f.ty, &structs) {
                // A sub-table: it is documented as its own section.
                let expected = if section.is_empty() {
                    f.key.clone()
                } else {
                    format!("{section}.{}", f.key)
                };
                let Some(actual) = section_of(inner) else {
                    continue;
                };
                if actual != expected {
                    problems.push(format!(
                        "`{name}.{}` holds `{inner}`, so its section is `{expected}`, but \
                         tests/config_docs.rs maps `{inner}` to `{actual}`: fix SECTIONS",
                        f.key
                    ));
                }
                let sub = header(&expected, f.ty.starts_with("Vec<"));
                if !readme.contains_key(&sub) {
                    problems.push(format!(
                        "README.md: no \"### `{sub}`\" heading in \"## Configuration reference\""
                    ));
                }
                if !example.contains_key(&sub) {
                    problems.push(format!("deploy/lagrouter.toml: no `{sub}` section header"));
                }
                continue;
            }
            if !readme.get(&here).is_some_and(|keys| keys.contains(&f.key)) {
                problems.push(format!(
                    "README.md: key `{}` of `{here}` ({name}) has no row \"| `{}` | default | meaning |\" \
                     under \"### `{here}`\" in \"## Configuration reference\"",
                    f.key, f.key
                ));
            }
            if !example.get(&here).is_some_and(|keys| keys.contains(&f.key)) {
                problems.push(format!(
                    "deploy/lagrouter.toml: key `{}` of `{here}` ({name}) is missing under the `{here}` \
                     header (add `{} = ...`, commented out if it should keep its default)",
                    f.key, f.key
                ));
            }
        }
    }
    problems
}

#[test]
fn every_config_key_is_documented() {
    let problems = undocumented(
        &read("config/src/schema.rs"),
        &read("README.md"),
        &read("deploy/lagrouter.toml"),
    );
    assert!(
        problems.is_empty(),
        "undocumented configuration keys:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn example_config_is_valid() {
    let text = read("deploy/lagrouter.toml");
    match lagrouter_config::Config::from_toml_str(&text) {
        Ok(c) => {
            assert!(!c.users.is_empty());
            assert!(c.nodes.len() >= 2, "the example should show replicas");
        }
        Err(e) => panic!("deploy/lagrouter.toml is not a valid configuration: {e}"),
    }
}

/// The check is not vacuous: a field added to the schema without docs is
/// reported, naming the key and both places.
#[test]
fn a_new_undocumented_field_is_reported() {
    let schema = read("config/src/schema.rs");
    let anchor = "pub struct PoolConfig {\n";
    assert!(
        schema.contains(anchor),
        "schema.rs changed shape: {anchor:?}"
    );
    let schema = schema.replacen(
        anchor,
        &format!("{anchor}    /// New. Default 1. Live.\n    pub brand_new_knob: u32,\n"),
        1,
    );
    let problems = undocumented(&schema, &read("README.md"), &read("deploy/lagrouter.toml"));
    let about: Vec<_> = problems
        .iter()
        .filter(|p| p.contains("`brand_new_knob`") && p.contains("`[pool]`"))
        .collect();
    assert_eq!(
        about.len(),
        2,
        "expected README and example problems, got {problems:#?}"
    );
    assert!(about[0].starts_with("README.md"));
    assert!(about[1].starts_with("deploy/lagrouter.toml"));

    // A new section struct that the test does not know is reported too.
    let schema = format!("{schema}\npub struct MirrorConfig {{\n    pub target: String,\n}}\n");
    let problems = undocumented(&schema, &read("README.md"), &read("deploy/lagrouter.toml"));
    assert!(
        problems.iter().any(|p| p.contains("MirrorConfig")),
        "{problems:#?}"
    );
}
