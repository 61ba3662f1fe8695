//! Server messages: decoding the few the proxy reads (by hand, bounds
//! checked: these bytes come from the nodes), encoding the ones it sends
//! clients itself (auth, errors, synthetic completions, SHOW results) with
//! pgwire's message types.

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::data::{
    DataRow, FORMAT_CODE_TEXT, FieldDescription, ParameterDescription, RowDescription,
};
use pgwire::messages::response::{ErrorResponse, NoticeResponse};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, SecretKey,
};

use super::reader::{DecodeError, Reader};

/// An `Authentication*` request from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<&'a str> },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    Other(i32),
}

/// Decodes an `Authentication` ('R') body.
pub fn decode_auth(body: &[u8]) -> Result<AuthRequest<'_>, DecodeError> {
    let mut r = Reader::new(body, "Authentication");
    Ok(match r.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let s = r.bytes(4)?;
            AuthRequest::Md5 {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr_utf8()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(r.rest()),
        12 => AuthRequest::SaslFinal(r.rest()),
        n => AuthRequest::Other(n),
    })
}

/// `ParameterStatus` ('S'): name and value.
pub fn decode_parameter_status(body: &[u8]) -> Result<(&str, &str), DecodeError> {
    let mut r = Reader::new(body, "ParameterStatus");
    Ok((r.cstr_utf8()?, r.cstr_utf8()?))
}

/// `BackendKeyData` ('K'): process id and secret key.
pub fn decode_backend_key(body: &[u8]) -> Result<(i32, Vec<u8>), DecodeError> {
    let mut r = Reader::new(body, "BackendKeyData");
    let pid = r.i32()?;
    let secret = r.rest();
    if secret.is_empty() || secret.len() > 256 {
        return Err(DecodeError {
            what: "BackendKeyData",
            detail: "bad secret key length",
        });
    }
    Ok((pid, secret.to_vec()))
}

/// The SQLSTATE and message of an `ErrorResponse` or `NoticeResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// The first column of a DataRow body; `None` when the row has no column
/// or that column is NULL.
pub fn decode_first_column(body: &[u8]) -> Result<Option<&[u8]>, DecodeError> {
    let mut r = Reader::new(body, "DataRow");
    if r.i16()? <= 0 {
        return Ok(None);
    }
    value(&mut r)
}

/// The result of a `FunctionCallResponse` body; `None` when it is NULL.
pub fn decode_function_result(body: &[u8]) -> Result<Option<&[u8]>, DecodeError> {
    value(&mut Reader::new(body, "FunctionCallResponse"))
}

/// A value as the server sends one: its length, then its bytes; `None`
/// for a length of -1 (NULL).
fn value<'a>(r: &mut Reader<'a>) -> Result<Option<&'a [u8]>, DecodeError> {
    let len = r.i32()?;
    if len < 0 {
        return Ok(None);
    }
    Ok(Some(r.bytes(len as usize)?))
}

/// Decodes the fields of an `ErrorResponse`/`NoticeResponse` body.
pub fn decode_error_fields(body: &[u8]) -> Result<ErrorFields, DecodeError> {
    let mut r = Reader::new(body, "ErrorResponse");
    let mut f = ErrorFields::default();
    loop {
        let t = r.u8()?;
        if t == 0 {
            break;
        }
        let v = String::from_utf8_lossy(r.cstr()?).into_owned();
        match t {
            b'S' => f.severity = v,
            b'C' => f.code = v,
            b'M' => f.message = v,
            _ => {}
        }
    }
    Ok(f)
}

// ---- Encoding: what lagrouter writes to clients itself, with pgwire's
// message types. Forwarded traffic never passes through here; it stays raw
// frames. pgwire's decoders are never used: untrusted bytes go only through
// the bounds-checked readers above.

