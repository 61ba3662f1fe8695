//! PostgreSQL keyword categories that decide whether `word (` is a function
//! call (from `src/include/parser/kwlist.h`).
//!
//! A reserved or column-name keyword followed by `(` is grammar (`IN (`,
//! `EXISTS (`, `COALESCE (`), never a call: PostgreSQL does not let those
//! words name a function unless quoted or schema-qualified, and the
//! classifier checks quoted and qualified names as calls. Every other word
//! followed by `(` is treated as a call unless its context proves otherwise,
//! so a keyword missing here only makes classification more conservative.

/// Reserved keywords: never a function name when unquoted.
pub fn is_reserved(w: &str) -> bool {
    matches!(
        w,
        "all"
            | "analyse"
            | "analyze"
            | "and"
            | "any"
            | "array"
            | "as"
            | "asc"
            | "asymmetric"
            | "both"
            | "case"
            | "cast"
            | "check"
            | "collate"
            | "column"
            | "constraint"
            | "create"
            | "current_catalog"
            | "current_date"
            | "current_role"
            | "current_time"
            | "current_timestamp"
            | "current_user"
            | "default"
            | "deferrable"
            | "desc"
            | "distinct"
            | "do"
            | "else"
            | "end"
            | "except"
            | "false"
            | "fetch"
            | "for"
            | "foreign"
            | "from"
            | "grant"
            | "group"
            | "having"
            | "in"
            | "initially"
            | "intersect"
            | "into"
            | "lateral"
            | "leading"
            | "limit"
            | "localtime"
            | "localtimestamp"
            | "not"
            | "null"
            | "offset"
            | "on"
            | "only"
            | "or"
            | "order"
            | "placing"
            | "primary"
            | "references"
            | "returning"
            | "select"
            | "session_user"
            | "some"
            | "symmetric"
            | "system_user"
            | "table"
            | "then"
            | "to"
            | "trailing"
            | "true"
            | "union"
            | "unique"
            | "user"
            | "using"
            | "variadic"
            | "when"
            | "where"
            | "window"
            | "with"
    )
}

/// Column-name keywords: when followed by `(` they are built-in grammar
/// (`COALESCE(`, `EXTRACT(`, `ROW(`, `VALUES (`, type names with a
/// modifier), never a user's function.
pub fn is_col_name_keyword(w: &str) -> bool {
    matches!(
        w,
        "between"
            | "bigint"
            | "bit"
            | "boolean"
            | "char"
            | "character"
            | "coalesce"
            | "dec"
            | "decimal"
            | "exists"
            | "extract"
            | "float"
            | "greatest"
            | "grouping"
            | "inout"
            | "int"
            | "integer"
            | "interval"
            | "json"
            | "json_array"
            | "json_arrayagg"
            | "json_exists"
            | "json_object"
            | "json_objectagg"
            | "json_query"
            | "json_scalar"
            | "json_serialize"
            | "json_table"
            | "json_value"
            | "least"
            | "national"
            | "nchar"
            | "none"
            | "normalize"
            | "nullif"
            | "numeric"
            | "out"
            | "overlay"
            | "position"
            | "precision"
            | "real"
            | "row"
            | "setof"
            | "smallint"
            | "substring"
            | "time"
            | "timestamp"
            | "treat"
            | "trim"
            | "values"
            | "varchar"
            | "xmlattributes"
            | "xmlconcat"
            | "xmlelement"
            | "xmlexists"
            | "xmlforest"
            | "xmlnamespaces"
            | "xmlparse"
            | "xmlpi"
            | "xmlroot"
            | "xmlserialize"
            | "xmltable"
    )
}

/// Type/function-name keywords that are also infix grammar (`a JOIN (b)`,
/// `x LIKE (y)`): grammar only when they follow an operand.
pub fn is_infix_keyword(w: &str) -> bool {
    matches!(w, "join" | "like" | "ilike" | "overlaps" | "similar")
}

/// `(previous word, word)` pairs where `word (` is grammar: `ORDER BY (`,
/// `FETCH FIRST (`, `CHARACTER VARYING (`, `AT TIME ZONE (`.
pub fn is_grammar_pair(prev: &str, w: &str) -> bool {
    matches!(
        (prev, w),
        ("order" | "group" | "partition", "by")
            | ("fetch", "first" | "next")
            | ("character" | "char" | "bit" | "national", "varying")
            | ("time", "zone")
    )
}

/// Built-in operators (every one backed by an immutable or stable
/// function). Anything else may be a user's operator over a volatile
/// function, so it makes a statement uncertain.
pub fn is_builtin_operator(op: &str) -> bool {
    matches!(
        op,
        "+" | "-"
            | "*"
            | "/"
            | "%"
            | "^"
            | "="
            | "<>"
            | "!="
            | "<"
            | ">"
            | "<="
            | ">="
            | "||"
            | "~"
            | "~*"
            | "!~"
            | "!~*"
            | "~~"
            | "~~*"
            | "!~~"
            | "!~~*"
            | "@"
            | "@>"
            | "<@"
            | "&&"
            | "->"
            | "->>"
            | "#>"
            | "#>>"
            | "?"
            | "?|"
            | "?&"
            | "@?"
            | "@@"
            | "@@@"
            | "#-"
            | "|/"
            | "||/"
            | "&"
            | "|"
            | "#"
            | "<<"
            | ">>"
            | "<<="
            | ">>="
            | "<->"
            | "=>"
            | "&<"
            | "&>"
            | "<<|"
            | "|>>"
            | "&<|"
            | "|&>"
            | "~="
            | "<^"
            | ">^"
            | "?-"
            | "?#"
            | "?||"
            | "?-|"
            | "@-@"
            | "##"
            | "!"
            | "!!"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert!(is_reserved("select") && !is_reserved("left"));
        assert!(is_col_name_keyword("coalesce") && !is_col_name_keyword("lower"));
        assert!(is_infix_keyword("join"));
        assert!(is_grammar_pair("order", "by") && !is_grammar_pair("select", "by"));
        assert!(
            is_builtin_operator("->>")
                && !is_builtin_operator("===")
                && !is_builtin_operator("+++")
        );
    }
}
