//! A fast path for the common body shape, `{"records":[…]}`: one validating
//! pass over the bytes that splits the records, checks the nesting limit,
//! and picks out the few top-level members the pipeline counts for records
//! the prefilter rejects, instead of serde_json's envelope parse, the
//! separate depth scan and a second parse per record.
//!
//! It is only ever a shortcut: [`scan_envelope`] returns `None` for
//! anything it does not fully vouch for, and the caller then takes the
//! serde path ([`crate::decode::decode_envelope`]), which produces every
//! error. When it returns `Some`, serde_json would have accepted the body
//! and split it into exactly these record texts, because the grammar
//! accepted here is JSON's (RFC 8259; the same whitespace, escapes,
//! number and literal rules serde_json checks while skipping a value) and
//! the nesting limit is checked as `check_depth` checks it.
//!
//! Per record it also reports whether serde_json's full parse of that
//! record (`serde_json::Value`, what `decode_record` does) could still
//! fail or differ: a `\u` escape (lone surrogates are only rejected by the
//! full parse), a number that might not fit an `f64` (an exponent, or more
//! than 300 digits), a member name with escapes. Such records take the
//! full path. Pure: no I/O.

use std::borrow::Cow;

use crate::normalize::summary::{Props, Scalar, Top};
use crate::normalize::{summarize_top, RecordSummary};

/// One record of a scanned body.
#[derive(Debug)]
pub struct ScannedRecord<'a> {
    /// The record's JSON text, exactly as serde_json's `RawValue` gives it.
    pub text: &'a str,
    /// Decode this record fully (`decode_record`); there is no summary.
    pub needs_full: bool,
    /// The members `summarize_record` reads, when the record is a plain
    /// object (no escaped member names, nothing the full parse could
    /// reject).
    top: Option<Top<'a>>,
}

impl ScannedRecord<'_> {
    /// What `summarize_record` returns for this record, read from the
    /// scan; `None` when the record must be decoded fully.
    pub fn summary(&self) -> Option<RecordSummary> {
        self.top.as_ref().map(|top| summarize_top(top, self.text))
    }
}

/// What a member value was, for the summary.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A string; (content start, content end, has escapes).
    Str(usize, usize, bool),
    /// A number or `true`/`false`.
    Other,
    /// `null`, an array or an object.
    Composite,
}

/// Per-record findings while scanning.
#[derive(Default)]
struct Flags {
    unicode_escape: bool,
    risky_number: bool,
    escaped_name: bool,
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    max_depth: usize,
}

