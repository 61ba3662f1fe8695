//! A deterministic fuzz smoke test of the pure framing module, so CI
//! exercises every decoder with hostile input without nightly or
//! cargo-fuzz (the real fuzzers are in `fuzz/`).
//!
//! A seeded xorshift generator makes ~200k inputs: random bytes, and valid
//! messages mutated (bit flips, truncation, length fields rewritten,
//! bytes inserted). Every decoder, the batch scan and the `Expect` state
//! machine must return without panicking. Runs in well under 5 s in debug builds.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use lagrouter_proxy::protocol::batch::BatchScan;
use lagrouter_proxy::protocol::expect::{Action, Expect, Req};
use lagrouter_proxy::protocol::text::TextEncoding;
use lagrouter_proxy::protocol::{backend, frame, frontend};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn startup(body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// Valid messages of every kind the decoders handle.
fn seeds() -> Vec<Vec<u8>> {
    let mut s = Vec::new();
    let mut b = frontend::PROTOCOL_3_0.to_be_bytes().to_vec();
    b.extend_from_slice(b"user\0app\0database\0app\0options\0-c x=y\0\0");
    s.push(startup(&b));
    s.push(startup(&frontend::SSL_REQUEST.to_be_bytes()));
    s.push(startup(&frontend::GSSENC_REQUEST.to_be_bytes()));
    let mut c = frontend::CANCEL_REQUEST.to_be_bytes().to_vec();
    c.extend_from_slice(&[0, 0, 0, 42, 1, 2, 3, 4]);
    s.push(startup(&c));
    s.push(tagged(b'Q', b"SELECT 1\0"));
    s.push(tagged(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17"));
    s.push(tagged(b'Q', b"SELECT E'\x95\x5c', 'caf\xe9'\0"));
    s.push(tagged(b'P', b"s2\0SELECT '\x81\x30\x81'\0\0\0"));
    s.push(tagged(b'B', b"p\0s1\0\0\x01\0\0\0\x01\0\0\0\x011\0\0"));
    s.push(tagged(b'D', b"Ss1\0"));
    s.push(tagged(b'C', b"Pp\0"));
    s.push(tagged(b'E', b"p\0\0\0\0\0"));
    s.push(tagged(b'S', b""));
    s.push(tagged(b'p', b"SCRAM-SHA-256\0\0\0\0\x08n,,n=,r="));
    s.push(tagged(b'p', b"secret\0"));
    s.push(tagged(b'R', &0i32.to_be_bytes()));
    s.push(tagged(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]));
    s.push(tagged(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0"));
    s.push(tagged(b'R', b"\0\0\0\x0br=abc,s=xyz,i=4096"));
    s.push(tagged(b'S', b"TimeZone\0UTC\0"));
    s.push(tagged(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
    s.push(tagged(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"));
    s.push(tagged(b'N', b"SNOTICE\0C00000\0Mhello\0\0"));
    s
}

fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => v.truncate(rng.below(v.len())),
            2 => {
                // Rewrite a length-sized window with a hostile value.
                let vals = [
                    0i32,
                    3,
                    4,
                    5,
                    8,
                    -1,
                    i32::MIN,
                    i32::MAX,
                    1 << 30,
                    (1 << 30) + 1,
                ];
                let val = vals[rng.below(vals.len())].to_be_bytes();
                if v.len() >= 4 {
                    let i = rng.below(v.len() - 3);
                    v[i..i + 4].copy_from_slice(&val);
                }
            }
            3 => {
                let i = rng.below(v.len() + 1);
                let n = rng.below(8);
                let extra = rng.bytes(n);
                v.splice(i..i, extra);
            }
            4 => v.push(0),
            _ => {
                // Concatenate with another copy, so several frames follow.
                let again = v.clone();
                v.extend_from_slice(&again);
            }
        }
    }
    v
}

const ENCODINGS: [TextEncoding; 4] = [
    TextEncoding::AsciiSafe,
    TextEncoding::ShiftJis,
    TextEncoding::DoubleByte,
    TextEncoding::Gb18030,
];

fn frontend_stream(data: &[u8], limit: usize) {
    let _ = frame::peek_header(data, limit);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::split_frame(&mut buf, limit) {
        assert!(f.bytes.len() >= 5);
        let body = f.body();
        let _ = frontend::decode_query(body);
        let _ = frontend::decode_parse(body);
        let _ = frontend::decode_bind(body);
        let _ = frontend::decode_target(body, "Describe");
        let _ = frontend::decode_sasl_initial(body);
        let _ = frontend::decode_password(body);
        // Texts read in each client encoding's layout.
        for enc in ENCODINGS {
            for tag in [b'Q', b'P'] {
                let mut readable = String::new();
                let _ = frontend::ClientMsg::decode_foreign(tag, body, enc, &mut readable);
            }
        }
    }
}

/// The batch scan fed `data` in two reads (cut at `cut`), then the frames
/// consumed from the front as a session does: no panic, and every frame it
/// points at is where it says, with its tag.
fn batch_scan(data: &[u8], limit: usize, cut: usize) {
    let mut scan = BatchScan::default();
    scan.complete(&data[..cut.min(data.len())], limit);
    let mut buf = data;
    loop {
        scan.complete(buf, limit);
        for (tag, at) in scan.statement_frames() {
            assert!(
                at.end <= buf.len() && buf[at.start] == tag,
                "{at:?} of {buf:?}"
            );
        }
        match frame::peek_header(buf, limit) {
            Ok(Some((_, total))) if buf.len() >= total => {
                buf = &buf[total..];
                scan.consumed(total);
            }
            _ => break,
        }
    }
}

fn startup_stream(data: &[u8]) {
    let _ = frontend::decode_startup(data);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(body)) = frame::split_startup(&mut buf) {
        let _ = frontend::decode_startup(&body);
    }
}

fn backend_stream(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::split_frame(&mut buf, frame::MAX_MESSAGE_LEN) {
        let body = f.body();
        let _ = backend::decode_auth(body);
        let _ = backend::decode_parameter_status(body);
        let _ = backend::decode_backend_key(body);
        let _ = backend::decode_error_fields(body);
    }
}

const REQS: [Req; 9] = [
    Req::Query,
    Req::FunctionCall,
    Req::Parse,
    Req::Bind,
    Req::Describe(b'S'),
    Req::Describe(b'P'),
    Req::Execute,
    Req::Close,
    Req::Sync,
];
const SERVER_TAGS: &[u8] = b"123ACDEGHIKNRSTWZcdnstv";

/// Forwarded three times in four, like client requests among injected ones.
fn answers(rng: &mut XorShift) -> Action {
    if rng.below(4) != 0 {
        Action::Forward
    } else {
        Action::Drop
    }
}

fn expect_sequence(rng: &mut XorShift, steps: usize) {
    let mut e = Expect::new();
    for _ in 0..steps {
        match rng.below(8) {
            0 | 1 => e.push(REQS[rng.below(REQS.len())], answers(rng)),
            2 => e.push_named(
                REQS[rng.below(REQS.len())],
                answers(rng),
                Some(Arc::from("s")),
            ),
            3 => e.push_synthetic(Bytes::from_static(b"1\0\0\0\x04")),
            4 => drop(e.pop_synthetic()),
            5 => drop(e.take_failed_parses()),
            6 => drop(e.on_server(rng.byte(), rng.byte())),
            _ => drop(e.on_server(
                SERVER_TAGS[rng.below(SERVER_TAGS.len())],
                b"ITE"[rng.below(3)],
            )),
        }
        let _ = (e.is_empty(), e.awaits_server(), e.status(), e.in_copy());
        let _ = e.skipping();
    }
}

#[test]
fn decoders_survive_random_and_mutated_input() {
    let started = std::time::Instant::now();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let seeds = seeds();
    let mut inputs = 0usize;
    for round in 0..200_000usize {
        let data = if round % 4 == 0 {
            let n = rng.below(64);
            rng.bytes(n)
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        let limit = if round % 8 == 0 {
            rng.below(64)
        } else {
            frame::MAX_MESSAGE_LEN
        };
        frontend_stream(&data, limit);
        batch_scan(&data, limit, rng.below(data.len() + 1));
        startup_stream(&data);
        backend_stream(&data);
        // Bodies without the frame header reach the decoders directly too.
        let body = data.get(5..).unwrap_or(&[]);
        let _ = frontend::decode_startup(body);
        let _ = backend::decode_auth(body);
        let _ = backend::decode_error_fields(body);
        inputs += 1;
    }
    for _ in 0..2_000 {
        expect_sequence(&mut rng, 100);
        inputs += 1;
    }
    eprintln!("{inputs} inputs in {:.2}s", started.elapsed().as_secs_f64());
}

#[test]
fn valid_seeds_decode() {
    // The seeds are valid, so the mutations start from real messages.
    let s = seeds();
    let mut buf = BytesMut::from(&s[0][..]);
    match frame::split_startup(&mut buf) {
        Ok(Some(body)) => assert!(matches!(
            frontend::decode_startup(&body),
            Ok(frontend::StartupPacket::Startup { .. })
        )),
        other => panic!("startup seed does not split: {other:?}"),
    }
    let mut buf = BytesMut::from(&tagged(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17")[..]);
    let f = frame::split_frame(&mut buf, frame::MAX_MESSAGE_LEN)
        .expect("valid")
        .expect("complete");
    let p = frontend::decode_parse(f.body()).expect("Parse decodes");
    assert_eq!((p.name, p.query), ("s1", "SELECT $1"));
    let e =
        backend::decode_error_fields(b"SERROR\0C22012\0Mdivision by zero\0\0").expect("decodes");
    assert_eq!(e.code, "22012");
}
