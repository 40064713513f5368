//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) into JSON.
//!
//! `kubectl`'s generator commands (`kubectl create namespace|configmap|secret|serviceaccount ...`) send typed
//! objects as protobuf rather than JSON. A body is the 4-byte magic `k8s\0` followed by a `runtime.Unknown`
//! envelope: `typeMeta {apiVersion = 1, kind = 2} = 1`, `raw = 2` (the object's own message), `contentEncoding = 3`,
//! `contentType = 4`. [`decode`] turns such a body into the object's JSON form, as Go's `encoding/json` would print
//! it (`omitempty` honoured, zero times as `null`), with `apiVersion` and `kind` from the envelope.
//!
//! There is no generated code and no protobuf dependency: a small wire-format reader walks the body, driven by the
//! static descriptor tables in [`types`] that list each message's fields (number, JSON name, kind). Fields not in
//! a table are skipped, as protobuf requires. Only the kinds listed by [`supported_kinds`] can be decoded; any other
//! kind is an error, and the caller should answer 415 or 400 and let the client fall back to JSON.

mod types;

#[cfg(test)]
mod tests;

use serde_json::{Map, Value};
use types::{Field, Kind, Msg};

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The prefix of every Kubernetes protobuf body.
const MAGIC: &[u8; 4] = b"k8s\0";

/// Decodes a Kubernetes protobuf body (the 4-byte magic `k8s\0` + `runtime.Unknown` envelope
/// {typeMeta{apiVersion,kind}, raw, contentEncoding, contentType}) into the object's JSON form.
///
/// Errors (bad magic, truncated or malformed input, a wire type that does not match the field, an unknown kind)
/// are returned as a sentence fit for a 400 response.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("not a Kubernetes protobuf body: it does not start with the 4-byte prefix \"k8s\\0\"")?;
    let envelope = Envelope::parse(rest).map_err(|e| format!("malformed protobuf envelope: {e}"))?;
    if envelope.kind.is_empty() {
        return Err("malformed protobuf envelope: typeMeta.kind is empty".to_string());
    }
    if !envelope.content_encoding.is_empty() {
        return Err(format!("unsupported protobuf contentEncoding {:?}", envelope.content_encoding));
    }
    let mut object = match envelope.content_type.as_str() {
        "" | CONTENT_TYPE => {
            let msg = types::lookup(&envelope.api_version, &envelope.kind).ok_or_else(|| {
                format!(
                    "protobuf bodies are not supported for {} {}; send JSON or YAML instead",
                    api_version_for_message(&envelope.api_version),
                    envelope.kind
                )
            })?;
            decode_message(envelope.raw, msg)
                .map_err(|e| format!("malformed protobuf {} {}: {e}", envelope.api_version, envelope.kind))?
        }
        "application/json" => match serde_json::from_slice(envelope.raw) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err("the JSON inside the protobuf envelope is not an object".to_string()),
            Err(e) => return Err(format!("invalid JSON inside the protobuf envelope: {e}")),
        },
        other => return Err(format!("unsupported protobuf envelope contentType {other:?}")),
    };
    object.insert("apiVersion".to_string(), Value::String(envelope.api_version));
    object.insert("kind".to_string(), Value::String(envelope.kind));
    Ok(Value::Object(object))
}

/// Whether [`decode`] understands protobuf bodies of this `apiVersion` and `kind`.
pub fn supports(api_version: &str, kind: &str) -> bool {
    types::lookup(api_version, kind).is_some()
}

/// Every `(apiVersion, kind)` that [`decode`] understands.
pub fn supported_kinds() -> impl Iterator<Item = (&'static str, &'static str)> {
    types::kinds()
}

fn api_version_for_message(api_version: &str) -> &str {
    if api_version.is_empty() {
        "(no apiVersion)"
    } else {
        api_version
    }
}

/// The `runtime.Unknown` envelope.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

