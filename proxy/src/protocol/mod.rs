//! PostgreSQL wire protocol v3 framing: pure, no IO, no tokio.
//!
//! The proxy forwards raw frames and decodes only the bodies it needs
//! (startup, queries, statement names, a few backend messages). Every
//! decoder bounds-checks untrusted input and returns an error instead of
//! panicking; `fuzz/` drives these functions with arbitrary bytes.
//!
//! Layout:
//! - `frame`: splitting a byte stream into frames, with length limits.
//! - `reader`: a bounds-checked cursor over a message body.
//! - `frontend`: messages clients send (decode) and the proxy sends servers (encode).
//! - `backend`: messages servers send (decode) and the proxy sends clients (encode).
//! - `text`: reading statement texts sent in a client encoding other than UTF-8.
//! - `batch`: the client's batch ahead of routing, scanned once as it arrives.
//! - `expect`: the backend protocol state: which responses a server still owes.

pub mod backend;
pub mod batch;
pub mod expect;
pub mod frame;
pub mod frontend;
pub mod reader;
pub mod tag;
pub mod text;

pub use frame::{
    Frame, FrameError, MAX_MESSAGE_LEN, client_message_limit, split_frame, split_startup,
};
