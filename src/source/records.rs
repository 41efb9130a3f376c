//! Splits a stream of (decompressed) bytes into the raw JSON text of each record.
//!
//! One scanner serves every layout seen in the wild: the `{"Records":[…]}` envelope CloudTrail
//! delivers, a bare JSON array, and newline-delimited JSON. It finds where each record starts;
//! the caller's parser may then read the record from there ([`RecordReader::next_item_with`]),
//! else the reader finds where it ends (string- and escape-aware bracket matching). Memory stays
//! bounded by the largest record rather than the file, and a record with bad JSON inside is
//! rejected alone while the records around it are kept. A break in the structure itself (an unclosed brace, a
//! truncated stream) ends the file with an error naming the record where it happened; every
//! record before it has already been returned.

use std::io::{self, Read};

/// Where a file stopped being readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub kind: StreamErrorKind,
    /// The index of the record being read when the stream broke.
    pub record_index: usize,
    /// Offset in the decompressed stream.
    pub offset: u64,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrorKind {
    /// The underlying read failed (a corrupt gzip member, a dropped connection).
    Read,
    /// The stream ended inside a record or before the closing bracket.
    Truncated,
    /// The bytes are not the JSON layout they started as.
    InvalidJson,
    /// One record exceeds [`MAX_RECORD_BYTES`].
    RecordTooLarge,
}

impl StreamErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            StreamErrorKind::Read => "read_error",
            StreamErrorKind::Truncated => "truncated",
            StreamErrorKind::InvalidJson => "invalid_json",
            StreamErrorKind::RecordTooLarge => "record_too_large",
        }
    }
}

/// CloudTrail caps a record well below this (requestParameters are omitted above 100 KB).
pub const MAX_RECORD_BYTES: usize = 64 << 20;
const CHUNK: usize = 256 << 10;
/// The fewest bytes offered to [`RecordReader::next_item_with`]'s parser.
const MIN_FRONT: usize = 4 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `{"Records":[ … ]}`
    Envelope,
    /// `[ … ]`
    Array,
    /// One object per line (or concatenated objects).
    Lines,
}

/// One item of a file.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// The raw JSON text of record `index`.
    Record { index: usize, bytes: &'a [u8] },
    /// NDJSON only: a line that does not start a JSON object; the reader skipped to the next line.
    BadLine { index: usize, message: String },
    /// Record `index`, taken whole by the caller's parser from the front of the bytes read
    /// ([`RecordReader::next_item_with`]).
    Taken { index: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    /// Expecting a record (or, in arrays, the closing bracket when `first` is true).
    BeforeRecord {
        first: bool,
    },
    AfterRecord,
    /// After the Records array: the rest of the envelope object.
    EnvelopeTail,
    Done,
}

pub struct RecordReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
    /// Bytes consumed from `inner` before `buf[0]`.
    base: u64,
    layout: Option<Layout>,
    state: State,
    index: usize,
    /// The length of the last record read.
    last_len: usize,
}

