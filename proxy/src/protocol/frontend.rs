//! Client messages: decoding what clients send, rewriting statement names.

use bytes::{BufMut, BytesMut};

use super::reader::{DecodeError, Reader};
use super::text::{TextEncoding, readable};

/// Protocol version 3.0.
pub const PROTOCOL_3_0: i32 = 196_608;
/// `SSLRequest` code.
pub const SSL_REQUEST: i32 = 80_877_103;
/// `GSSENCRequest` code.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// `CancelRequest` code.
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// A startup-phase packet (the body after the length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// StartupMessage: protocol version and parameters in order.
    Startup {
        version: i32,
        params: Vec<(String, String)>,
    },
    /// SSLRequest.
    Ssl,
    /// GSSENCRequest.
    GssEnc,
    /// CancelRequest with the key the proxy handed out.
    Cancel { pid: i32, secret: Vec<u8> },
}

/// Decodes a startup-phase packet body.
pub fn decode_startup(body: &[u8]) -> Result<StartupPacket, DecodeError> {
    let mut r = Reader::new(body, "startup");
    let code = r.i32()?;
    match code {
        SSL_REQUEST => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST => {
            let pid = r.i32()?;
            let secret = r.rest().to_vec();
            if secret.is_empty() || secret.len() > 256 {
                return Err(DecodeError {
                    what: "CancelRequest",
                    detail: "bad secret key length",
                });
            }
            Ok(StartupPacket::Cancel { pid, secret })
        }
        version if version >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let k = r.cstr_utf8()?;
                if k.is_empty() {
                    break;
                }
                let v = startup_value(k, r.cstr()?)?;
                if params.len() >= 64 {
                    return Err(DecodeError {
                        what: "startup",
                        detail: "too many parameters",
                    });
                }
                params.push((k.to_string(), v));
            }
            Ok(StartupPacket::Startup { version, params })
        }
        _ => Err(DecodeError {
            what: "startup",
            detail: "unsupported protocol version",
        }),
    }
}

/// A startup parameter's value. PostgreSQL takes `application_name` in
/// any bytes and keeps only printable ASCII of it, each other byte made
/// `?` (PostgreSQL 15's `pg_clean_ascii`): a client whose locale is
/// LATIN1 sends its program's name so. The proxy does the same to a name
/// that is not UTF-8, which it could not pass on otherwise; the server
/// cleans a UTF-8 one itself. Other values must be UTF-8.
fn startup_value(name: &str, value: &[u8]) -> Result<String, DecodeError> {
    match std::str::from_utf8(value) {
        Ok(v) => Ok(v.to_string()),
        Err(_) if name == "application_name" => Ok(value
            .iter()
            .map(|&b| {
                if (32..=126).contains(&b) {
                    b as char
                } else {
                    '?'
                }
            })
            .collect()),
        Err(_) => Err(DecodeError {
            what: "startup",
            detail: "a parameter value is not valid UTF-8 (only application_name may be in another encoding)",
        }),
    }
}

/// `Query` ('Q'): the SQL text.
pub fn decode_query(body: &[u8]) -> Result<&str, DecodeError> {
    Reader::new(body, "Query").cstr_utf8()
}

/// `Parse` ('P'): statement name, query text and the raw parameter-type tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a str,
    /// The text as routing reads it.
    pub query: &'a str,
    /// The text as sent, when that is not `query`: not UTF-8
    /// ([`ClientMsg::decode_foreign`]).
    pub wire: Option<&'a [u8]>,
    /// i16 count followed by i32 OIDs, as sent.
    pub param_types: &'a [u8],
}

/// Decodes a `Parse` body.
pub fn decode_parse(body: &[u8]) -> Result<Parse<'_>, DecodeError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr_utf8()?;
    let query = r.cstr_utf8()?;
    Ok(Parse {
        name,
        query,
        wire: None,
        param_types: parse_param_types(r.rest())?,
    })
}

