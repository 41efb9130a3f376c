//! The record scanner and one record's parsing, over raw bytes: the envelope, a bare array or
//! NDJSON, gzipped or not; then each record through parsing, the checks and the batch builder
//! (times, booleans as strings, nested identities, unknown fields), as ingest does.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use prism::schema::{self, EventBatchBuilder, Granularity};
use prism::source::{Item, RecordReader};

fuzz_target!(|data: &[u8]| {
    // Gzip is detected from the bytes, as `SourceObject::open` does.
    let mut body: Box<dyn Read> = if data.starts_with(&[0x1f, 0x8b]) { Box::new(flate2::read::MultiGzDecoder::new(data)) } else { Box::new(data) };
    let mut limited = Vec::new();
    // A gzip bomb would only measure the fuzzer's memory: 16 MiB of decompressed input is plenty.
    if (&mut body).take(16 << 20).read_to_end(&mut limited).is_err() {
        return;
    }
    let mut reader = RecordReader::new(limited.as_slice());
    let mut builder = EventBatchBuilder::new(Granularity::Day);
    while let Ok(Some(item)) = reader.next_item() {
        if let Item::Record { bytes, .. } = item
            && let Ok(mut event) = schema::parse_record(bytes)
            && let Ok(checked) = schema::check_record(&event, bytes)
        {
            builder.append(&mut event, checked, "fuzz");
        }
    }
    let batch = builder.finish();
    assert_eq!(batch.schema(), schema::events_schema());
});
