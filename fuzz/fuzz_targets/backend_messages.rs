//! Arbitrary server bytes: split into frames, decode each by tag. Never panics.
#![no_main]

use bytes::BytesMut;
use lagrouter_proxy::protocol::{backend, frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::split_frame(&mut buf, frame::MAX_MESSAGE_LEN) {
        let body = f.body();
        match f.tag {
            b'R' => drop(backend::decode_auth(body)),
            b'S' => drop(backend::decode_parameter_status(body)),
            b'K' => drop(backend::decode_backend_key(body)),
            b'E' | b'N' => drop(backend::decode_error_fields(body)),
            _ => {
                let _ = backend::decode_auth(body);
                let _ = backend::decode_parameter_status(body);
                let _ = backend::decode_backend_key(body);
                let _ = backend::decode_error_fields(body);
            }
        }
    }
});