/// A `Parse`'s parameter-type tail, checked: an i16 count, then as many
/// OIDs.
fn parse_param_types(tail: &[u8]) -> Result<&[u8], DecodeError> {
    let mut t = Reader::new(tail, "Parse");
    let n = t.i16()?;
    if n < 0 || t.rest().len() != n as usize * 4 {
        return Err(DecodeError {
            what: "Parse",
            detail: "parameter type count does not match",
        });
    }
    Ok(tail)
}

/// Encodes a `Parse` with a (possibly rewritten) statement name; `query`
/// as it is to reach the server.
pub fn encode_parse(out: &mut BytesMut, name: &str, query: &[u8], param_types: &[u8]) {
    let len = 4 + name.len() + 1 + query.len() + 1 + param_types.len();
    out.put_u8(b'P');
    out.put_i32(len as i32);
    put_cstr(out, name);
    out.put_slice(query);
    out.put_u8(0);
    out.put_slice(param_types);
}

/// `Bind` ('B'): portal and statement names; `rest` is everything after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub rest: &'a [u8],
}

/// Decodes the names at the front of a `Bind` body.
pub fn decode_bind(body: &[u8]) -> Result<Bind<'_>, DecodeError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr_utf8()?;
    let statement = r.cstr_utf8()?;
    Ok(Bind {
        portal,
        statement,
        rest: r.rest(),
    })
}

/// A reader of a `Bind`'s `rest` (after its names), past its parameter
/// format codes: at the number of parameter values.
fn bind_at_parameters(rest: &[u8]) -> Result<Reader<'_>, DecodeError> {
    let mut r = Reader::new(rest, "Bind");
    let formats = r.i16()?;
    for _ in 0..formats.max(0) {
        r.i16()?;
    }
    Ok(r)
}

/// How many parameter values a `Bind` (the `rest` after its names) carries.
pub fn bind_parameter_count(rest: &[u8]) -> Result<i16, DecodeError> {
    bind_at_parameters(rest)?.i16()
}

/// Whether a `Bind` (the `rest` after its names) asks for the first
/// result column in binary format.
pub fn bind_first_result_binary(rest: &[u8]) -> Result<bool, DecodeError> {
    let mut r = bind_at_parameters(rest)?;
    let params = r.i16()?;
    for _ in 0..params.max(0) {
        let len = r.i32()?;
        if len > 0 {
            r.bytes(len as usize)?;
        }
    }
    let results = r.i16()?;
    // No code: all text; one code: applies to every column.
    Ok(results > 0 && r.i16()? == 1)
}

/// Encodes a `Bind` with a rewritten statement name.
pub fn encode_bind(out: &mut BytesMut, portal: &str, statement: &str, rest: &[u8]) {
    let len = 4 + portal.len() + 1 + statement.len() + 1 + rest.len();
    out.put_u8(b'B');
    out.put_i32(len as i32);
    put_cstr(out, portal);
    put_cstr(out, statement);
    out.put_slice(rest);
}

/// `Describe` ('D') or `Close` ('C'): target kind ('S' or 'P') and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: u8,
    pub name: &'a str,
}

/// Decodes a `Describe` or `Close` body.
pub fn decode_target<'a>(body: &'a [u8], what: &'static str) -> Result<Target<'a>, DecodeError> {
    let mut r = Reader::new(body, what);
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(DecodeError {
            what,
            detail: "target must be 'S' or 'P'",
        });
    }
    let name = r.cstr_utf8()?;
    Ok(Target { kind, name })
}

