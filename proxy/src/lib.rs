//! lagrouter's proxy (in progress).
pub mod protocol;
