//! The go-msgpack 0.5 dialect of memberlist and Serf gossip (reference section 1).
//!
//! [`Encoder`] writes exactly what the gossip handle (`WriteExt=false`) emits: smallest integer
//! forms, str-family headers for strings *and* byte slices (never `str8`, never `bin`), maps
//! and arrays with the smallest headers, floats as `0xcb`. Callers emit struct keys in the
//! byte-wise sorted order Go uses.
//!
//! Decoding reads one [`rmpv::Value`] with [`read_value`] and looks at it through [`Fields`]
//! (a struct encoded as a map, or positionally as an array) and [`Val`] (one field), whose
//! typed getters accept what Go accepts (reference 1.4): any integer form with range checks,
//! bools from `true`/`false` or 0/1, strings only from str, byte slices from str, bin or an
//! array of small ints, floats from any float or integer, and nil or a missing key as the zero
//! value. Nothing here panics on input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rmpv::Value;

use super::error::DecodeError;

/// How deeply containers may nest before a value is refused; gossip messages use at most
/// four levels.
pub const MAX_DEPTH: usize = 64;

/// Writes go-msgpack gossip-dialect bytes. Every method appends and returns `self` for chaining.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty buffer.
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// A buffer that starts with one byte, typically a message type.
    pub fn with_type(byte: u8) -> Encoder {
        Encoder { buf: vec![byte] }
    }

    /// One byte, verbatim (a type prefix, not a msgpack value).
    pub fn byte(&mut self, byte: u8) -> &mut Self {
        self.buf.push(byte);
        self
    }

    /// Bytes copied verbatim (already encoded, or opaque trailing data).
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// A map header for `n` entries (keys and values follow).
    pub fn map(&mut self, n: usize) -> &mut Self {
        self.collection(n, 0x80, 0xde, 0xdf)
    }

    /// An array header for `n` elements.
    pub fn array(&mut self, n: usize) -> &mut Self {
        self.collection(n, 0x90, 0xdc, 0xdd)
    }

    fn collection(&mut self, n: usize, fix: u8, m16: u8, m32: u8) -> &mut Self {
        if n < 16 {
            // n < 16, so the cast is exact.
            self.buf.push(fix | n as u8);
        } else if let Ok(n) = u16::try_from(n) {
            self.buf.push(m16);
            self.buf.extend_from_slice(&n.to_be_bytes());
        } else {
            let n = u32::try_from(n).expect("msgpack collection with more than 2^32 entries");
            self.buf.push(m32);
            self.buf.extend_from_slice(&n.to_be_bytes());
        }
        self
    }

    /// A string: fixstr, `0xda` or `0xdb` (no `str8` in this dialect).
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.raw(s.as_bytes())
    }

    /// A byte slice, written like a string (the "raw" family; never `bin`).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        let len = bytes.len();
        if len < 32 {
            // len < 32, so the cast is exact.
            self.buf.push(0xa0 | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            self.buf.push(0xda);
            self.buf.extend_from_slice(&len.to_be_bytes());
        } else {
            let len = u32::try_from(len).expect("msgpack string longer than 4 GiB");
            self.buf.push(0xdb);
            self.buf.extend_from_slice(&len.to_be_bytes());
        }
        self.buf.extend_from_slice(bytes);
        self
    }

    /// A byte slice that Go may hold as nil: `None` is `0xc0`.
    pub fn opt_raw(&mut self, bytes: Option<&[u8]>) -> &mut Self {
        match bytes {
            Some(bytes) => self.raw(bytes),
            None => self.nil(),
        }
    }

    /// An IP address as raw bytes: 4 for IPv4, 16 for IPv6.
    pub fn ip(&mut self, ip: &IpAddr) -> &mut Self {
        match ip {
            IpAddr::V4(v4) => self.raw(&v4.octets()),
            IpAddr::V6(v6) => self.raw(&v6.octets()),
        }
    }

    /// A non-negative integer in its smallest unsigned form.
    pub fn uint(&mut self, value: u64) -> &mut Self {
        if value < 0x80 {
            self.buf.push(value as u8);
        } else if let Ok(v) = u8::try_from(value) {
            self.buf.extend_from_slice(&[0xcc, v]);
        } else if let Ok(v) = u16::try_from(value) {
            self.buf.push(0xcd);
            self.buf.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = u32::try_from(value) {
            self.buf.push(0xce);
            self.buf.extend_from_slice(&v.to_be_bytes());
        } else {
            self.buf.push(0xcf);
            self.buf.extend_from_slice(&value.to_be_bytes());
        }
        self
    }

    /// A signed integer: unsigned forms when non-negative, the smallest negative form otherwise.
    pub fn int(&mut self, value: i64) -> &mut Self {
        if let Ok(unsigned) = u64::try_from(value) {
            return self.uint(unsigned);
        }
        if value >= -32 {
            self.buf.push(value as u8); // negative fixint: the low byte of the two's complement
        } else if let Ok(v) = i8::try_from(value) {
            self.buf.push(0xd0);
            self.buf.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = i16::try_from(value) {
            self.buf.push(0xd1);
            self.buf.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = i32::try_from(value) {
            self.buf.push(0xd2);
            self.buf.extend_from_slice(&v.to_be_bytes());
        } else {
            self.buf.push(0xd3);
            self.buf.extend_from_slice(&value.to_be_bytes());
        }
        self
    }

    /// `0xc3` / `0xc2`.
    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.buf.push(if value { 0xc3 } else { 0xc2 });
        self
    }

    /// `0xc0`.
    pub fn nil(&mut self) -> &mut Self {
        self.buf.push(0xc0);
        self
    }

    /// `0xcb` + 8 bytes big-endian.
    pub fn f64(&mut self, value: f64) -> &mut Self {
        self.buf.push(0xcb);
        self.buf.extend_from_slice(&value.to_bits().to_be_bytes());
        self
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The encoded bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

/// A decode error for `what` with `reason`.
pub fn body_error(what: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Body {
        what,
        reason: reason.into(),
    }
}

/// Reads one value from the front of `input` and advances `input` past it; trailing bytes are
/// left for the caller (Go's stream decoder reads the same way). The never-used marker `0xc1`
/// is refused anywhere in the value, as Go refuses it.
pub fn read_value(input: &mut &[u8], what: &'static str) -> Result<Value, DecodeError> {
    let len = value_len(input).map_err(|reason| body_error(what, reason))?;
    let (mut bytes, rest) = input.split_at(len);
    // `value_len` already bounded the depth; rmpv counts strings as two levels.
    let value = rmpv::decode::read_value_with_max_depth(&mut bytes, 4 * MAX_DEPTH + 8)
        .map_err(|error| body_error(what, error.to_string()))?;
    *input = rest;
    Ok(value)
}

/// The length of the first msgpack value in `bytes`, checked without allocating: complete,
/// nested at most [`MAX_DEPTH`] containers deep, free of `0xc1`.
fn value_len(bytes: &[u8]) -> Result<usize, String> {
    match serf_msgpack::value_len(bytes, MAX_DEPTH) {
        Ok(serf_msgpack::Progress::Complete(len)) => Ok(len),
        Ok(serf_msgpack::Progress::Incomplete { checked }) => {
            Err(format!("value cut short at byte {checked}"))
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Reads a map header from the front of `input` (`None` for nil), for callers that decode the
/// entries one at a time and keep what decoded before an error.
pub fn read_map_len(input: &mut &[u8], what: &'static str) -> Result<Option<usize>, DecodeError> {
    let short = || body_error(what, "map header cut short");
    let (&marker, rest) = input.split_first().ok_or_else(short)?;
    let (len, rest) = match marker {
        0x80..=0x8f => (usize::from(marker & 0x0f), rest),
        0xde => {
            let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(short)?;
            (usize::from(u16::from_be_bytes(*len)), rest)
        }
        0xdf => {
            let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
            let len = usize::try_from(u32::from_be_bytes(*len))
                .map_err(|_| body_error(what, "map too large"))?;
            (len, rest)
        }
        0xc0 => {
            *input = rest;
            return Ok(None);
        }
        other => {
            return Err(body_error(
                what,
                format!("expected a map, found marker {other:#04x}"),
            ));
        }
    };
    *input = rest;
    Ok(Some(len))
}

/// Decodes 4 bytes as IPv4 and 16 as IPv6, turning IPv4-mapped IPv6 into IPv4.
pub fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "bool",
        Value::Integer(_) => "int",
        Value::F32(_) | Value::F64(_) => "float",
        Value::String(_) => "str",
        Value::Binary(_) => "bin",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Ext(..) => "ext",
    }
}

/// One field of a decoded struct (or one element of a decoded array): a value that may be
/// missing, with typed getters. Missing and nil both give the zero value.
#[derive(Debug, Clone, Copy)]
pub struct Val<'a> {
    value: Option<&'a Value>,
    what: &'static str,
    field: &'static str,
}

impl<'a> Val<'a> {
    /// Wraps a whole value (`field` names it in errors).
    pub fn new(value: &'a Value, what: &'static str, field: &'static str) -> Val<'a> {
        Val {
            value: Some(value),
            what,
            field,
        }
    }

    fn present(&self) -> Option<&'a Value> {
        self.value.filter(|v| !v.is_nil())
    }

    /// Whether the value is missing or nil.
    pub fn is_nil(&self) -> bool {
        self.present().is_none()
    }

    /// The raw value, if present and not nil.
    pub fn value(&self) -> Option<&'a Value> {
        self.present()
    }

    fn error(&self, reason: impl std::fmt::Display) -> DecodeError {
        body_error(self.what, format!("{}: {reason}", self.field))
    }

    fn expected(&self, expected: &str, found: &Value) -> DecodeError {
        self.error(format!("expected {expected}, found {}", kind(found)))
    }

    /// An unsigned integer field (`uint8` … `uint64`); negative or too large is an error.
    pub fn uint<T: TryFrom<u64>>(&self) -> Result<T, DecodeError> {
        let value = match self.present() {
            None => 0,
            Some(Value::Integer(i)) => i
                .as_u64()
                .ok_or_else(|| self.error(format!("negative value {i} for an unsigned field")))?,
            Some(other) => return Err(self.expected("an integer", other)),
        };
        T::try_from(value).map_err(|_| self.error(format!("value {value} out of range")))
    }

    /// A signed integer field (`int`, `int64`, `time.Duration`); out of range is an error.
    pub fn int<T: TryFrom<i64>>(&self) -> Result<T, DecodeError> {
        let value = match self.present() {
            None => 0,
            Some(Value::Integer(i)) => i
                .as_i64()
                .ok_or_else(|| self.error(format!("value {i} out of range")))?,
            Some(other) => return Err(self.expected("an integer", other)),
        };
        T::try_from(value).map_err(|_| self.error(format!("value {value} out of range")))
    }

    /// A bool: `true`/`false`, or the integers 0 and 1.
    pub fn bool(&self) -> Result<bool, DecodeError> {
        match self.present() {
            None => Ok(false),
            Some(Value::Boolean(b)) => Ok(*b),
            Some(Value::Integer(i)) => match i.as_u64() {
                Some(0) => Ok(false),
                Some(1) => Ok(true),
                _ => Err(self.error(format!("integer {i} is not a bool"))),
            },
            Some(other) => Err(self.expected("a bool", other)),
        }
    }

    /// A string: str types only (`bin` is refused, as Go does). Bytes that are not UTF-8 are
    /// replaced by U+FFFD.
    pub fn string(&self) -> Result<String, DecodeError> {
        match self.present() {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(match s.as_str() {
                Some(s) => s.to_owned(),
                None => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            }),
            Some(other) => Err(self.expected("a string", other)),
        }
    }

    /// A byte slice: str, bin, or an array of integers 0..=255; nil or missing is empty.
    pub fn bytes(&self) -> Result<Vec<u8>, DecodeError> {
        Ok(self.opt_bytes()?.unwrap_or_default())
    }

    /// A byte slice Go may hold as nil: nil or missing is `None`.
    pub fn opt_bytes(&self) -> Result<Option<Vec<u8>>, DecodeError> {
        match self.present() {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_bytes().to_vec())),
            Some(Value::Binary(b)) => Ok(Some(b.clone())),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| Val::new(item, self.what, self.field).uint::<u8>())
                .collect::<Result<Vec<u8>, _>>()
                .map(Some),
            Some(other) => Err(self.expected("bytes", other)),
        }
    }

    /// A float: float32, float64 or any integer.
    pub fn f64(&self) -> Result<f64, DecodeError> {
        match self.present() {
            None => Ok(0.0),
            Some(Value::F64(f)) => Ok(*f),
            Some(Value::F32(f)) => Ok(f64::from(*f)),
            Some(Value::Integer(i)) => i.as_f64().ok_or_else(|| self.error("bad integer")),
            Some(other) => Err(self.expected("a float", other)),
        }
    }

    /// An IP address held as raw bytes (4 or 16; IPv4-mapped becomes IPv4); nil or empty is
    /// `None`, any other length an error.
    pub fn opt_ip(&self) -> Result<Option<IpAddr>, DecodeError> {
        let bytes = self.bytes()?;
        if bytes.is_empty() {
            return Ok(None);
        }
        ip_from_bytes(&bytes)
            .map(Some)
            .ok_or_else(|| self.error(format!("{} bytes is not an IP address", bytes.len())))
    }

    /// A required IP address (see [`Val::opt_ip`]).
    pub fn ip(&self) -> Result<IpAddr, DecodeError> {
        self.opt_ip()?
            .ok_or_else(|| self.error("missing IP address"))
    }

    /// A slice or array: its elements; nil or missing is empty.
    pub fn array(&self) -> Result<Vec<Val<'a>>, DecodeError> {
        Ok(self.opt_array()?.unwrap_or_default())
    }

    /// A slice Go may hold as nil: nil or missing is `None`.
    pub fn opt_array(&self) -> Result<Option<Vec<Val<'a>>>, DecodeError> {
        match self.present() {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(
                items
                    .iter()
                    .map(|item| Val::new(item, self.what, self.field))
                    .collect(),
            )),
            Some(other) => Err(self.expected("an array", other)),
        }
    }

    /// A `[]string`.
    pub fn strings(&self) -> Result<Vec<String>, DecodeError> {
        self.array()?.iter().map(Val::string).collect()
    }

    /// A map: its entries in wire order; nil or missing is empty.
    pub fn map(&self) -> Result<Vec<(Val<'a>, Val<'a>)>, DecodeError> {
        match self.present() {
            None => Ok(Vec::new()),
            Some(Value::Map(entries)) => Ok(entries
                .iter()
                .map(|(k, v)| {
                    (
                        Val::new(k, self.what, self.field),
                        Val::new(v, self.what, self.field),
                    )
                })
                .collect()),
            Some(other) => Err(self.expected("a map", other)),
        }
    }

    /// A nested struct (nil or missing is the zero struct); `fields` lists its Go field names
    /// in declaration order, for the array encoding.
    pub fn fields(&self, fields: &'static [&'static str]) -> Result<Fields<'a>, DecodeError> {
        match self.present() {
            None => Ok(Fields::empty(self.what)),
            Some(value) => Fields::new(value, self.what, fields),
        }
    }

    /// A pointer to a struct: nil or missing is `None`.
    pub fn opt_fields(
        &self,
        fields: &'static [&'static str],
    ) -> Result<Option<Fields<'a>>, DecodeError> {
        match self.present() {
            None => Ok(None),
            Some(value) => Fields::new(value, self.what, fields).map(Some),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Layout<'a> {
    Empty,
    Map(&'a [(Value, Value)]),
    Array(&'a [Value], &'static [&'static str]),
}

/// A decoded Go struct: a map keyed by field name (any order; unknown keys ignored; the last
/// of duplicate keys wins) or an array holding the fields in declaration order.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    what: &'static str,
    layout: Layout<'a>,
}

impl<'a> Fields<'a> {
    /// Views `value` as the struct `what` whose Go fields, in declaration order, are `fields`.
    /// Map keys must all be strings; nil is the zero struct; anything else is an error.
    pub fn new(
        value: &'a Value,
        what: &'static str,
        fields: &'static [&'static str],
    ) -> Result<Fields<'a>, DecodeError> {
        let layout = match value {
            Value::Nil => Layout::Empty,
            Value::Map(entries) => {
                if let Some((key, _)) = entries.iter().find(|(k, _)| !k.is_str()) {
                    return Err(body_error(
                        what,
                        format!("struct key must be a string, found {}", kind(key)),
                    ));
                }
                Layout::Map(entries)
            }
            Value::Array(items) => Layout::Array(items, fields),
            other => {
                return Err(body_error(
                    what,
                    format!("expected a map, found {}", kind(other)),
                ));
            }
        };
        Ok(Fields { what, layout })
    }

    /// A struct with every field at its zero value.
    pub fn empty(what: &'static str) -> Fields<'a> {
        Fields {
            what,
            layout: Layout::Empty,
        }
    }

    /// Reads one value from `input` (advancing it) and views it as a struct.
    pub fn read(
        input: &mut &[u8],
        what: &'static str,
        fields: &'static [&'static str],
        value: &'a mut Option<Value>,
    ) -> Result<Fields<'a>, DecodeError> {
        let value = value.insert(read_value(input, what)?);
        Fields::new(value, what, fields)
    }

    /// The field named `name` (missing if absent).
    pub fn get(&self, name: &'static str) -> Val<'a> {
        let value = match self.layout {
            Layout::Empty => None,
            Layout::Map(entries) => entries
                .iter()
                .rev()
                .find(|(key, _)| matches!(key, Value::String(s) if s.as_bytes() == name.as_bytes()))
                .map(|(_, value)| value),
            Layout::Array(items, fields) => fields
                .iter()
                .position(|field| *field == name)
                .and_then(|index| items.get(index)),
        };
        Val {
            value,
            what: self.what,
            field: name,
        }
    }

    /// Shorthand for `get(name).uint()`.
    pub fn uint<T: TryFrom<u64>>(&self, name: &'static str) -> Result<T, DecodeError> {
        self.get(name).uint()
    }

    /// Shorthand for `get(name).int()`.
    pub fn int<T: TryFrom<i64>>(&self, name: &'static str) -> Result<T, DecodeError> {
        self.get(name).int()
    }

    /// Shorthand for `get(name).bool()`.
    pub fn bool(&self, name: &'static str) -> Result<bool, DecodeError> {
        self.get(name).bool()
    }

    /// Shorthand for `get(name).string()`.
    pub fn string(&self, name: &'static str) -> Result<String, DecodeError> {
        self.get(name).string()
    }

    /// Shorthand for `get(name).bytes()`.
    pub fn bytes(&self, name: &'static str) -> Result<Vec<u8>, DecodeError> {
        self.get(name).bytes()
    }

    /// Shorthand for `get(name).opt_bytes()`.
    pub fn opt_bytes(&self, name: &'static str) -> Result<Option<Vec<u8>>, DecodeError> {
        self.get(name).opt_bytes()
    }

    /// Shorthand for `get(name).f64()`.
    pub fn f64(&self, name: &'static str) -> Result<f64, DecodeError> {
        self.get(name).f64()
    }
}

