//! Arbitrary client bytes: split into frames, decode each by tag. Never panics.
#![no_main]

use bytes::BytesMut;
use lagrouter_proxy::protocol::text::TextEncoding;
use lagrouter_proxy::protocol::{frame, frontend};
use libfuzzer_sys::fuzz_target;

const ENCODINGS: [TextEncoding; 4] = [
    TextEncoding::AsciiSafe,
    TextEncoding::ShiftJis,
    TextEncoding::DoubleByte,
    TextEncoding::Gb18030,
];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the frame limit, so TooLong is reachable too.
    let (limit, data) = match data.split_first() {
        Some((&b, rest)) if b & 1 == 1 => (usize::from(b) * 16, rest),
        Some((_, rest)) => (frame::MAX_MESSAGE_LEN, rest),
        None => return,
    };
    let _ = frame::peek_header(data, limit);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::split_frame(&mut buf, limit) {
        let body = f.body();
        match f.tag {
            b'Q' => drop(frontend::decode_query(body)),
            b'P' => drop(frontend::decode_parse(body)),
            b'B' => drop(frontend::decode_bind(body)),
            b'D' => drop(frontend::decode_target(body, "Describe")),
            b'C' => drop(frontend::decode_target(body, "Close")),
            b'p' => {
                let _ = frontend::decode_sasl_initial(body);
                let _ = frontend::decode_password(body);
            }
            _ => {
                let _ = frontend::decode_query(body);
                let _ = frontend::decode_parse(body);
                let _ = frontend::decode_bind(body);
            }
        }
        // Texts read in each client encoding's layout.
        for enc in ENCODINGS {
            for tag in [b'Q', b'P'] {
                let mut readable = String::new();
                let _ = frontend::ClientMsg::decode_foreign(tag, body, enc, &mut readable);
            }
        }
    }
});