/// Appends `m` as pgwire encodes it. Encoding into memory fails only when
/// a message is over pgwire's limit for its type (30,000 bytes for
/// ParameterStatus, CommandComplete and the authentication requests);
/// lagrouter writes none that large, and should it, the message is left
/// out and logged rather than sent half-written.
fn put<M: Message>(out: &mut BytesMut, m: M) {
    let at = out.len();
    if let Err(e) = m.encode(out) {
        out.truncate(at);
        tracing::error!("cannot encode a {}: {e}", std::any::type_name::<M>());
    }
}

/// `AuthenticationOk`.
pub fn auth_ok(out: &mut BytesMut) {
    put(out, Authentication::Ok);
}

/// `AuthenticationMD5Password`.
pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    put(out, Authentication::MD5Password(salt.to_vec()));
}

/// `AuthenticationSASL` offering SCRAM-SHA-256.
pub fn auth_sasl(out: &mut BytesMut) {
    put(out, Authentication::SASL(vec!["SCRAM-SHA-256".into()]));
}

/// `AuthenticationSASLContinue` (11) or `AuthenticationSASLFinal` (12).
pub fn auth_sasl_data(out: &mut BytesMut, code: i32, data: &[u8]) {
    let data = Bytes::copy_from_slice(data);
    put(
        out,
        if code == 12 {
            Authentication::SASLFinal(data)
        } else {
            Authentication::SASLContinue(data)
        },
    );
}

/// `ParameterStatus`. Framed by hand: every writing transaction reports
/// its LSN with one, and the message type would copy both strings first.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    put_cstrs(out, b'S', &[name, value]);
}

/// A message of `tag` whose body is `strings`, each ending with a 0 byte,
/// as pgwire frames `ParameterStatus` and `CommandComplete` (tested below).
/// One too large for a length (it never is: lagrouter writes these) is
/// left out and logged.
fn put_cstrs(out: &mut BytesMut, tag: u8, strings: &[&str]) {
    let len = 4 + strings.iter().map(|s| s.len() + 1).sum::<usize>();
    let Ok(len) = i32::try_from(len) else {
        tracing::error!("cannot encode a '{}' message of {len} bytes", tag as char);
        return;
    };
    out.reserve(1 + len as usize);
    out.put_u8(tag);
    out.put_i32(len);
    for s in strings {
        out.put_slice(s.as_bytes());
        out.put_u8(0);
    }
}

/// `BackendKeyData`.
pub fn backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    put(out, BackendKeyData::new(pid, SecretKey::I32(secret)));
}

/// `ReadyForQuery` with a transaction status ('I', 'T' or 'E'; anything
/// else is sent as 'E', the status that makes a client roll back).
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    out.extend_from_slice(&ready_message(status));
}

/// [`ready_for_query`] as a whole message, for an answer queued to be sent
/// later (every answer the proxy gives itself ends with one): framed by
/// hand, as pgwire frames it (tested below), and not allocated.
pub fn ready_message(status: u8) -> Bytes {
    match status {
        b'I' => Bytes::from_static(b"Z\0\0\0\x05I"),
        b'T' => Bytes::from_static(b"Z\0\0\0\x05T"),
        _ => Bytes::from_static(b"Z\0\0\0\x05E"),
    }
}

/// `NegotiateProtocolVersion`: the newest version supported (3.0) and
/// the `_pq_.` options not recognised.
pub fn negotiate_protocol_version(out: &mut BytesMut, unrecognised: &[&str]) {
    put(
        out,
        NegotiateProtocolVersion::new(
            super::frontend::PROTOCOL_3_0,
            unrecognised.iter().map(|o| o.to_string()).collect(),
        ),
    );
}

/// Severity of an error or notice sent by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }
}