impl<'a> Envelope<'a> {
    fn parse(buf: &'a [u8]) -> Result<Self, String> {
        let mut envelope = Envelope {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
            content_type: String::new(),
        };
        let mut r = Reader::new(buf);
        while let Some((num, wire)) = r.key()? {
            match num {
                1 => {
                    let mut t = Reader::new(r.length_delimited_as(wire, "typeMeta")?);
                    while let Some((num, wire)) = t.key()? {
                        match num {
                            1 => envelope.api_version = utf8(t.length_delimited_as(wire, "typeMeta.apiVersion")?),
                            2 => envelope.kind = utf8(t.length_delimited_as(wire, "typeMeta.kind")?),
                            _ => t.skip(wire)?,
                        }
                    }
                }
                2 => envelope.raw = r.length_delimited_as(wire, "raw")?,
                3 => envelope.content_encoding = utf8(r.length_delimited_as(wire, "contentEncoding")?),
                4 => envelope.content_type = utf8(r.length_delimited_as(wire, "contentType")?),
                _ => r.skip(wire)?,
            }
        }
        Ok(envelope)
    }
}

// ---- the wire format ----

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_START_GROUP: u8 = 3;
const WIRE_END_GROUP: u8 = 4;
const WIRE_FIXED32: u8 = 5;

fn wire_name(wire: u8) -> &'static str {
    match wire {
        WIRE_VARINT => "varint",
        WIRE_FIXED64 => "64-bit",
        WIRE_LEN => "length-delimited",
        WIRE_START_GROUP => "start-group",
        WIRE_END_GROUP => "end-group",
        WIRE_FIXED32 => "32-bit",
        _ => "invalid",
    }
}

/// A cursor over protobuf wire-format bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(format!("truncated varint at byte {}", self.pos));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes ending at byte {}", self.pos))
    }

    /// The next field's number and wire type, or `None` at the end of the buffer.
    fn key(&mut self) -> Result<Option<(u32, u8)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let num = key >> 3;
        let wire = (key & 7) as u8;
        if num == 0 || num > u64::from(u32::MAX >> 3) {
            return Err(format!("invalid field number {num} at byte {at}"));
        }
        Ok(Some((num as u32, wire)))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let left = self.buf.len() - self.pos;
        if len > left {
            return Err(format!("truncated input: a field at byte {} needs {len} bytes, {left} left", self.pos));
        }
        let bytes = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| format!("length {len} too large"))?;
        self.take(len)
    }

    /// A length-delimited field, after checking that the wire type says so.
    /// `what` names the field in the error; leave it empty when the caller's context already does.
    fn length_delimited_as(&mut self, wire: u8, what: &str) -> Result<&'a [u8], String> {
        expect_wire(wire, WIRE_LEN).map_err(|e| if what.is_empty() { e } else { format!("{what}: {e}") })?;
        self.length_delimited()
    }

    /// A varint field, after checking that the wire type says so.
    fn varint_as(&mut self, wire: u8, what: &str) -> Result<u64, String> {
        expect_wire(wire, WIRE_VARINT).map_err(|e| format!("{what}: {e}"))?;
        self.varint()
    }

    /// Skips a field of an unknown number.
    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8).map(drop),
            WIRE_LEN => self.length_delimited().map(drop),
            WIRE_FIXED32 => self.take(4).map(drop),
            WIRE_START_GROUP | WIRE_END_GROUP => Err("protobuf groups are not supported".to_string()),
            _ => Err(format!("invalid wire type {wire}")),
        }
    }
}

fn expect_wire(got: u8, want: u8) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("wrong wire type {got} ({}), expected {want} ({})", wire_name(got), wire_name(want)))
    }
}

// ---- messages to JSON ----

