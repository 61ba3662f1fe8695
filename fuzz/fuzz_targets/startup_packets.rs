//! Arbitrary startup-phase bytes: split packets, decode each. Never panics.
#![no_main]

use bytes::BytesMut;
use lagrouter_proxy::protocol::{frame, frontend};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = frontend::decode_startup(data);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(body)) = frame::split_startup(&mut buf) {
        let _ = frontend::decode_startup(&body);
    }
});
