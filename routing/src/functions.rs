//! Which functions a read may call and still go to a replica.
//!
//! PostgreSQL records each function's volatility in `pg_proc.provolatile`
//! (`i`mmutable, `s`table, `v`olatile). Only volatile functions can change
//! the database (nextval, setval, advisory locks, set_config, and every user
//! function unless declared otherwise, since VOLATILE is the default), so a
//! statement whose calls are all immutable or stable may run on a replica.
//!
//! The proxy loads `pg_proc` from the primary (elsewhere) and hands it over
//! as a [`FunctionCatalog`]. Until then a conservative built-in list of
//! well-known non-volatile functions is used. Config's
//! `routing.read_only_functions` ([`ReadOnlyFunctions`]) adds volatile
//! functions the operator knows are harmless (`random`, `clock_timestamp`).

use std::collections::{HashMap, HashSet};

use crate::hash::FxBuild;

/// `pg_proc.provolatile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

impl Volatility {
    /// From `provolatile`; anything unknown is volatile.
    pub fn from_char(c: char) -> Volatility {
        match c {
            'i' => Volatility::Immutable,
            's' => Volatility::Stable,
            _ => Volatility::Volatile,
        }
    }
}

/// Function volatility by name.
///
/// Names are keyed without schema and overloads are merged, keeping the
/// most volatile: `lower(text)` and a user's volatile `app.lower(int)` make
/// `lower` volatile. This over-approximates (a call may resolve to the
/// harmless overload) but never under-approximates, whatever the
/// search_path.
#[derive(Debug, Clone)]
pub struct FunctionCatalog {
    by_name: HashMap<Box<str>, Volatility, FxBuild>,
    loaded: bool,
}

impl Default for FunctionCatalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl FunctionCatalog {
    /// The catalog used before `pg_proc` is loaded: well-known built-in
    /// functions that are immutable or stable in every supported PostgreSQL
    /// version. Every other function counts as volatile.
    pub fn builtin() -> Self {
        let mut by_name =
            HashMap::with_capacity_and_hasher(BUILTIN_READ_ONLY.len(), FxBuild::random());
        for name in BUILTIN_READ_ONLY {
            by_name.insert((*name).into(), Volatility::Stable);
        }
        Self {
            by_name,
            loaded: false,
        }
    }

    /// A catalog from `SELECT proname, provolatile FROM pg_proc` on the
    /// primary, merged over the built-in list (a volatile row wins over a
    /// built-in entry of the same name).
    pub fn from_rows<I, S>(rows: I) -> Self
    where
        I: IntoIterator<Item = (S, char)>,
        S: AsRef<str>,
    {
        let mut cat = Self::builtin();
        for (name, vol) in rows {
            let vol = Volatility::from_char(vol);
            cat.by_name
                .entry(name.as_ref().into())
                .and_modify(|v| *v = (*v).max(vol))
                .or_insert(vol);
        }
        cat.loaded = true;
        cat
    }

    /// Whether this came from `pg_proc` (rather than the built-in list).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Number of distinct names known.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no name is known.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The merged volatility of `name` (as stored in `pg_proc`: already
    /// case-folded for unquoted names), if known.
    pub fn volatility(&self, name: &str) -> Option<Volatility> {
        self.by_name.get(name).copied()
    }

    /// Whether a call to `schema.name` (schema `None` when unqualified) is
    /// known not to write.
    pub fn is_read_only_call(
        &self,
        extra: &ReadOnlyFunctions,
        schema: Option<&str>,
        name: &str,
    ) -> bool {
        // Stable in pg_proc, yet they fail on a server in recovery.
        if PRIMARY_ONLY.contains(&name) {
            return false;
        }
        if extra.contains(schema, name) {
            return true;
        }
        // The built-in list speaks only for pg_catalog: before the catalog
        // is loaded, `app.lower()` is a stranger.
        if !self.loaded && schema.is_some_and(|s| s != "pg_catalog") {
            return false;
        }
        matches!(
            self.volatility(name),
            Some(Volatility::Immutable | Volatility::Stable)
        )
    }
}

