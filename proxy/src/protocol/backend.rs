//! Server messages: decoding the few the proxy reads, encoding the ones it
//! sends clients itself (auth, errors, synthetic completions, SHOW results).

use bytes::{BufMut, BytesMut};

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

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Writes a message: tag, then a length patched in after `body` fills it.
fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// `AuthenticationOk`.
pub fn auth_ok(out: &mut BytesMut) {
    message(out, b'R', |b| b.put_i32(0));
}

/// `AuthenticationMD5Password`.
pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    message(out, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

/// `AuthenticationSASL` offering SCRAM-SHA-256.
pub fn auth_sasl(out: &mut BytesMut) {
    message(out, b'R', |b| {
        b.put_i32(10);
        put_cstr(b, "SCRAM-SHA-256");
        b.put_u8(0);
    });
}

/// `AuthenticationSASLContinue` (11) or `AuthenticationSASLFinal` (12).
pub fn auth_sasl_data(out: &mut BytesMut, code: i32, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(code);
        b.put_slice(data);
    });
}

/// `ParameterStatus`.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    message(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// `BackendKeyData`.
pub fn backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// `ReadyForQuery` with a transaction status ('I', 'T' or 'E').
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    message(out, b'Z', |b| b.put_u8(status));
}

/// `NegotiateProtocolVersion`: the newest minor version supported (0) and
/// the `_pq_.` options not recognised.
pub fn negotiate_protocol_version(out: &mut BytesMut, unrecognised: &[&str]) {
    message(out, b'v', |b| {
        b.put_i32(super::frontend::PROTOCOL_3_0);
        b.put_i32(unrecognised.len() as i32);
        for o in unrecognised {
            put_cstr(b, o);
        }
    });
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
    let tag = match severity {
        Severity::Error | Severity::Fatal => b'E',
        Severity::Notice | Severity::Warning => b'N',
    };
    message(out, tag, |b| {
        for t in [b'S', b'V'] {
            b.put_u8(t);
            put_cstr(b, severity.as_str());
        }
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, msg);
        if let Some(h) = hint {
            b.put_u8(b'H');
            put_cstr(b, h);
        }
        b.put_u8(0);
    });
}

/// A message with an empty body (`ParseComplete` '1', `BindComplete` '2',
/// `CloseComplete` '3', `NoData` 'n', `EmptyQueryResponse` 'I').
pub fn empty(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_i32(4);
}

/// `CommandComplete` with a tag such as `SHOW` or `SET`.
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    message(out, b'C', |b| put_cstr(b, tag));
}

/// `RowDescription` of text columns.
pub fn row_description(out: &mut BytesMut, columns: &[&str]) {
    message(out, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for c in columns {
            column_description(b, c, TEXT_OID);
        }
    });
}

/// Type OID of `text`.
pub const TEXT_OID: i32 = 25;
/// Type OID of `int4`.
pub const INT4_OID: i32 = 23;

/// `RowDescription` of text-format columns of the given types.
pub fn row_description_typed(out: &mut BytesMut, columns: &[(&str, i32)]) {
    message(out, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for (c, oid) in columns {
            column_description(b, c, *oid);
        }
    });
}

fn column_description(b: &mut BytesMut, name: &str, oid: i32) {
    put_cstr(b, name);
    b.put_i32(0); // table oid
    b.put_i16(0); // column number
    b.put_i32(oid);
    b.put_i16(if oid == INT4_OID { 4 } else { -1 }); // type size
    b.put_i32(-1); // type modifier
    b.put_i16(0); // text format
}

/// `DataRow` of raw (e.g. binary-format) values.
pub fn data_row_bytes(out: &mut BytesMut, values: &[&[u8]]) {
    message(out, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            b.put_i32(v.len() as i32);
            b.put_slice(v);
        }
    });
}

/// `DataRow` of text values (`None` is NULL).
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    message(out, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