/// Decodes one message into a JSON object, following its descriptor.
fn decode_message(buf: &[u8], msg: &Msg) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.key().map_err(|e| format!("{}: {e}", msg.name))? {
        match msg.fields.iter().find(|f| f.num == num) {
            Some(field) => {
                decode_field(&mut r, wire, field, &mut out).map_err(|e| format!("{}.{}: {e}", msg.name, field.name))?
            }
            None => r.skip(wire).map_err(|e| format!("{} field {num}: {e}", msg.name))?,
        }
    }
    for field in msg.fields.iter().filter(|f| f.omit_empty && is_scalar_or_collection(f.kind)) {
        if out.get(field.name).is_some_and(is_empty) {
            out.remove(field.name);
        }
    }
    Ok(out)
}

fn decode_field(r: &mut Reader, wire: u8, field: &Field, out: &mut Map<String, Value>) -> Result<(), String> {
    let name = field.name;
    match field.kind {
        Kind::Int32 | Kind::Int64 | Kind::Bool => {
            expect_wire(wire, WIRE_VARINT)?;
            let v = r.varint()?;
            let value = match field.kind {
                // int32 values are sign-extended to 64 bits on the wire; the low 32 bits are the value.
                Kind::Int32 => Value::from(v as i32),
                Kind::Int64 => Value::from(v as i64),
                _ => Value::Bool(v != 0),
            };
            out.insert(name.to_string(), value);
        }
        Kind::Map | Kind::MapBytes | Kind::MapQuantity => {
            let (key, value) = decode_map_entry(r.length_delimited_as(wire, "")?, field.kind)?;
            let map = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = map {
                map.insert(key, value);
            }
        }
        Kind::RepeatedString | Kind::RepeatedMessage(_) => {
            let bytes = r.length_delimited_as(wire, "")?;
            let item = match field.kind {
                Kind::RepeatedMessage(msg) => Value::Object(decode_message(bytes, msg)?),
                _ => Value::String(utf8(bytes)),
            };
            let list = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = list {
                list.push(item);
            }
        }
        kind => {
            let bytes = r.length_delimited_as(wire, "")?;
            out.insert(name.to_string(), decode_length_delimited(bytes, kind)?);
        }
    }
    Ok(())
}

/// Decodes the payload of a singular length-delimited field.
fn decode_length_delimited(bytes: &[u8], kind: Kind) -> Result<Value, String> {
    Ok(match kind {
        Kind::String => Value::String(utf8(bytes)),
        Kind::Bytes => Value::String(base64(bytes)),
        Kind::Message(msg) => Value::Object(decode_message(bytes, msg)?),
        Kind::Time => decode_time(bytes, false)?,
        Kind::MicroTime => decode_time(bytes, true)?,
        Kind::Quantity => decode_quantity(bytes)?,
        Kind::RawJson => decode_raw_json(bytes)?,
        Kind::IntOrString => decode_int_or_string(bytes)?,
        other => return Err(format!("internal error: {other:?} is not a singular length-delimited kind")),
    })
}

/// A map entry message: key = 1 (string), value = 2.
fn decode_map_entry(buf: &[u8], kind: Kind) -> Result<(String, Value), String> {
    let value_kind = match kind {
        Kind::MapBytes => Kind::Bytes,
        Kind::MapQuantity => Kind::Quantity,
        _ => Kind::String,
    };
    let mut key = String::new();
    let mut value = None;
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.key()? {
        match num {
            1 => key = utf8(r.length_delimited_as(wire, "map key")?),
            2 => value = Some(decode_length_delimited(r.length_delimited_as(wire, "map value")?, value_kind)?),
            _ => r.skip(wire)?,
        }
    }
    // An absent value is the value type's zero value.
    let value = match value {
        Some(value) => value,
        None => decode_length_delimited(&[], value_kind)?,
    };
    Ok((key, value))
}

/// Go's zero `time.Time` (0001-01-01T00:00:00Z) in Unix seconds.
const GO_ZERO_TIME_UNIX: i64 = -62_135_596_800;