/// `routing.read_only_functions`: volatile functions the operator declares
/// harmless. `"f"` matches every call of `f`; `"s.f"` only calls written
/// `s.f(...)`. Matching is case-insensitive (unquoted SQL names fold to
/// lowercase).
#[derive(Debug, Clone, Default)]
pub struct ReadOnlyFunctions {
    bare: HashSet<Box<str>, FxBuild>,
    qualified: HashSet<Box<str>, FxBuild>,
}

impl ReadOnlyFunctions {
    /// From the config list.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Self::default();
        for n in names {
            let n = n.as_ref().trim().to_ascii_lowercase();
            if n.contains('.') {
                out.qualified.insert(n.into());
            } else if !n.is_empty() {
                out.bare.insert(n.into());
            }
        }
        out
    }

    /// Whether no function is listed.
    pub fn is_empty(&self) -> bool {
        self.bare.is_empty() && self.qualified.is_empty()
    }

    fn contains(&self, schema: Option<&str>, name: &str) -> bool {
        if self.is_empty() {
            return false;
        }
        let lower = name.to_ascii_lowercase();
        if self.bare.contains(lower.as_str()) {
            return true;
        }
        match schema {
            Some(s) if !self.qualified.is_empty() => {
                let q = format!("{}.{lower}", s.to_ascii_lowercase());
                self.qualified.contains(q.as_str())
            }
            _ => false,
        }
    }
}

/// Built-in functions that are immutable or stable (`provolatile` `i`/`s`)
/// in PostgreSQL 12 and later. Deliberately short: a function missing here
/// only sends reads to the primary until the catalog is loaded.
/// Functions `pg_proc` marks stable that raise an error during recovery
/// (they assign a transaction id or read the primary's WAL position):
/// statements calling them go to the primary whatever the catalog says.
const PRIMARY_ONLY: &[&str] = &[
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_walfile_name",
    "pg_walfile_name_offset",
];

/// Built-in functions that write, assign a transaction id or need the
/// primary: a statement calling one is a write, whatever hints say.
const KNOWN_WRITERS: &[&str] = &[
    "nextval",
    "setval",
    "pg_notify",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_unlink",
    "lo_from_bytea",
    "lo_put",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
];

/// Whether `name` (lowercase, unqualified) is a built-in that writes or
/// only works on the primary.
pub fn is_known_writer(name: &str) -> bool {
    KNOWN_WRITERS.contains(&name) || PRIMARY_ONLY.contains(&name)
}

