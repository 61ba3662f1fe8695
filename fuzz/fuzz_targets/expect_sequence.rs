//! An arbitrary sequence of requests (pushes, synthetic answers) and server
//! tags fed to the `Expect` state machine. Never panics.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use lagrouter_proxy::protocol::expect::{Action, Expect, Req};
use libfuzzer_sys::fuzz_target;

const TAGS: &[u8] = b"123ACDEGHIKNRSTWZcdnstv";
const STATUS: &[u8] = b"ITE";

fn req(b: u8) -> Req {
    match b % 10 {
        0 => Req::Query,
        1 => Req::FunctionCall,
        2 => Req::Parse,
        3 => Req::Bind,
        4 => Req::Describe(b'S'),
        5 => Req::Describe(b'P'),
        6 => Req::Execute,
        7 => Req::Close,
        _ => Req::Sync,
    }
}

fn answers(arg: u8) -> Action {
    if arg & 0x80 == 0 { Action::Forward } else { Action::Drop }
}

fuzz_target!(|data: &[u8]| {
    let mut e = Expect::new();
    let mut it = data.chunks_exact(2);
    for pair in &mut it {
        let (op, arg) = (pair[0], pair[1]);
        match op % 8 {
            0 => e.push(req(arg), answers(arg)),
            1 => e.push_named(req(arg), answers(arg), Some(Arc::from(format!("s{arg}")))),
            2 => e.push_synthetic(Bytes::from(vec![arg; 5])),
            3 => drop(e.pop_synthetic()),
            4 => drop(e.take_failed_parses()),
            // Server tags, biased to the ones a server sends.
            5 | 6 => drop(e.on_server(TAGS[usize::from(arg) % TAGS.len()], STATUS[usize::from(arg >> 5) % 3])),
            _ => drop(e.on_server(arg, pair[0])),
        }
        let _ = (e.is_empty(), e.awaits_server(), e.status(), e.in_copy(), e.skipping());
    }
});