/// An `ErrorResponse` (or `NoticeResponse` for notice/warning severities).
pub fn error_response(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    msg: &str,
    hint: Option<&str>,
) {
    let mut fields = vec![
        (b'S', severity.as_str().to_owned()),
        (b'V', severity.as_str().to_owned()),
        (b'C', code.to_owned()),
        (b'M', msg.to_owned()),
    ];
    if let Some(h) = hint {
        fields.push((b'H', h.to_owned()));
    }
    match severity {
        Severity::Error | Severity::Fatal => put(out, ErrorResponse::new(fields)),
        Severity::Notice | Severity::Warning => put(out, NoticeResponse::new(fields)),
    }
}

/// A message with an empty body: `ParseComplete` '1', `BindComplete` '2',
/// `CloseComplete` '3', `NoData` 'n', `EmptyQueryResponse` 'I',
/// `PortalSuspended` 's', or any other tag. Framed by hand, as pgwire
/// frames them (tested below): a deferred `BEGIN`'s answers and a
/// prepared statement's `ParseComplete` are written in every transaction.
pub fn empty(out: &mut BytesMut, tag: u8) {
    out.extend_from_slice(&[tag, 0, 0, 0, 4]);
}

/// [`empty`] as a whole message, for an answer queued to be sent later:
/// the usual tags without allocating.
pub fn empty_message(tag: u8) -> Bytes {
    match tag {
        b'1' => Bytes::from_static(b"1\0\0\0\x04"),
        b'2' => Bytes::from_static(b"2\0\0\0\x04"),
        b'3' => Bytes::from_static(b"3\0\0\0\x04"),
        b'n' => Bytes::from_static(b"n\0\0\0\x04"),
        b'I' => Bytes::from_static(b"I\0\0\0\x04"),
        other => Bytes::copy_from_slice(&[other, 0, 0, 0, 4]),
    }
}

/// `ParameterDescription` of parameters of the given type OIDs.
pub fn parameter_description(out: &mut BytesMut, types: &[u32]) {
    put(out, ParameterDescription::new(types.to_vec()));
}

/// `CommandComplete` with a tag such as `SHOW` or `SET`, framed by hand
/// (a deferred `BEGIN` answers with one).
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    put_cstrs(out, b'C', &[tag]);
}

/// [`command_complete`] of `BEGIN`, whole: the answer to a deferred
/// `BEGIN`, queued without allocating.
pub const BEGIN_COMPLETE: &[u8] = b"C\0\0\0\x0aBEGIN\0";

/// `RowDescription` of text columns.
pub fn row_description(out: &mut BytesMut, columns: &[&str]) {
    put(
        out,
        RowDescription::new(columns.iter().map(|c| column(c, TEXT_OID)).collect()),
    );
}

/// Type OID of `text`.
pub const TEXT_OID: i32 = 25;
/// Type OID of `int4`.
pub const INT4_OID: i32 = 23;

/// `RowDescription` of text-format columns of the given types.
pub fn row_description_typed(out: &mut BytesMut, columns: &[(&str, i32)]) {
    put(
        out,
        RowDescription::new(columns.iter().map(|(c, oid)| column(c, *oid)).collect()),
    );
}

/// A text-format column of type `oid`, from no table.
fn column(name: &str, oid: i32) -> FieldDescription {
    let size = if oid == INT4_OID { 4 } else { -1 };
    FieldDescription::new(name.into(), 0, 0, oid as u32, size, -1, FORMAT_CODE_TEXT)
}

/// `DataRow` of raw (e.g. binary-format) values.
pub fn data_row_bytes(out: &mut BytesMut, values: &[&[u8]]) {
    row(out, values.iter().map(|v| Some(*v)), values.len());
}

/// `DataRow` of text values (`None` is NULL).
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    row(
        out,
        values.iter().map(|v| v.map(str::as_bytes)),
        values.len(),
    );
}

