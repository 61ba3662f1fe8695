//! lagrouter's routing (WIP).

mod cache;
mod classify;
mod command;
mod decision;
mod functions;
mod hash;
mod hints;
mod keywords;
mod lexer;
mod router;
mod statements;

pub use cache::{Classifier, StatementCache};
pub use classify::{Analysis, Class, SessionEffect, TxnMode, analyze, classify};
pub use command::{CommandError, ProxyCommand, ProxySetting, parse_proxy_command};
pub use decision::{Reason, RouteDecision, RouteError};
pub use functions::{FunctionCatalog, ReadOnlyFunctions, Volatility};
pub use hints::{Hints, RouteOverride};
pub use router::{Router, SessionRouting};