/// A client message after login, decoded once; every body is
/// bounds-checked. `None` from [`ClientMsg::decode`] is a message type a
/// client may not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    Query(&'a str),
    Parse(Parse<'a>),
    Bind(Bind<'a>),
    Describe(Target<'a>),
    Close(Target<'a>),
    Execute {
        portal: &'a str,
    },
    FunctionCall,
    Sync,
    Flush,
    /// CopyData, CopyDone or CopyFail.
    Copy,
    Terminate,
}

impl<'a> ClientMsg<'a> {
    /// Decodes the message of type `tag` with `body`; `Ok(None)` for a
    /// type a client may not send after login.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Option<ClientMsg<'a>>, DecodeError> {
        use crate::protocol::tag::fe;
        Ok(Some(match tag {
            fe::QUERY => ClientMsg::Query(decode_query(body)?),
            fe::PARSE => ClientMsg::Parse(decode_parse(body)?),
            fe::BIND => ClientMsg::Bind(decode_bind(body)?),
            fe::DESCRIBE => ClientMsg::Describe(decode_target(body, "Describe")?),
            fe::CLOSE => ClientMsg::Close(decode_target(body, "Close")?),
            fe::EXECUTE => {
                let mut r = Reader::new(body, "Execute");
                let portal = r.cstr_utf8()?;
                r.i32()?;
                ClientMsg::Execute { portal }
            }
            fe::FUNCTION_CALL => ClientMsg::FunctionCall,
            fe::SYNC => ClientMsg::Sync,
            fe::FLUSH => ClientMsg::Flush,
            fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => ClientMsg::Copy,
            fe::TERMINATE => ClientMsg::Terminate,
            _ => return Ok(None),
        }))
    }

    /// A `Query` or `Parse` that [`Self::decode`] refused for its text
    /// alone, not UTF-8: `Some` with the text as routing reads it, written
    /// into `readable_text` ([`readable`], the client's encoding `enc`),
    /// and for a `Parse` the text as sent in [`Parse::wire`]. `None` for
    /// any other message or fault (a name that is not UTF-8 included).
    pub fn decode_foreign(
        tag: u8,
        body: &'a [u8],
        enc: TextEncoding,
        readable_text: &'a mut String,
    ) -> Option<ClientMsg<'a>> {
        use crate::protocol::tag::fe;
        match tag {
            fe::QUERY => {
                let wire = Reader::new(body, "Query").cstr().ok()?;
                *readable_text = readable(wire, enc);
                let query: &'a String = readable_text;
                Some(ClientMsg::Query(query))
            }
            fe::PARSE => {
                let mut r = Reader::new(body, "Parse");
                let name = r.cstr_utf8().ok()?;
                let wire = r.cstr().ok()?;
                let param_types = parse_param_types(r.rest()).ok()?;
                *readable_text = readable(wire, enc);
                let query: &'a String = readable_text;
                Some(ClientMsg::Parse(Parse {
                    name,
                    query,
                    wire: Some(wire),
                    param_types,
                }))
            }
            _ => None,
        }
    }
}

/// Encodes a `Describe` (`tag` b'D') or `Close` (`tag` b'C').
pub fn encode_target(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    out.put_u8(tag);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(kind);
    put_cstr(out, name);
}

/// Encodes an `Execute` of `portal`, up to `max_rows` rows (0: all).
pub fn encode_execute(out: &mut BytesMut, portal: &str, max_rows: i32) {
    out.put_u8(b'E');
    out.put_i32((4 + portal.len() + 1 + 4) as i32);
    put_cstr(out, portal);
    out.put_i32(max_rows);
}

/// A `Bind` of the unnamed statement to the unnamed portal, with no
/// parameters and its results in text, then an `Execute` of all the
/// portal's rows: what follows the `Parse` of a statement the proxy runs
/// in a batch (a deferred `BEGIN`). As [`encode_bind`] and
/// [`encode_execute`] frame them (tested below).
pub const BIND_EXECUTE_UNNAMED: &[u8] = b"B\0\0\0\x0c\0\0\0\0\0\0\0\0E\0\0\0\x09\0\0\0\0\0";

/// A `FunctionCall` of the function whose `pg_proc` OID is `oid`, with no
/// arguments and its result in binary, at compile time: the message's OID,
/// then no argument format codes, no arguments, and result format 1.
pub const fn function_call_message(oid: u32) -> [u8; 15] {
    framed(b'F', &oid.to_be_bytes(), &[], &[0, 0, 0, 0, 0, 1])
}

/// `tag`, the length, then `head`, `body` and `tail`.
const fn framed<const N: usize>(tag: u8, head: &[u8], body: &[u8], tail: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out[0] = tag;
    let mut at = put_const(&mut out, 1, &((N - 1) as u32).to_be_bytes());
    at = put_const(&mut out, at, head);
    at = put_const(&mut out, at, body);
    at = put_const(&mut out, at, tail);
    assert!(at == N, "wrong length");
    out
}

/// Copies `src` into `out` at `at`; returns where it ends.
const fn put_const<const N: usize>(out: &mut [u8; N], at: usize, src: &[u8]) -> usize {
    let mut i = 0;
    while i < src.len() {
        out[at + i] = src[i];
        i += 1;
    }
    at + src.len()
}

/// Encodes a simple `Query`.
pub fn encode_query(out: &mut BytesMut, sql: &str) {
    out.put_u8(b'Q');
    out.put_i32((4 + sql.len() + 1) as i32);
    put_cstr(out, sql);
}

/// `SASLInitialResponse` ('p' in SASL): mechanism and client-first message.
pub fn decode_sasl_initial(body: &[u8]) -> Result<(&str, &[u8]), DecodeError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mech = r.cstr_utf8()?;
    let len = r.i32()?;
    if len < 0 {
        return Err(DecodeError {
            what: "SASLInitialResponse",
            detail: "no initial response",
        });
    }
    let data = r.bytes(len as usize)?;
    Ok((mech, data))
}