/// Reads the one msgpack struct that makes up a message body, as `fields` of `what`, and
/// hands it to `read`; trailing bytes are ignored.
pub fn decode_struct<T>(
    mut body: &[u8],
    what: &'static str,
    fields: &'static [&'static str],
    read: impl FnOnce(&Fields<'_>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut slot = None;
    let fields = Fields::read(&mut body, what, fields, &mut slot)?;
    read(&fields)
}

/// Hex as test vectors print it (whitespace ignored), for tests here and in the crates above.
#[cfg(any(test, feature = "sim"))]
pub fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl FnOnce(&mut Encoder) -> &mut Encoder) -> Vec<u8> {
        let mut encoder = Encoder::new();
        f(&mut encoder);
        encoder.into_inner()
    }

    fn value(bytes: &[u8]) -> Value {
        read_value(&mut &bytes[..], "test").expect("valid msgpack")
    }

    #[test]
    fn unsigned_integers_use_the_smallest_form() {
        assert_eq!(encoded(|e| e.uint(0)), [0x00]);
        assert_eq!(encoded(|e| e.uint(127)), [0x7f]);
        assert_eq!(encoded(|e| e.uint(128)), [0xcc, 0x80]);
        assert_eq!(encoded(|e| e.uint(255)), [0xcc, 0xff]);
        assert_eq!(encoded(|e| e.uint(256)), [0xcd, 0x01, 0x00]);
        assert_eq!(encoded(|e| e.uint(7946)), [0xcd, 0x1f, 0x0a]);
        assert_eq!(encoded(|e| e.uint(65536)), [0xce, 0, 1, 0, 0]);
        assert_eq!(
            encoded(|e| e.uint(2_000_000_000)),
            [0xce, 0x77, 0x35, 0x94, 0x00]
        );
        assert_eq!(encoded(|e| e.uint(1 << 32)), [0xcf, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn signed_integers_use_unsigned_forms_when_not_negative() {
        assert_eq!(encoded(|e| e.int(5)), [0x05]);
        assert_eq!(encoded(|e| e.int(200)), [0xcc, 200]);
        assert_eq!(encoded(|e| e.int(-1)), [0xff]);
        assert_eq!(encoded(|e| e.int(-32)), [0xe0]);
        assert_eq!(encoded(|e| e.int(-33)), [0xd0, 0xdf]);
        assert_eq!(encoded(|e| e.int(-129)), [0xd1, 0xff, 0x7f]);
        assert_eq!(encoded(|e| e.int(-40_000)), [0xd2, 0xff, 0xff, 0x63, 0xc0]);
        assert_eq!(
            encoded(|e| e.int(i64::MIN)),
            [0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]
        );
        for n in [-1_i64, -32, -33, -128, -129, -40_000, i64::MIN] {
            let bytes = encoded(|e| e.int(n));
            assert_eq!(Val::new(&value(&bytes), "t", "f").int::<i64>(), Ok(n));
        }
    }

    #[test]
    fn byte_slices_use_str_headers_and_never_str8() {
        assert_eq!(encoded(|e| e.raw(&[])), [0xa0]);
        assert_eq!(encoded(|e| e.raw(&[127, 0, 0, 10])), [0xa4, 127, 0, 0, 10]);
        let b31 = encoded(|e| e.raw(&[1; 31]));
        assert_eq!(b31[0], 0xbf);
        let b32 = encoded(|e| e.raw(&[1; 32]));
        assert_eq!(&b32[..3], &[0xda, 0x00, 0x20]);
        let b200 = encoded(|e| e.str(&"x".repeat(200)));
        assert_eq!(&b200[..3], &[0xda, 0x00, 200]);
        let big = encoded(|e| e.raw(&vec![0; 70_000]));
        assert_eq!(&big[..5], &[0xdb, 0x00, 0x01, 0x11, 0x70]);
        assert_eq!(big.len(), 70_005);
    }

    #[test]
    fn collections_nil_bool_and_floats() {
        assert_eq!(encoded(|e| e.map(0)), [0x80]);
        assert_eq!(encoded(|e| e.map(15)), [0x8f]);
        assert_eq!(encoded(|e| e.map(16)), [0xde, 0, 16]);
        assert_eq!(encoded(|e| e.array(3)), [0x93]);
        assert_eq!(encoded(|e| e.array(512)), [0xdc, 0x02, 0x00]);
        assert_eq!(encoded(|e| e.array(70_000)), [0xdd, 0, 1, 0x11, 0x70]);
        assert_eq!(
            encoded(|e| e.nil().bool(true).bool(false)),
            [0xc0, 0xc3, 0xc2]
        );
        assert_eq!(
            encoded(|e| e.f64(1.5)),
            [0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            encoded(|e| e.opt_raw(None).opt_raw(Some(b"a"))),
            [0xc0, 0xa1, b'a']
        );
    }

    #[test]
    fn fields_look_up_keys_and_ignore_unknown_ones() {
        let bytes = encoded(|e| {
            e.map(4)
                .str("Zed")
                .uint(9)
                .str("Name")
                .str("a")
                .str("Other")
                .array(2)
                .uint(1)
                .nil()
                .str("Name")
                .str("b")
        });
        let value = value(&bytes);
        let fields = Fields::new(&value, "t", &["Name", "Zed"]).unwrap();
        assert_eq!(
            fields.string("Name").unwrap(),
            "b",
            "the last duplicate wins"
        );
        assert_eq!(fields.uint::<u8>("Zed").unwrap(), 9);
        assert_eq!(fields.uint::<u32>("Missing").unwrap(), 0);
        assert_eq!(fields.string("Missing").unwrap(), "");
        assert!(fields.get("Missing").is_nil());
    }

    #[test]
    fn nil_yields_zero_values() {
        let value = value(&[0x81, 0xa1, b'X', 0xc0]);
        let fields = Fields::new(&value, "t", &[]).unwrap();
        assert_eq!(fields.uint::<u64>("X").unwrap(), 0);
        assert_eq!(fields.int::<i64>("X").unwrap(), 0);
        assert!(!fields.bool("X").unwrap());
        assert_eq!(fields.string("X").unwrap(), "");
        assert_eq!(fields.bytes("X").unwrap(), Vec::<u8>::new());
        assert_eq!(fields.opt_bytes("X").unwrap(), None);
        assert_eq!(fields.f64("X").unwrap(), 0.0);
        assert!(fields.get("X").array().unwrap().is_empty());
        assert!(fields.get("X").opt_array().unwrap().is_none());
        assert!(fields.get("X").map().unwrap().is_empty());
        assert!(fields.get("X").opt_fields(&[]).unwrap().is_none());
        assert_eq!(fields.get("X").opt_ip().unwrap(), None);
        assert!(fields.get("X").ip().is_err());
    }

    #[test]
    fn integers_are_range_checked() {
        let v300 = value(&[0xcd, 0x01, 0x2c]);
        assert_eq!(Val::new(&v300, "t", "f").uint::<u16>(), Ok(300));
        assert!(Val::new(&v300, "t", "f").uint::<u8>().is_err());
        let negative = value(&[0xff]);
        assert!(Val::new(&negative, "t", "f").uint::<u64>().is_err());
        assert_eq!(Val::new(&negative, "t", "f").int::<i64>(), Ok(-1));
        let huge = value(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Val::new(&huge, "t", "f").uint::<u64>(), Ok(u64::MAX));
        assert!(Val::new(&huge, "t", "f").int::<i64>().is_err());
        // Any form is accepted: a small value written as u64 or i16.
        let wide = value(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(Val::new(&wide, "t", "f").uint::<u8>(), Ok(7));
        let signed = value(&[0xd1, 0x00, 0x07]);
        assert_eq!(Val::new(&signed, "t", "f").uint::<u32>(), Ok(7));
        let float = value(&[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
        assert!(Val::new(&float, "t", "f").uint::<u32>().is_err());
        let string = value(&[0xa1, b'1']);
        assert!(Val::new(&string, "t", "f").int::<i64>().is_err());
    }

    #[test]
    fn bools_accept_zero_and_one() {
        assert_eq!(Val::new(&value(&[0x00]), "t", "f").bool(), Ok(false));
        assert_eq!(Val::new(&value(&[0x01]), "t", "f").bool(), Ok(true));
        assert_eq!(Val::new(&value(&[0xc3]), "t", "f").bool(), Ok(true));
        assert!(Val::new(&value(&[0x02]), "t", "f").bool().is_err());
        assert!(Val::new(&value(&[0xa0]), "t", "f").bool().is_err());
    }

    #[test]
    fn strings_refuse_bin_but_bytes_accept_str_bin_and_arrays() {
        let bin = value(&[0xc4, 0x02, b'h', b'i']);
        assert!(Val::new(&bin, "t", "f").string().is_err());
        assert_eq!(Val::new(&bin, "t", "f").bytes(), Ok(b"hi".to_vec()));
        let str8 = value(&[0xd9, 0x02, b'h', b'i']);
        assert_eq!(Val::new(&str8, "t", "f").string(), Ok("hi".to_owned()));
        assert_eq!(Val::new(&str8, "t", "f").bytes(), Ok(b"hi".to_vec()));
        let array = value(&[0x93, 0x01, 0xcc, 0xff, 0x00]);
        assert_eq!(Val::new(&array, "t", "f").bytes(), Ok(vec![1, 255, 0]));
        let too_big = value(&[0x91, 0xcd, 0x01, 0x00]);
        assert!(Val::new(&too_big, "t", "f").bytes().is_err());
        let not_utf8 = value(&[0xa2, 0xff, b'a']);
        assert_eq!(
            Val::new(&not_utf8, "t", "f").string(),
            Ok("\u{fffd}a".to_owned())
        );
        assert_eq!(Val::new(&not_utf8, "t", "f").bytes(), Ok(vec![0xff, b'a']));
    }

    #[test]
    fn floats_accept_float32_and_integers() {
        assert_eq!(
            Val::new(&value(&[0xca, 0x3f, 0xc0, 0, 0]), "t", "f").f64(),
            Ok(1.5)
        );
        assert_eq!(Val::new(&value(&[0x03]), "t", "f").f64(), Ok(3.0));
        assert_eq!(Val::new(&value(&[0xfe]), "t", "f").f64(), Ok(-2.0));
        assert!(Val::new(&value(&[0xc2]), "t", "f").f64().is_err());
    }

    #[test]
    fn ips_take_four_or_sixteen_bytes() {
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 9];
        assert_eq!(
            ip_from_bytes(&mapped),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)))
        );
        assert_eq!(
            ip_from_bytes(&[10, 0, 0, 1]),
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(
            ip_from_bytes(&Ipv6Addr::LOCALHOST.octets()),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
        assert_eq!(ip_from_bytes(&[]), None);
    }

    #[test]
    fn struct_keys_must_be_strings() {
        let bin_key = value(&[0x81, 0xc4, 0x01, b'A', 0x01]);
        assert!(Fields::new(&bin_key, "t", &["A"]).is_err());
        let int_key = value(&[0x81, 0x01, 0x01]);
        assert!(Fields::new(&int_key, "t", &["A"]).is_err());
        assert!(Fields::new(&value(&[0x05]), "t", &["A"]).is_err());
    }

    #[test]
    fn array_encoded_structs_are_positional_in_declaration_order() {
        let value = value(&[0x93, 0x07, 0xa1, b'n', 0xc3]);
        let fields = Fields::new(&value, "t", &["SeqNo", "Node"]).unwrap();
        assert_eq!(fields.uint::<u32>("SeqNo").unwrap(), 7);
        assert_eq!(fields.string("Node").unwrap(), "n");
        assert_eq!(fields.uint::<u32>("Unknown").unwrap(), 0);
        let short = super::tests::value(&[0x91, 0x07]);
        let fields = Fields::new(&short, "t", &["SeqNo", "Node"]).unwrap();
        assert_eq!(
            fields.string("Node").unwrap(),
            "",
            "missing trailing fields are zero"
        );
    }

    #[test]
    fn read_value_advances_past_one_value_and_refuses_garbage() {
        let bytes = [0x01, 0x02];
        let mut input = &bytes[..];
        assert_eq!(read_value(&mut input, "t").unwrap(), Value::from(1));
        assert_eq!(input, &[0x02]);
        assert!(read_value(&mut &[0xc1][..], "t").is_err());
        assert!(read_value(&mut &[0x92, 0x01, 0xc1][..], "t").is_err());
        assert!(read_value(&mut &[0x81, 0xa1, b'a', 0xc1][..], "t").is_err());
        assert!(read_value(&mut &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01][..], "t").is_err());
        assert!(read_value(&mut &[0xdb, 0xff, 0xff, 0xff, 0xff, 0x01][..], "t").is_err());
        let mut nested = vec![0x91; MAX_DEPTH];
        nested.push(0x01);
        assert!(read_value(&mut &nested[..], "t").is_ok());
        let mut too_deep = vec![0x91; MAX_DEPTH + 1];
        too_deep.push(0x01);
        assert!(read_value(&mut &too_deep[..], "t").is_err());
        // Every form is measured exactly: what follows is left in the input.
        let forms: &[&[u8]] = &[
            &[0xc4, 0x01, 0xaa],
            &[0xc7, 0x01, 0x05, 0xaa],
            &[0xd4, 0x05, 0xaa],
            &[0xd8, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xca, 0, 0, 0, 0],
            &[0xd3, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xde, 0x00, 0x01, 0xa1, b'k', 0x90],
            &[0xdc, 0x00, 0x02, 0xc0, 0xc3],
        ];
        for form in forms {
            let mut bytes = form.to_vec();
            bytes.push(0x07);
            let mut input = &bytes[..];
            assert!(read_value(&mut input, "t").is_ok(), "{form:02x?}");
            assert_eq!(input, &[0x07], "{form:02x?}");
        }
        assert!(read_value(&mut &[0xda, 0x00][..], "t").is_err());
        assert!(read_value(&mut &[][..], "t").is_err());
        let deep = [0x91; 200];
        assert!(read_value(&mut &deep[..], "t").is_err());
    }

    #[test]
    fn map_headers_are_read_alone() {
        let bytes = [0x82, 0xde, 0x01, 0x00, 0xc0, 0xdf, 0, 1, 0, 0, 0x90];
        let mut input = &bytes[..];
        assert_eq!(read_map_len(&mut input, "t"), Ok(Some(2)));
        assert_eq!(read_map_len(&mut input, "t"), Ok(Some(256)));
        assert_eq!(read_map_len(&mut input, "t"), Ok(None));
        assert_eq!(read_map_len(&mut input, "t"), Ok(Some(65536)));
        assert!(read_map_len(&mut input, "t").is_err());
        assert!(read_map_len(&mut &[0xde, 0x01][..], "t").is_err());
    }
}