/// Splits `text` (a body already checked for size, UTF-8 and emptiness,
/// with BOM and surrounding whitespace removed, as `decode_envelope`
/// prepares it) when it is exactly `{"records":[…]}` with at most
/// `max_records` records, nesting at most `max_depth` deep.
pub fn scan_envelope(
    text: &str,
    max_depth: usize,
    max_records: usize,
) -> Option<Vec<ScannedRecord<'_>>> {
    // serde_json's own recursion limit is 128; stay clear of it so that
    // anything accepted here is accepted there.
    if max_depth > 120 {
        return None;
    }
    let mut s = Scanner {
        b: text.as_bytes(),
        i: 0,
        max_depth,
    };
    s.expect(b'{')?;
    s.ws();
    // The one member, named exactly `records`.
    if !s.b[s.i..].starts_with(b"\"records\"") {
        return None;
    }
    s.i += b"\"records\"".len();
    s.ws();
    s.expect(b':')?;
    s.ws();
    s.expect(b'[')?;
    if max_depth < 2 {
        return None;
    }
    let mut records = Vec::new();
    s.ws();
    if s.peek()? == b']' {
        s.i += 1;
    } else {
        loop {
            if records.len() == max_records {
                return None; // one too many: the serde path reports it
            }
            records.push(s.record(text)?);
            s.ws();
            match s.next()? {
                b',' => s.ws(),
                b']' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    s.expect(b'}')?;
    (s.i == s.b.len()).then_some(records)
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// JSON whitespace: space, tab, line feed, carriage return.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// One record (the value at depth 3). Objects are scanned for the
    /// summary's members; anything else is valid JSON that the full path
    /// reports as not an object.
    fn record(&mut self, text: &'a str) -> Option<ScannedRecord<'a>> {
        let start = self.i;
        let mut flags = Flags::default();
        if self.peek()? != b'{' {
            self.value(3, &mut flags)?;
            return Some(ScannedRecord {
                text: &text[start..self.i],
                needs_full: true,
                top: None,
            });
        }
        if self.max_depth < 3 {
            return None;
        }
        self.i += 1;
        let mut top = Top {
            entries: 0,
            named: 0,
            empty_name_noise: None,
            time: None,
            result_type: None,
            caller: None,
            properties: None,
        };
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
        } else {
            loop {
                self.expect_peek(b'"')?;
                let (ks, ke, kesc) = self.string(&mut flags)?;
                if kesc {
                    flags.escaped_name = true;
                }
                self.ws();
                self.expect(b':')?;
                self.ws();
                top.entries += 1;
                if ke > ks {
                    top.named += 1;
                }
                match &self.b[ks..ke] {
                    b"" => {
                        let v = self.scalar(text, 4, &mut flags)?;
                        top.empty_name_noise = Some(matches!(v, Scalar::Str(s) if s.is_empty()));
                    }
                    b"time" => top.time = Some(self.scalar(text, 4, &mut flags)?),
                    b"resultType" => top.result_type = Some(self.scalar(text, 4, &mut flags)?),
                    b"callerIpAddress" => top.caller = Some(self.scalar(text, 4, &mut flags)?),
                    b"properties" => top.properties = Some(self.properties(text, &mut flags)?),
                    _ => {
                        self.value(4, &mut flags)?;
                    }
                }
                self.ws();
                match self.next()? {
                    b',' => self.ws(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        let needs_full = flags.unicode_escape || flags.risky_number || flags.escaped_name;
        Some(ScannedRecord {
            text: &text[start..self.i],
            needs_full,
            top: (!needs_full).then_some(top),
        })
    }

    fn expect_peek(&self, c: u8) -> Option<()> {
        (self.peek()? == c).then_some(())
    }

    /// A member value as a summary scalar; `depth` is the nesting level a
    /// container value here would have.
    fn scalar(&mut self, text: &'a str, depth: usize, flags: &mut Flags) -> Option<Scalar<'a>> {
        Some(match self.value(depth, flags)? {
            Kind::Str(s, e, false) => Scalar::Str(Cow::Borrowed(&text[s..e])),
            Kind::Str(s, e, true) => {
                // Escapes (never `\u`: those send the record to the full
                // path): unescape with serde_json, quotes included.
                Scalar::Str(Cow::Owned(serde_json::from_str(&text[s - 1..e + 1]).ok()?))
            }
            Kind::Other => Scalar::Other,
            Kind::Composite => Scalar::Composite,
        })
    }

    /// `properties`: an object (its `result` member kept, the last one
    /// wins), a string (unescaped; the summary parses it), or other.
    fn properties(&mut self, text: &'a str, flags: &mut Flags) -> Option<Props<'a>> {
        match self.peek()? {
            b'{' => {
                if self.max_depth < 4 {
                    return None;
                }
                self.i += 1;
                let mut result = None;
                self.ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(Props::Object { result });
                }
                loop {
                    self.expect_peek(b'"')?;
                    let (ks, ke, kesc) = self.string(flags)?;
                    if kesc {
                        flags.escaped_name = true;
                    }
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    if &self.b[ks..ke] == b"result" {
                        result = Some(self.scalar(text, 5, flags)?);
                    } else {
                        self.value(5, flags)?;
                    }
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b'}' => return Some(Props::Object { result }),
                        _ => return None,
                    }
                }
            }
            b'"' => match self.value(4, flags)? {
                Kind::Str(s, e, false) => Some(Props::Str(Cow::Borrowed(&text[s..e]))),
                Kind::Str(s, e, true) => Some(Props::Str(Cow::Owned(
                    serde_json::from_str(&text[s - 1..e + 1]).ok()?,
                ))),
                _ => None,
            },
            _ => {
                self.value(4, flags)?;
                Some(Props::Other)
            }
        }
    }

    /// Any JSON value; `depth` is the nesting level a container here has.
    fn value(&mut self, depth: usize, flags: &mut Flags) -> Option<Kind> {
        match self.peek()? {
            b'"' => {
                let (s, e, esc) = self.string(flags)?;
                Some(Kind::Str(s, e, esc))
            }
            b'{' => {
                if depth > self.max_depth {
                    return None;
                }
                self.i += 1;
                self.ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(Kind::Composite);
                }
                loop {
                    self.expect_peek(b'"')?;
                    self.string(flags)?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.value(depth + 1, flags)?;
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b'}' => return Some(Kind::Composite),
                        _ => return None,
                    }
                }
            }
            b'[' => {
                if depth > self.max_depth {
                    return None;
                }
                self.i += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(Kind::Composite);
                }
                loop {
                    self.value(depth + 1, flags)?;
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b']' => return Some(Kind::Composite),
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true", Kind::Other),
            b'f' => self.literal(b"false", Kind::Other),
            b'n' => self.literal(b"null", Kind::Composite),
            b'-' | b'0'..=b'9' => {
                if self.number()? {
                    flags.risky_number = true;
                }
                Some(Kind::Other)
            }
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8], kind: Kind) -> Option<Kind> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Some(kind)
        } else {
            None
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`. Returns
    /// whether the number might not fit an `f64` (serde_json's full parse
    /// rejects those; skipping does not).
    fn number(&mut self) -> Option<bool> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            let before = self.i;
            self.digits();
            if self.i == before {
                return None;
            }
        }
        let mut risky = self.i - start > 300;
        if let Some(b'e' | b'E') = self.peek() {
            risky = true;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            let before = self.i;
            self.digits();
            if self.i == before {
                return None;
            }
        }
        Some(risky)
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    /// A string at `"`: returns (content start, content end, has
    /// escapes) and moves past the closing quote. Rejects raw control
    /// characters and invalid escapes, as serde_json does.
    fn string(&mut self, flags: &mut Flags) -> Option<(usize, usize, bool)> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i += skip_plain(&self.b[self.i..]);
            match self.next()? {
                b'"' => return Some((start, self.i - 1, escaped)),
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            flags.unicode_escape = true;
                            for _ in 0..4 {
                                if !self.next()?.is_ascii_hexdigit() {
                                    return None;
                                }
                            }
                        }
                        _ => return None,
                    }
                }
                // A raw control character.
                _ => return None,
            }
        }
    }
}