impl<R: Read> RecordReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_buffer(inner, Vec::new())
    }

    /// A reader that works in `buf`, the buffer of an earlier reader ([`RecordReader::into_buffer`]):
    /// an ingest of many small files then allocates (and the kernel zeroes) one buffer per
    /// parser, not one per file.
    pub fn with_buffer(inner: R, mut buf: Vec<u8>) -> Self {
        buf.resize(CHUNK, 0);
        RecordReader { inner, buf, pos: 0, end: 0, eof: false, base: 0, layout: None, state: State::Start, index: 0, last_len: 0 }
    }

    /// The buffer, for the next reader; one grown for a huge record shrinks back.
    pub fn into_buffer(self) -> Vec<u8> {
        let mut buf = self.buf;
        buf.truncate(CHUNK);
        buf.shrink_to(CHUNK);
        buf
    }

    /// The layout detected, once the first bytes were read.
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    /// Records returned (and bad lines skipped) so far.
    pub fn records_seen(&self) -> usize {
        self.index
    }

    fn err(&self, kind: StreamErrorKind, message: impl Into<String>) -> StreamError {
        StreamError { kind, record_index: self.index, offset: self.base + self.pos as u64, message: message.into() }
    }

    /// Reads more bytes; returns false at end of stream.
    fn fill(&mut self) -> Result<bool, StreamError> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.base += self.pos as u64;
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_RECORD_BYTES + CHUNK {
                return Err(self.err(StreamErrorKind::RecordTooLarge, format!("record {} is larger than {} MiB", self.index, MAX_RECORD_BYTES >> 20)));
            }
            let new_len = (self.buf.len() * 2).min(MAX_RECORD_BYTES + CHUNK);
            self.buf.resize(new_len, 0);
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.eof = true;
                    let kind = if e.kind() == io::ErrorKind::UnexpectedEof { StreamErrorKind::Truncated } else { StreamErrorKind::Read };
                    return Err(self.err(kind, e.to_string()));
                }
            }
        }
    }

    /// The next non-whitespace byte (not consumed), or None at end of stream.
    fn peek_non_ws(&mut self) -> Result<Option<u8>, StreamError> {
        loop {
            while self.pos < self.end {
                let c = self.buf[self.pos];
                if c.is_ascii_whitespace() {
                    self.pos += 1;
                } else {
                    return Ok(Some(c));
                }
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Makes at least `n` bytes available after `pos` unless the stream ends first.
    fn ensure(&mut self, n: usize) -> Result<(), StreamError> {
        while self.end - self.pos < n {
            if !self.fill()? {
                break;
            }
        }
        Ok(())
    }

    /// Finds the end of the JSON value starting at `pos`; returns its length.
    fn scan_value(&mut self) -> Result<usize, StreamError> {
        let mut i = 0usize; // offset from pos
        let mut depth = 0usize;
        let mut in_str = false;
        let first = self.buf[self.pos];
        let scalar = !matches!(first, b'{' | b'[' | b'"');
        loop {
            let data = &self.buf[self.pos..self.end];
            while i < data.len() {
                if in_str {
                    match memchr::memchr2(b'"', b'\\', &data[i..]) {
                        None => i = data.len(),
                        Some(k) => {
                            i += k;
                            if data[i] == b'\\' {
                                if i + 1 >= data.len() {
                                    break; // the escaped byte is not read yet
                                }
                                i += 2;
                            } else {
                                in_str = false;
                                i += 1;
                                if depth == 0 {
                                    return Ok(i); // a top-level string value
                                }
                            }
                        }
                    }
                    continue;
                }
                let c = data[i];
                if scalar {
                    if matches!(c, b',' | b']' | b'}') || c.is_ascii_whitespace() {
                        return Ok(i);
                    }
                    i += 1;
                    continue;
                }
                match c {
                    b'"' => in_str = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return Ok(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            // Need more bytes; `i` stays relative to `pos`, which `fill` may move to 0.
            if !self.fill()? {
                if scalar && i > 0 {
                    return Ok(i);
                }
                return Err(self.err(StreamErrorKind::Truncated, format!("the stream ends inside record {}", self.index)));
            }
        }
    }

    fn detect_layout(&mut self) -> Result<Option<Layout>, StreamError> {
        self.ensure(3)?;
        if self.end - self.pos >= 3 && self.buf[self.pos..self.pos + 3] == [0xEF, 0xBB, 0xBF] {
            self.pos += 3; // UTF-8 byte order mark
        }
        match self.peek_non_ws()? {
            None => Ok(None),
            Some(b'[') => {
                self.pos += 1;
                Ok(Some(Layout::Array))
            }
            Some(b'{') => {
                // `{"Records":[` opens an envelope; any other first key is a record (NDJSON).
                self.ensure(64)?;
                let window = &self.buf[self.pos..self.end];
                let mut j = 1;
                let skip_ws = |j: &mut usize| {
                    while *j < window.len() && window[*j].is_ascii_whitespace() {
                        *j += 1;
                    }
                };
                skip_ws(&mut j);
                if window[j..].starts_with(b"\"Records\"") {
                    j += 9;
                    skip_ws(&mut j);
                    if j < window.len() && window[j] == b':' {
                        j += 1;
                        skip_ws(&mut j);
                        if j < window.len() && window[j] == b'[' {
                            self.pos += j + 1;
                            return Ok(Some(Layout::Envelope));
                        }
                        return Err(self.err(StreamErrorKind::InvalidJson, "`Records` is not an array"));
                    }
                }
                Ok(Some(Layout::Lines))
            }
            Some(c) => Err(self.err(StreamErrorKind::InvalidJson, format!("expected `{{` or `[` at the start, found {:?}", c as char))),
        }
    }

    /// Returns the next record, `Ok(None)` at the clean end of the file, or the error that
    /// ended it. After an error or the end, every later call returns `Ok(None)`.
    pub fn next_item(&mut self) -> Result<Option<Item<'_>>, StreamError> {
        self.next_item_with(|_, _| None)
    }

    /// [`RecordReader::next_item`], offering the bytes read from the next record's start on
    /// to `take` first (with the record's index): a parser that reads one whole value from
    /// their front and returns its length saves the scan for the record's end, a second pass
    /// over every byte (6% of an ingest's time). When it returns None (the record goes on past
    /// the bytes read, or is no valid JSON), the record is scanned for and returned as
    /// [`Item::Record`], as `next_item` returns it.
    pub fn next_item_with(&mut self, take: impl FnOnce(usize, &[u8]) -> Option<usize>) -> Result<Option<Item<'_>>, StreamError> {
        let r = self.advance(Some(take));
        if r.is_err() {
            self.state = State::Done;
        }
        match r? {
            None => Ok(None),
            Some(Advance::Record(start, len)) => {
                let index = self.index;
                self.index += 1;
                Ok(Some(Item::Record { index, bytes: &self.buf[start..start + len] }))
            }
            Some(Advance::BadLine(message)) => {
                let index = self.index;
                self.index += 1;
                Ok(Some(Item::BadLine { index, message }))
            }
            Some(Advance::Taken) => {
                let index = self.index;
                self.index += 1;
                Ok(Some(Item::Taken { index }))
            }
        }
    }

    fn advance(&mut self, mut take: Option<impl FnOnce(usize, &[u8]) -> Option<usize>>) -> Result<Option<Advance>, StreamError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Start => match self.detect_layout()? {
                    None => {
                        self.state = State::Done;
                        return Ok(None);
                    }
                    Some(layout) => {
                        self.layout = Some(layout);
                        self.state = State::BeforeRecord { first: true };
                    }
                },
                State::BeforeRecord { first } => {
                    let layout = self.layout.unwrap_or(Layout::Lines);
                    let Some(c) = self.peek_non_ws()? else {
                        if layout == Layout::Lines {
                            self.state = State::Done;
                            return Ok(None);
                        }
                        return Err(self.err(StreamErrorKind::Truncated, "the stream ends before the array is closed"));
                    };
                    if layout != Layout::Lines && first && c == b']' {
                        self.pos += 1;
                        self.state = self.after_array();
                        continue;
                    }
                    if layout == Layout::Lines && c != b'{' {
                        let message = format!("line does not start a JSON object (found {:?})", c as char);
                        self.skip_line()?;
                        return Ok(Some(Advance::BadLine(message)));
                    }
                    // At most about twice the last record's length: the parser checks the
                    // UTF-8 of what it is offered.
                    let front = (2 * self.last_len).max(MIN_FRONT);
                    let rest = &self.buf[self.pos..self.end.min(self.pos + front)];
                    if let Some(len) = take.take().and_then(|take| take(self.index, rest)) {
                        // The caller has used the record: a wrong length is its bug, never the input's.
                        assert!(len > 0 && len <= rest.len(), "a parser took {len} bytes of the {} offered", rest.len());
                        self.pos += len;
                        self.last_len = len;
                        self.state = State::AfterRecord;
                        return Ok(Some(Advance::Taken));
                    }
                    let len = self.scan_value()?;
                    self.last_len = len;
                    let start = self.pos;
                    self.pos += len;
                    self.state = State::AfterRecord;
                    return Ok(Some(Advance::Record(start, len)));
                }
                State::AfterRecord => {
                    let layout = self.layout.unwrap_or(Layout::Lines);
                    if layout == Layout::Lines {
                        self.state = State::BeforeRecord { first: false };
                        continue;
                    }
                    match self.peek_non_ws()? {
                        Some(b',') => {
                            self.pos += 1;
                            self.state = State::BeforeRecord { first: false };
                        }
                        Some(b']') => {
                            self.pos += 1;
                            self.state = self.after_array();
                        }
                        Some(c) => {
                            return Err(
                                self.err(StreamErrorKind::InvalidJson, format!("expected `,` or `]` after record {}, found {:?}", self.index - 1, c as char))
                            );
                        }
                        None => return Err(self.err(StreamErrorKind::Truncated, "the stream ends before the array is closed")),
                    }
                }
                State::EnvelopeTail => {
                    // Skip whatever else the envelope holds, up to its closing brace.
                    match self.peek_non_ws()? {
                        Some(b'}') => {
                            self.pos += 1;
                            self.state = State::Done;
                            return self.expect_end();
                        }
                        Some(b',') => {
                            self.pos += 1;
                            self.skip_member()?;
                        }
                        Some(c) => return Err(self.err(StreamErrorKind::InvalidJson, format!("unexpected {:?} after the Records array", c as char))),
                        None => return Err(self.err(StreamErrorKind::Truncated, "the envelope is not closed")),
                    }
                }
            }
        }
    }

    fn after_array(&self) -> State {
        match self.layout {
            Some(Layout::Envelope) => State::EnvelopeTail,
            _ => State::Done,
        }
    }

    /// Only whitespace may follow the end of the document.
    fn expect_end(&mut self) -> Result<Option<Advance>, StreamError> {
        match self.peek_non_ws()? {
            None => Ok(None),
            Some(_) => Err(self.err(StreamErrorKind::InvalidJson, "unexpected data after the end of the document")),
        }
    }

    /// Skips `"key": value` inside the envelope.
    fn skip_member(&mut self) -> Result<(), StreamError> {
        if self.peek_non_ws()?.is_none() {
            return Err(self.err(StreamErrorKind::Truncated, "the envelope is not closed"));
        }
        let len = self.scan_value()?; // the key
        self.pos += len;
        match self.peek_non_ws()? {
            Some(b':') => self.pos += 1,
            _ => return Err(self.err(StreamErrorKind::InvalidJson, "expected `:` in the envelope")),
        }
        if self.peek_non_ws()?.is_none() {
            return Err(self.err(StreamErrorKind::Truncated, "the envelope is not closed"));
        }
        let len = self.scan_value()?;
        self.pos += len;
        Ok(())
    }

    fn skip_line(&mut self) -> Result<(), StreamError> {
        loop {
            if let Some(k) = memchr::memchr(b'\n', &self.buf[self.pos..self.end]) {
                self.pos += k + 1;
                return Ok(());
            }
            self.pos = self.end;
            if !self.fill()? {
                return Ok(());
            }
        }
    }
}

