//! lagrouter's routing: decides, for each transaction, whether it goes to
//! the primary or to a replica fresh enough for it. Pure: no sockets, no
//! clocks (time is passed in), so every rule is unit-tested.
//!
//! Layout:
//! - `decision`: [`RouteDecision`], [`Reason`], [`RouteError`].
//! - `router`: [`Router`], the entry point the proxy calls, and
//!   [`SessionRouting`], the per-client state.

mod decision;
mod router;

pub use decision::{Reason, RouteDecision, RouteError};
pub use router::{Router, SessionRouting};
