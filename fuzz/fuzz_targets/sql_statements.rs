//! The SQL statement splitter (quotes, comments, dollar quotes) and the place finder that puts
//! a caret under an error: any script and any error text.
#![no_main]

use datafusion::error::DataFusionError;
use libfuzzer_sys::fuzz_target;
use prism::sql::exec::{StatementError, ends_statement, split_statements};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The script, and after a NUL the text of an error raised by its statements.
    let (script, error) = text.split_once('\0').unwrap_or((text, "sql parser error: Expected: an expression, found: EOF at Line: 1, Column: 8"));
    let _ = ends_statement(script);
    for statement in split_statements(script) {
        let e = StatementError::new("fuzz", script, &statement, &DataFusionError::Plan(error.to_owned()));
        let _ = e.to_string();
    }
});