enum Advance {
    Record(usize, usize),
    BadLine(String),
    Taken,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> (Vec<String>, Vec<usize>, Option<StreamError>, Option<Layout>) {
        // A tiny read size exercises every buffer boundary.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(out.len()).min(3);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = RecordReader::new(Trickle(input));
        let (mut recs, mut bad) = (vec![], vec![]);
        loop {
            match r.next_item() {
                Ok(Some(Item::Record { bytes, .. })) => recs.push(String::from_utf8(bytes.to_vec()).unwrap()),
                Ok(Some(Item::BadLine { index, .. })) => bad.push(index),
                Ok(Some(Item::Taken { .. })) => unreachable!("no parser offered"),
                Ok(None) => return (recs, bad, None, r.layout()),
                Err(e) => return (recs, bad, Some(e), r.layout()),
            }
        }
    }

    /// Records a parser takes from the front come back as `Taken` and the walk goes on after
    /// them; one it declines (too long for the bytes offered, or refused) is scanned for and
    /// returned whole, as without a parser.
    #[test]
    fn a_parser_takes_records_from_the_front_or_leaves_them_to_the_scan() {
        let long = format!(r#"{{"big":"{}"}}"#, "x".repeat(3 * MIN_FRONT));
        let input = format!(r#"{{"Records":[{{"a":1}}, {long} ,{{"refuse":true}},{{"b":"]}}"}}]}}"#);
        let mut r = RecordReader::new(input.as_bytes());
        let mut got = Vec::new();
        loop {
            let mut offered = 0;
            let item = r.next_item_with(|_, front| {
                offered = front.len();
                let mut values = serde_json::Deserializer::from_slice(front).into_iter::<serde_json::Value>();
                let v = values.next()?.ok()?;
                (v.get("refuse").is_none()).then(|| values.byte_offset())
            });
            match item.unwrap() {
                None => break,
                Some(Item::Taken { index }) => got.push(format!("taken {index}")),
                Some(Item::Record { index, bytes }) => got.push(format!("scanned {index} {}", bytes.len())),
                Some(Item::BadLine { .. }) => unreachable!(),
            }
            assert!(offered <= (2 * r.last_len).max(MIN_FRONT).max(long.len() * 2), "{offered}");
        }
        assert_eq!(got, ["taken 0".to_string(), format!("scanned 1 {}", long.len()), "scanned 2 15".into(), "taken 3".into()]);
    }

    #[test]
    fn envelope_array_and_lines() {
        let (r, _, e, l) = read_all(br#"{"Records":[{"a":"x}{\"y"},{"b":[1,{"c":2}]}]}"#);
        assert_eq!(r, vec![r#"{"a":"x}{\"y"}"#, r#"{"b":[1,{"c":2}]}"#]);
        assert!(e.is_none());
        assert_eq!(l, Some(Layout::Envelope));

        let (r, _, e, l) = read_all(b"\xEF\xBB\xBF [ {\"a\":1} , {\"a\":2} ] \n");
        assert_eq!(r.len(), 2);
        assert!(e.is_none());
        assert_eq!(l, Some(Layout::Array));

        let (r, bad, e, l) = read_all(b"{\"a\":1}\n{\"a\":2}\ngarbage line\n{\"a\":\"\\\\\"}\n");
        assert_eq!(r, vec![r#"{"a":1}"#, r#"{"a":2}"#, r#"{"a":"\\"}"#]);
        assert_eq!(bad, vec![2]);
        assert!(e.is_none());
        assert_eq!(l, Some(Layout::Lines));
    }

    #[test]
    fn empty_inputs() {
        for input in [&b""[..], b"  \n", b"[]", b"{\"Records\": [ ] }", b"{\"Records\":[]}"] {
            let (r, _, e, _) = read_all(input);
            assert!(r.is_empty() && e.is_none(), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn envelope_with_other_keys_after_records() {
        let (r, _, e, _) = read_all(br#"{"Records":[{"a":1}], "other": {"x": [1, "]"]}, "n": 5}"#);
        assert_eq!(r.len(), 1);
        assert!(e.is_none(), "{e:?}");
    }

    #[test]
    fn non_object_records_are_returned_for_the_parser_to_reject() {
        let (r, _, e, _) = read_all(br#"[{"a":1}, 42, "s", null, {"b":2}]"#);
        assert_eq!(r, vec![r#"{"a":1}"#, "42", r#""s""#, "null", r#"{"b":2}"#]);
        assert!(e.is_none());
    }

    #[test]
    fn truncation_keeps_complete_records_and_names_the_broken_one() {
        let (r, _, e, _) = read_all(br#"{"Records":[{"a":1},{"b":2},{"c":"#);
        assert_eq!(r.len(), 2);
        let e = e.unwrap();
        assert_eq!(e.kind, StreamErrorKind::Truncated);
        assert_eq!(e.record_index, 2);

        let (r, _, e, _) = read_all(br#"{"Records":[{"a":1}"#);
        assert_eq!(r.len(), 1);
        assert_eq!(e.unwrap().kind, StreamErrorKind::Truncated);
    }

    #[test]
    fn broken_structure_is_an_error_after_the_good_records() {
        let (r, _, e, _) = read_all(br#"[{"a":1} {"b":2}]"#);
        assert_eq!(r.len(), 1);
        assert_eq!(e.unwrap().kind, StreamErrorKind::InvalidJson);

        let (r, _, e, _) = read_all(br#"{"Records": null}"#);
        assert!(r.is_empty());
        assert_eq!(e.unwrap().kind, StreamErrorKind::InvalidJson);

        let (_, _, e, _) = read_all(b"hello");
        assert_eq!(e.unwrap().kind, StreamErrorKind::InvalidJson);
    }

    #[test]
    fn read_errors_are_reported() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let src = br#"[{"a":1},{"b":"#;
                if self.0 >= src.len() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt deflate stream"));
                }
                let n = (src.len() - self.0).min(out.len());
                out[..n].copy_from_slice(&src[self.0..self.0 + n]);
                self.0 += n;
                Ok(n)
            }
        }
        let mut r = RecordReader::new(Failing(0));
        assert!(matches!(r.next_item(), Ok(Some(Item::Record { index: 0, .. }))));
        let e = r.next_item().unwrap_err();
        assert_eq!(e.kind, StreamErrorKind::Read);
        assert_eq!(e.record_index, 1);
        assert!(matches!(r.next_item(), Ok(None)));
    }
}
