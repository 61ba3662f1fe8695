//! lagrouter's routing: decides, for each transaction, whether it goes to
//! the primary or to a replica fresh enough for it. Pure: no sockets, no
//! clocks (time is passed in), so every rule is unit-tested.
//!
//! The proxy's calls, in order:
//! - [`parse_proxy_command`]: statements the proxy answers itself, applied
//!   with [`SessionRouting::apply`];
//! - at each transaction's first message, [`Router::analyze`] (also what
//!   the text does to the server connection: [`Analysis::server`]) then
//!   [`Router::route`];
//! - when the decision asks for a read-your-writes catch-up, after waiting
//!   for the replica, [`Router::catch_up_done`];
//! - after a writing transaction commits, [`Router::record_write`].
//!
//! [`Router::set_function_catalog`] installs `pg_proc` volatility.
//!
//! Layout:
//! - `lexer`: a PostgreSQL-dialect tokenizer (comments, quoting, dollar
//!   quotes, escape strings) that never mistakes a literal for code.
//! - `keywords`: keyword categories that tell grammar from function calls.
//! - `classify`: [`classify`] / [`analyze`]: is a text certainly read-only
//!   ([`Class`]), its hints and session effects ([`Analysis`]).
//! - `statements`: `BEGIN`/`SET`/`RESET` forms that matter to routing, and
//!   [`is_plain_commit`], the fast check for a lone `COMMIT`.
//! - `functions`: [`FunctionCatalog`] (pg_proc volatility, built-in
//!   default) and [`ReadOnlyFunctions`] (`routing.read_only_functions`).
//! - `hash`: the fast seeded hasher for the cache and catalog.
//! - `cache`: [`StatementCache`] (bounded, sharded, generational) and
//!   [`Classifier`] (cache + catalog).
//! - `server_effects`: [`server_effects`], found on the lexer's tokens:
//!   statements that pin a client to its server connection or drop its
//!   prepared statements ([`deallocated_names`]).
//! - `shape`: texts that differ only in their numbers share one cached
//!   analysis.
//! - `hints`: `/* lagrouter:route=… min_lsn=… max_lag=… */` ([`Hints`]).
//! - `command`: [`parse_proxy_command`]: `SET/RESET/SHOW lagrouter.*`.
//! - `session`: [`SessionRouting`], per-client read-your-writes state.
//! - `breaker`: [`Breaker`], the primary-read circuit breaker.
//! - `decide`: [`decide`] and [`settle`], the pure decision.
//! - `gate`: [`WriteGate`], `[safety] min_replicas_to_write`.
//! - `router`: [`Router`], the shared entry point.
//! - `decision`: [`RouteDecision`], [`Reason`], [`RouteError`].

mod breaker;
mod cache;
mod classify;
mod command;
mod decide;
mod decision;
mod functions;
mod gate;
mod hash;
mod hints;
mod keywords;
mod lexer;
mod router;
mod server_effects;
mod session;
mod shape;
mod statements;
mod words;

pub use breaker::{Admission, Breaker, BreakerSettings, BreakerState};
pub use cache::{
    AnalysisMemo, Classifier, InputsCache, LAST_TEXTS, LastAnalysis, MAX_CACHED_TEXT,
    MAX_LAST_TEXT, Memo, StatementCache,
};
pub use classify::{Analysis, Class, SessionEffect, TxnMode, analyze, classify};
pub use command::{CommandError, ProxyCommand, ProxySetting, parse_proxy_command};
pub use decide::{BreakerUse, Decided, RouteContext, decide, settle};
pub use decision::{CatchUp, Reason, RouteDecision, RouteError};
pub use functions::{FunctionCatalog, ReadOnlyFunctions, Volatility};
pub use gate::{GateStatus, WriteGate, gate_status};
pub use hash::{FxBuild, FxHasher};
pub use hints::{Hints, RouteOverride, parse_duration};
pub use router::{BreakerStatus, CACHE_CAPACITY, Router, RouterView};
pub use server_effects::{
    ServerEffects, deallocated_names, inert_text, server_effects, sole_deallocated_name,
};
pub use session::{CommandOutcome, SessionRouting, UNRESOLVED_WRITE};
pub use statements::{is_plain_begin, is_plain_commit, is_plain_transaction_end};