/// Length of the prefix of `b` with no `"`, `\` or control character,
/// eight bytes at a time.
fn skip_plain(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i + 8 <= b.len() {
        let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        // A byte is special if it is '"', '\\' or < 0x20; each test sets
        // the high bit of such bytes (bytes >= 0x80 never trigger: the
        // `& !w` masks them).
        let quote = (w ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
        let backslash = (w ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
        let control = w.wrapping_sub(ONES * 0x20);
        let special = (quote | backslash | control) & !w & HIGH;
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_plain_finds_the_first_special_byte() {
        let cases: &[(&[u8], usize)] = &[
            (b"", 0),
            (b"abc", 3),
            (b"abcdefgh\"", 8),
            (b"abcdefghijk\\", 11),
            (b"ab\x01cdefghij", 2),
            (
                "héllo wörld, ünïcödé\"".as_bytes(),
                "héllo wörld, ünïcödé".len(),
            ),
            (b"\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x1f", 8),
            (b"\"", 0),
        ];
        for (input, want) in cases {
            assert_eq!(
                skip_plain(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Every single special byte at every position of a 20-byte run.
        for pos in 0..20 {
            for special in [b'"', b'\\', 0u8, 0x1f] {
                let mut v = vec![b'a'; 20];
                v[pos] = special;
                assert_eq!(skip_plain(&v), pos);
            }
        }
    }

    fn split(text: &str) -> Option<Vec<&str>> {
        scan_envelope(text, 64, 10_000).map(|r| r.into_iter().map(|r| r.text).collect())
    }

    #[test]
    fn accepts_the_envelope_and_splits_like_raw_value() {
        assert_eq!(split(r#"{"records":[]}"#), Some(vec![]));
        assert_eq!(
            split("{ \"records\" :\n[ {\"a\":1} ,\t{\"b\":[true,false,null,-0.5e-3]} ] }"),
            Some(vec![r#"{"a":1}"#, r#"{"b":[true,false,null,-0.5e-3]}"#])
        );
        assert_eq!(
            split(r#"{"records":[1,"x",[]]}"#),
            Some(vec!["1", "\"x\"", "[]"])
        );
    }

    #[test]
    fn declines_anything_else() {
        for text in [
            r#"[{"a":1}]"#,
            r#"{"records":[{"a":1}],"x":1}"#,
            r#"{"x":1,"records":[]}"#,
            r#"{"rec\u006frds":[]}"#,
            r#"{"records":null}"#,
            r#"{"records":[{"a":1},]}"#,
            r#"{"records":[{"a":01}]}"#,
            r#"{"records":[{"a":1.}]}"#,
            r#"{"records":[{"a":"\x"}]}"#,
            "{\"records\":[{\"a\":\"\u{1}\"}]}",
            r#"{"records":[{"a":tru}]}"#,
            r#"{"records":[{"a" 1}]}"#,
            r#"{"records":[{"a":1}]} x"#,
            r#"{"records":[{"a":"\u12"}]}"#,
        ] {
            assert!(split(text).is_none(), "{text}");
        }
    }

    #[test]
    fn limits_send_bodies_to_the_serde_path() {
        let deep = r#"{"records":[{"a":[[1]]}]}"#; // depth 5
        assert!(scan_envelope(deep, 5, 10).is_some());
        assert!(scan_envelope(deep, 4, 10).is_none());
        assert!(scan_envelope(r#"{"records":[{},{}]}"#, 64, 1).is_none());
        assert!(scan_envelope(r#"{"records":[{},{}]}"#, 64, 2).is_some());
    }

    #[test]
    fn flags_records_the_full_parse_could_reject() {
        let r = scan_envelope(
            r#"{"records":[{"a":"\ud800"},{"b":1e400},{"c\n":1},{"d":"\n"},[1]]}"#,
            64,
            10,
        )
        .unwrap();
        let full: Vec<bool> = r.iter().map(|r| r.needs_full).collect();
        assert_eq!(full, [true, true, true, false, true]);
    }

    #[test]
    fn picks_out_the_summary_members() {
        let r = scan_envelope(
            r#"{"records":[{"time":"T","resultType":5,"callerIpAddress":null,"properties":{"x":{"result":"no"},"result":"success"},"time":"U"}]}"#,
            64,
            10,
        )
        .unwrap();
        let top = r[0].top.as_ref().unwrap();
        assert_eq!(top.entries, 5);
        assert!(matches!(&top.time, Some(Scalar::Str(t)) if t == "U"));
        assert!(matches!(top.result_type, Some(Scalar::Other)));
        assert!(matches!(top.caller, Some(Scalar::Composite)));
        assert!(matches!(
            &top.properties,
            Some(Props::Object { result: Some(Scalar::Str(r)) }) if r == "success"
        ));
    }
}