const BUILTIN_READ_ONLY: &[&str] = &[
    // aggregates
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    // window functions
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // math
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "sign",
    "mod",
    "power",
    "pow",
    "sqrt",
    "cbrt",
    "exp",
    "ln",
    "log",
    "log10",
    "pi",
    "degrees",
    "radians",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "div",
    "gcd",
    "lcm",
    "width_bucket",
    "scale",
    // strings
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "lower",
    "upper",
    "initcap",
    "substr",
    "left",
    "right",
    "lpad",
    "rpad",
    "ltrim",
    "rtrim",
    "btrim",
    "replace",
    "translate",
    "reverse",
    "repeat",
    "split_part",
    "strpos",
    "starts_with",
    "concat",
    "concat_ws",
    "format",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "ascii",
    "chr",
    "to_hex",
    "md5",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "encode",
    "decode",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "string_to_array",
    "array_to_string",
    "similar_to_escape",
    "to_char",
    "to_number",
    "to_date",
    "to_timestamp",
    // dates and times (stable within a transaction)
    "now",
    "statement_timestamp",
    "transaction_timestamp",
    "date_trunc",
    "date_part",
    "age",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "isfinite",
    // arrays and sets
    "array_length",
    "array_upper",
    "array_lower",
    "array_dims",
    "array_ndims",
    "cardinality",
    "array_position",
    "array_positions",
    "array_remove",
    "array_replace",
    "array_append",
    "array_prepend",
    "array_cat",
    "unnest",
    "generate_series",
    "generate_subscripts",
    // json
    "to_json",
    "to_jsonb",
    "row_to_json",
    "array_to_json",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "json_array_elements",
    "jsonb_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements_text",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_extract_path",
    "jsonb_extract_path",
    "json_extract_path_text",
    "jsonb_extract_path_text",
    "json_array_length",
    "jsonb_array_length",
    "json_typeof",
    "jsonb_typeof",
    "jsonb_set",
    "jsonb_insert",
    "jsonb_strip_nulls",
    "jsonb_pretty",
    "json_object_keys",
    "jsonb_object_keys",
    "jsonb_path_query",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "jsonb_path_exists",
    "jsonb_path_match",
    // full text search
    "to_tsvector",
    "to_tsquery",
    "plainto_tsquery",
    "phraseto_tsquery",
    "websearch_to_tsquery",
    "ts_rank",
    "ts_rank_cd",
    "ts_headline",
    "setweight",
    // casts written as calls
    "text",
    "date",
    "int4",
    "int8",
    "float8",
    "numeric",
    "bool",
    // session and catalog information
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "version",
    "pg_backend_pid",
    "pg_typeof",
    "format_type",
    "to_regclass",
    "to_regtype",
    "pg_size_pretty",
    "pg_size_bytes",
    "has_table_privilege",
    "has_schema_privilege",
    "has_database_privilege",
    "pg_table_is_visible",
    "obj_description",
    "col_description",
    "pg_get_viewdef",
    "pg_get_indexdef",
    "pg_get_constraintdef",
    "pg_get_functiondef",
    "pg_get_userbyid",
    "num_nulls",
    "num_nonnulls",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_knows_common_functions_and_not_volatile_ones() {
        let c = FunctionCatalog::builtin();
        let none = ReadOnlyFunctions::default();
        assert!(c.is_read_only_call(&none, None, "lower"));
        assert!(c.is_read_only_call(&none, Some("pg_catalog"), "count"));
        for f in [
            "nextval",
            "setval",
            "pg_advisory_lock",
            "set_config",
            "random",
            "my_func",
        ] {
            assert!(!c.is_read_only_call(&none, None, f), "{f}");
        }
        // Before the catalog is loaded a user schema is a stranger.
        assert!(!c.is_read_only_call(&none, Some("app"), "lower"));
    }

    #[test]
    fn catalog_rows_merge_overloads_volatile_wins() {
        let c = FunctionCatalog::from_rows([
            ("lower", 'i'),
            ("lower", 'v'),
            ("app_stable", 's'),
            ("odd", 'x'),
        ]);
        let none = ReadOnlyFunctions::default();
        assert!(c.is_loaded());
        assert!(!c.is_read_only_call(&none, None, "lower"));
        assert!(c.is_read_only_call(&none, Some("app"), "app_stable"));
        assert!(!c.is_read_only_call(&none, None, "odd"));
        // Built-ins stay known after loading.
        assert!(c.is_read_only_call(&none, None, "count"));
    }

    #[test]
    fn config_list_overrides_volatility() {
        let c = FunctionCatalog::from_rows([("random", 'v'), ("f", 'v')]);
        let extra = ReadOnlyFunctions::new(["Random", "app.f"]);
        assert!(c.is_read_only_call(&extra, None, "random"));
        assert!(c.is_read_only_call(&extra, Some("app"), "f"));
        assert!(!c.is_read_only_call(&extra, None, "f"));
        assert!(!c.is_read_only_call(&extra, Some("other"), "f"));
    }

    #[test]
    fn primary_only_functions_never_read_only() {
        let cat = FunctionCatalog::from_rows([
            ("txid_current", 's'),
            ("pg_current_wal_lsn", 'v'),
            ("lower", 'i'),
        ]);
        let extra = ReadOnlyFunctions::new(&["txid_current".to_string()]);
        assert!(!cat.is_read_only_call(&extra, None, "txid_current"));
        assert!(!cat.is_read_only_call(&extra, Some("pg_catalog"), "pg_current_wal_lsn"));
        assert!(cat.is_read_only_call(&extra, None, "lower"));
    }
}