/// `PasswordMessage` ('p' for md5/cleartext).
pub fn decode_password(body: &[u8]) -> Result<&str, DecodeError> {
    Reader::new(body, "PasswordMessage").cstr_utf8()
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod bind_format_tests {
    use super::*;

    #[test]
    fn first_result_format_is_read_past_the_parameters() {
        // 1 param format (binary), 2 params ("ab", NULL), 1 result format.
        let mut b = BytesMut::new();
        b.put_i16(1);
        b.put_i16(1);
        b.put_i16(2);
        b.put_i32(2);
        b.put_slice(b"ab");
        b.put_i32(-1);
        b.put_i16(1);
        b.put_i16(1);
        assert!(bind_first_result_binary(&b).unwrap());
        let text = [0u8, 0, 0, 0, 0, 0];
        assert!(!bind_first_result_binary(&text).unwrap());
        // Truncated: an error, not a panic.
        assert!(bind_first_result_binary(&b[..7]).is_err());
        assert!(bind_first_result_binary(&[0, 0, 0, 1, 0, 0, 0, 9]).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_messages_are_framed_as_the_encoders_frame_them() {
        let mut b = BytesMut::new();
        encode_bind(&mut b, "", "", &[0, 0, 0, 0, 0, 0]);
        encode_execute(&mut b, "", 0);
        assert_eq!(&b[..], BIND_EXECUTE_UNNAMED);
        // FunctionCall (protocol docs, "Message Formats"): Int32 length,
        // Int32 OID, Int16 argument format codes (0), Int16 arguments (0),
        // Int16 result format (1: binary).
        let mut b = BytesMut::new();
        b.put_u8(b'F');
        b.put_i32(4 + 4 + 2 + 2 + 2);
        b.put_u32(0x0102_0304);
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(1);
        assert_eq!(b[..], function_call_message(0x0102_0304));
        let (tag, total) = crate::protocol::frame::peek_header(&b, 1 << 20)
            .unwrap()
            .expect("a whole frame");
        assert_eq!(
            (tag, total),
            (crate::protocol::tag::fe::FUNCTION_CALL, b.len())
        );
        assert_eq!(
            ClientMsg::decode(tag, &b[5..]),
            Ok(Some(ClientMsg::FunctionCall))
        );
    }

    #[test]
    fn client_messages_decode_once() {
        assert_eq!(
            ClientMsg::decode(b'Q', b"select 1\0"),
            Ok(Some(ClientMsg::Query("select 1")))
        );
        assert_eq!(
            ClientMsg::decode(b'E', b"p1\0\0\0\0\0"),
            Ok(Some(ClientMsg::Execute { portal: "p1" }))
        );
        assert_eq!(
            ClientMsg::decode(b'C', b"Ss\0"),
            Ok(Some(ClientMsg::Close(Target {
                kind: b'S',
                name: "s"
            })))
        );
        for tag in [b'S', b'H', b'F', b'd', b'c', b'f', b'X'] {
            assert!(matches!(ClientMsg::decode(tag, b""), Ok(Some(_))), "{tag}");
        }
        // A type a client may not send, and bodies cut short.
        assert_eq!(ClientMsg::decode(b'z', b"x\0"), Ok(None));
        for (tag, body) in [
            (b'Q', &b"no nul"[..]),
            (b'E', b"p1\0\0\0"),
            (b'D', b"Xs\0"),
            (b'P', b"s\0select 1\0\0"),
            (b'B', b""),
        ] {
            assert!(ClientMsg::decode(tag, body).is_err(), "{}", tag as char);
        }
    }

    /// A text that is not UTF-8 fails `decode` and is read by
    /// `decode_foreign`, for `Query` and `Parse` only; a name that is not
    /// UTF-8, or a body at fault otherwise, is still refused.
    #[test]
    fn texts_not_utf8_decode_as_foreign() {
        let mut r = String::new();
        let enc = TextEncoding::AsciiSafe;
        assert!(ClientMsg::decode(b'Q', b"select '\xe9'\0").is_err());
        assert_eq!(
            ClientMsg::decode_foreign(b'Q', b"select '\xe9'\0", enc, &mut r),
            Some(ClientMsg::Query("select '\u{fffd}'"))
        );
        let mut b = BytesMut::new();
        encode_parse(&mut b, "s", b"select '\xe9'", &[0, 1, 0, 0, 0, 25]);
        assert!(ClientMsg::decode(b'P', &b[5..]).is_err());
        let mut r = String::new();
        let Some(ClientMsg::Parse(p)) = ClientMsg::decode_foreign(b'P', &b[5..], enc, &mut r)
        else {
            panic!("not a Parse");
        };
        assert_eq!(
            (p.name, p.query, p.wire, p.param_types),
            (
                "s",
                "select '\u{fffd}'",
                Some(&b"select '\xe9'"[..]),
                &[0, 1, 0, 0, 0, 25][..]
            )
        );
        let mut r = String::new();
        for (tag, body) in [
            (b'P', &b"\xe9\0select 1\0\0\0"[..]),
            (b'P', b"s\0select '\xe9'\0\0\x01"),
            (b'Q', b"select '\xe9'"),
            (b'B', b"\xe9\0\0\0\0\0\0\0\0"),
            (b'E', b"\xe9\0\0\0\0\0"),
        ] {
            assert_eq!(
                ClientMsg::decode_foreign(tag, body, enc, &mut r),
                None,
                "{body:?}"
            );
        }
    }

    /// What the proxy encodes itself decodes as the message it means,
    /// length and all (a deferred `BEGIN` replayed in a client's batch).
    #[test]
    fn encoded_messages_decode_back() {
        let mut out = BytesMut::new();
        encode_parse(&mut out, "", b"select 1", &[0, 0]);
        encode_bind(&mut out, "", "", &[0, 0, 0, 0, 0, 0]);
        encode_execute(&mut out, "p", 0);
        encode_target(&mut out, b'C', b'S', "");
        let mut rest = &out[..];
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let (tag, total) = crate::protocol::frame::peek_header(rest, 1 << 20)
                .unwrap()
                .expect("a whole frame");
            seen.push(format!("{:?}", ClientMsg::decode(tag, &rest[5..total])));
            rest = &rest[total..];
        }
        assert_eq!(
            seen,
            [
                "Ok(Some(Parse(Parse { name: \"\", query: \"select 1\", wire: None, param_types: [0, 0] })))",
                "Ok(Some(Bind(Bind { portal: \"\", statement: \"\", rest: [0, 0, 0, 0, 0, 0] })))",
                "Ok(Some(Execute { portal: \"p\" }))",
                "Ok(Some(Close(Target { kind: 83, name: \"\" })))",
            ]
        );
        assert_eq!(bind_first_result_binary(&[0, 0, 0, 0, 0, 0]), Ok(false));
    }

    #[test]
    fn startup_with_params() {
        let mut b = BytesMut::new();
        b.put_i32(PROTOCOL_3_0);
        for s in ["user", "app", "database", "db", ""] {
            put_cstr(&mut b, s);
        }
        match decode_startup(&b).unwrap() {
            StartupPacket::Startup { version, params } => {
                assert_eq!(version, PROTOCOL_3_0);
                assert_eq!(
                    params,
                    vec![
                        ("user".into(), "app".into()),
                        ("database".into(), "db".into())
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// An `application_name` that is not UTF-8 is taken as PostgreSQL 15
    /// takes it (printable ASCII kept, each other byte `?`); another value
    /// that is not UTF-8 is refused.
    #[test]
    fn startup_values_that_are_not_utf8() {
        let packet = |name: &[u8], value: &[u8]| {
            let mut b = BytesMut::new();
            b.put_i32(PROTOCOL_3_0);
            for s in [&b"user"[..], b"app", name, value, b""] {
                b.put_slice(s);
                b.put_u8(0);
            }
            decode_startup(&b)
        };
        let params = |p: Result<StartupPacket, DecodeError>| match p.unwrap() {
            StartupPacket::Startup { params, .. } => params,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            params(packet(b"application_name", b"caf\xe9 \x01\x7f~")),
            vec![
                ("user".into(), "app".into()),
                ("application_name".into(), "caf? ??~".into())
            ]
        );
        // UTF-8 stays as sent: the server cleans it itself.
        assert_eq!(
            params(packet(b"application_name", "café".as_bytes()))[1].1,
            "café"
        );
        for name in [&b"user"[..], b"database", b"options", b"search_path"] {
            let e = packet(name, b"caf\xe9").unwrap_err();
            assert!(e.to_string().contains("not valid UTF-8"), "{e}");
        }
    }

    #[test]
    fn startup_special_codes_and_garbage() {
        assert_eq!(
            decode_startup(&SSL_REQUEST.to_be_bytes()).unwrap(),
            StartupPacket::Ssl
        );
        assert_eq!(
            decode_startup(&GSSENC_REQUEST.to_be_bytes()).unwrap(),
            StartupPacket::GssEnc
        );
        let mut c = CANCEL_REQUEST.to_be_bytes().to_vec();
        c.extend_from_slice(&7i32.to_be_bytes());
        c.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            decode_startup(&c).unwrap(),
            StartupPacket::Cancel {
                pid: 7,
                secret: 9i32.to_be_bytes().to_vec()
            }
        );
        assert!(decode_startup(&1234i32.to_be_bytes()).is_err());
        assert!(
            decode_startup(&[0, 3, 0, 0, b'u', b's']).is_err(),
            "unterminated parameter"
        );
        assert!(decode_startup(&[0, 3]).is_err());
    }

    #[test]
    fn parse_and_bind_round_trip_with_new_names() {
        let mut b = BytesMut::new();
        encode_parse(&mut b, "s1", b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        let p = decode_parse(&b[5..]).unwrap();
        assert_eq!((p.name, p.query), ("s1", "SELECT $1"));
        let mut again = BytesMut::new();
        encode_parse(&mut again, "lr_1", p.query.as_bytes(), p.param_types);
        assert_eq!(decode_parse(&again[5..]).unwrap().name, "lr_1");

        let mut b = BytesMut::new();
        encode_bind(&mut b, "", "s1", &[0, 0, 0, 0, 0, 0]);
        let bind = decode_bind(&b[5..]).unwrap();
        assert_eq!(
            (bind.portal, bind.statement, bind.rest),
            ("", "s1", &[0u8, 0, 0, 0, 0, 0][..])
        );
    }

    #[test]
    fn parse_rejects_mismatched_type_counts() {
        let mut b = BytesMut::new();
        encode_parse(&mut b, "", b"x", &[0, 2, 0, 0, 0, 23]);
        assert!(decode_parse(&b[5..]).is_err());
        let mut b = BytesMut::new();
        encode_parse(&mut b, "", b"x", &[0xff, 0xff]);
        assert!(decode_parse(&b[5..]).is_err());
    }

    #[test]
    fn targets() {
        let mut b = BytesMut::new();
        encode_target(&mut b, b'C', b'S', "s1");
        assert_eq!(
            decode_target(&b[5..], "Close").unwrap(),
            Target {
                kind: b'S',
                name: "s1"
            }
        );
        assert!(decode_target(b"X\0", "Close").is_err());
        assert!(decode_target(b"S", "Close").is_err());
    }
}