/// `meta/v1.Time` / `MicroTime`: seconds = 1 (int64), nanos = 2 (int32). An empty message and Go's zero time
/// both mean the zero time, which JSON prints as `null`.
fn decode_time(buf: &[u8], micro: bool) -> Result<Value, String> {
    if buf.is_empty() {
        return Ok(Value::Null);
    }
    let (mut seconds, mut nanos) = (0i64, 0i64);
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.key()? {
        match num {
            1 => seconds = r.varint_as(wire, "seconds")? as i64,
            2 => nanos = i64::from(r.varint_as(wire, "nanos")? as i32),
            _ => r.skip(wire)?,
        }
    }
    // Like Go's time.Unix, carry nanoseconds outside [0, 1e9) into the seconds.
    let seconds = seconds.checked_add(nanos.div_euclid(1_000_000_000)).ok_or("time out of range")?;
    let nanos = nanos.rem_euclid(1_000_000_000) as u32;
    if seconds == GO_ZERO_TIME_UNIX && nanos == 0 {
        return Ok(Value::Null);
    }
    let time = chrono::DateTime::from_timestamp(seconds, nanos).ok_or("time out of range")?;
    if !(0..=9999).contains(&chrono::Datelike::year(&time)) {
        return Err(format!("time {seconds}s is outside the years 0 to 9999 that RFC 3339 can express"));
    }
    let format = if micro { "%Y-%m-%dT%H:%M:%S%.6fZ" } else { "%Y-%m-%dT%H:%M:%SZ" };
    Ok(Value::String(time.format(format).to_string()))
}

/// `resource.Quantity`: string = 1. An empty quantity prints as `"0"`, like Go's zero Quantity.
fn decode_quantity(buf: &[u8]) -> Result<Value, String> {
    let mut value = None;
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.key()? {
        match num {
            1 => value = Some(utf8(r.length_delimited_as(wire, "quantity string")?)),
            _ => r.skip(wire)?,
        }
    }
    Ok(Value::String(value.filter(|v| !v.is_empty()).unwrap_or_else(|| "0".to_string())))
}

/// `runtime.RawExtension` / `meta/v1.FieldsV1`: raw = 1 holds JSON. Empty means `null`.
fn decode_raw_json(buf: &[u8]) -> Result<Value, String> {
    let mut raw: &[u8] = &[];
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.key()? {
        match num {
            1 => raw = r.length_delimited_as(wire, "raw")?,
            _ => r.skip(wire)?,
        }
    }
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(raw).map_err(|e| format!("raw field does not hold valid JSON: {e}"))
}

/// `intstr.IntOrString`: type = 1 (0 int, 1 string), intVal = 2, strVal = 3.
fn decode_int_or_string(buf: &[u8]) -> Result<Value, String> {
    let (mut is_string, mut int_val, mut str_val) = (false, 0i32, String::new());
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.key()? {
        match num {
            1 => is_string = r.varint_as(wire, "type")? == 1,
            2 => int_val = r.varint_as(wire, "intVal")? as i32,
            3 => str_val = utf8(r.length_delimited_as(wire, "strVal")?),
            _ => r.skip(wire)?,
        }
    }
    Ok(if is_string { Value::String(str_val) } else { Value::from(int_val) })
}

/// Whether `omitempty` can drop a field of this kind (Go never omits structs, and zero times print as `null`).
fn is_scalar_or_collection(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::String
            | Kind::Bytes
            | Kind::Int32
            | Kind::Int64
            | Kind::Bool
            | Kind::Map
            | Kind::MapBytes
            | Kind::MapQuantity
            | Kind::RepeatedString
            | Kind::RepeatedMessage(_)
    )
}

/// Go's `omitempty` test: `""`, `0`, `false`, and empty maps and lists.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Null => false,
    }
}

/// Protobuf strings are not validated on decode in Go; invalid UTF-8 becomes U+FFFD when printed as JSON.
fn utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Standard base64 with padding (RFC 4648 §4), as Go's `encoding/json` prints `[]byte`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