/// pgwire's `DataRow` holds the columns already encoded: each is its
/// length (-1 for NULL) and its bytes.
fn row<'a>(out: &mut BytesMut, values: impl Iterator<Item = Option<&'a [u8]>>, n: usize) {
    let mut data = BytesMut::new();
    for v in values {
        match v {
            Some(v) => {
                data.put_i32(v.len() as i32);
                data.put_slice(v);
            }
            None => data.put_i32(-1),
        }
    }
    put(out, DataRow::new(data, n as i16));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_status_is_framed_as_pgwire_frames_it() {
        use pgwire::messages::startup::ParameterStatus;
        for (k, v) in [
            ("lagrouter.last_write_lsn", "16/B374D848"),
            ("", ""),
            ("a", "é"),
        ] {
            let mut ours = BytesMut::new();
            parameter_status(&mut ours, k, v);
            let mut theirs = BytesMut::new();
            put(&mut theirs, ParameterStatus::new(k.into(), v.into()));
            assert_eq!(ours, theirs, "{k}={v}");
            assert_eq!(decode_parameter_status(&ours[5..]).unwrap(), (k, v));
        }
    }

    #[test]
    fn hand_framed_messages_are_framed_as_pgwire_frames_them() {
        use pgwire::messages::data::NoData;
        use pgwire::messages::extendedquery::{
            BindComplete, CloseComplete, ParseComplete, PortalSuspended,
        };
        use pgwire::messages::response::{
            CommandComplete, EmptyQueryResponse, ReadyForQuery, TransactionStatus,
        };
        let theirs = |f: &dyn Fn(&mut BytesMut)| {
            let mut b = BytesMut::new();
            f(&mut b);
            b
        };
        for (tag, pg) in [
            (b'1', theirs(&|b| put(b, ParseComplete::new()))),
            (b'2', theirs(&|b| put(b, BindComplete::new()))),
            (b'3', theirs(&|b| put(b, CloseComplete::new()))),
            (b'n', theirs(&|b| put(b, NoData::new()))),
            (b'I', theirs(&|b| put(b, EmptyQueryResponse::new()))),
            (b's', theirs(&|b| put(b, PortalSuspended::new()))),
        ] {
            let mut ours = BytesMut::new();
            empty(&mut ours, tag);
            assert_eq!(ours, pg, "{}", tag as char);
            assert_eq!(empty_message(tag), pg, "{}", tag as char);
        }
        for (status, ts) in [
            (b'I', TransactionStatus::Idle),
            (b'T', TransactionStatus::Transaction),
            (b'E', TransactionStatus::Error),
            (b'x', TransactionStatus::Error),
        ] {
            let pg = theirs(&|b| put(b, ReadyForQuery::new(ts)));
            let mut ours = BytesMut::new();
            ready_for_query(&mut ours, status);
            assert_eq!(ours, pg, "{}", status as char);
            assert_eq!(ready_message(status), pg, "{}", status as char);
        }
        let mut ours = BytesMut::new();
        command_complete(&mut ours, "BEGIN");
        assert_eq!(&ours[..], BEGIN_COMPLETE);
        for tag in ["BEGIN", "ROLLBACK", "DEALLOCATE", "SELECT 1", ""] {
            let mut ours = BytesMut::new();
            command_complete(&mut ours, tag);
            assert_eq!(
                ours,
                theirs(&|b| put(b, CommandComplete::new(tag.into()))),
                "{tag}"
            );
        }
    }

    #[test]
    fn error_round_trip() {
        let mut b = BytesMut::new();
        error_response(
            &mut b,
            Severity::Error,
            "28P01",
            "bad password",
            Some("try again"),
        );
        assert_eq!(b[0], b'E');
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        let f = decode_error_fields(&b[5..]).unwrap();
        assert_eq!(
            (f.severity.as_str(), f.code.as_str(), f.message.as_str()),
            ("ERROR", "28P01", "bad password")
        );
    }

    #[test]
    fn auth_requests() {
        assert_eq!(decode_auth(&0i32.to_be_bytes()).unwrap(), AuthRequest::Ok);
        assert_eq!(
            decode_auth(&[0, 0, 0, 5, 1, 2, 3, 4]).unwrap(),
            AuthRequest::Md5 { salt: [1, 2, 3, 4] }
        );
        assert!(decode_auth(&[0, 0, 0, 5, 1]).is_err());
        let mut b = BytesMut::new();
        auth_sasl(&mut b);
        assert_eq!(
            decode_auth(&b[5..]).unwrap(),
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256"]
            }
        );
        assert!(decode_auth(&[0, 0, 0, 10, b'x']).is_err());
    }

    #[test]
    fn function_results_are_bounds_checked() {
        let v = b"\0\0\0\x0b16/B374D848";
        assert_eq!(
            decode_function_result(v).unwrap(),
            Some(&b"16/B374D848"[..])
        );
        assert_eq!(decode_function_result(b"\xff\xff\xff\xff").unwrap(), None);
        // Shorter than it says, or no length at all: an error, not a panic.
        assert!(decode_function_result(&v[..9]).is_err());
        assert!(decode_function_result(b"\0\0").is_err());
    }

    #[test]
    fn small_messages() {
        let mut b = BytesMut::new();
        ready_for_query(&mut b, b'I');
        assert_eq!(&b[..], b"Z\0\0\0\x05I");
        let mut b = BytesMut::new();
        parameter_status(&mut b, "a", "b");
        assert_eq!(decode_parameter_status(&b[5..]).unwrap(), ("a", "b"));
        assert!(decode_backend_key(&[0, 0, 0, 1]).is_err());
        assert_eq!(
            decode_backend_key(&[0, 0, 0, 1, 0, 0, 0, 2]).unwrap(),
            (1, vec![0, 0, 0, 2])
        );
    }

    /// pgwire writes what PostgreSQL (and the hand-written encoders these
    /// replaced) write, byte for byte.
    #[test]
    fn encoders_write_postgres_bytes() {
        let enc = |f: &dyn Fn(&mut BytesMut)| {
            let mut b = BytesMut::new();
            f(&mut b);
            b.to_vec()
        };
        assert_eq!(
            enc(&|b| row_description(b, &["a"])),
            b"T\0\0\0\x1a\0\x01a\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0"
        );
        assert_eq!(
            enc(&|b| data_row(b, &[Some("x"), None])),
            b"D\0\0\0\x0f\0\x02\0\0\0\x01x\xff\xff\xff\xff"
        );
        assert_eq!(enc(&|b| command_complete(b, "SET")), b"C\0\0\0\x08SET\0");
        assert_eq!(
            enc(&|b| auth_sasl(b)),
            b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"
        );
        assert_eq!(
            enc(&|b| auth_sasl_data(b, 12, b"v=x")),
            b"R\0\0\0\x0b\0\0\0\x0cv=x"
        );
        assert_eq!(
            enc(&|b| auth_md5(b, [1, 2, 3, 4])),
            b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04"
        );
        assert_eq!(enc(&|b| auth_ok(b)), b"R\0\0\0\x08\0\0\0\0");
        assert_eq!(
            enc(&|b| backend_key(b, 1, 2)),
            b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02"
        );
        assert_eq!(enc(&|b| empty(b, b'1')), b"1\0\0\0\x04");
        assert_eq!(enc(&|b| empty(b, b'n')), b"n\0\0\0\x04");
        assert_eq!(
            enc(&|b| negotiate_protocol_version(b, &["_pq_.x"])),
            b"v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0"
        );
        assert_eq!(enc(&|b| ready_for_query(b, b'T')), b"Z\0\0\0\x05T");
        assert_eq!(enc(&|b| parameter_description(b, &[])), b"t\0\0\0\x06\0\0");
        let notice = enc(&|b| error_response(b, Severity::Notice, "01000", "hm", None));
        assert_eq!(notice[0], b'N');
        assert_eq!(decode_error_fields(&notice[5..]).unwrap().message, "hm");
    }
}
