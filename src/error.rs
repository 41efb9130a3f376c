//! How errors are shown. Each layer's error names what failed (a file, an object key, a table,
//! a record) and keeps the error that caused it as its `source`, never in its own message, so
//! that [`report`] can print every cause once, outermost first, on one line.

use std::error::Error;

/// `e` and its causes, joined by `: `.
///
/// Some dependencies' errors (object_store's, DataFusion's `External`) also print their source
/// in their own message. For those, a cause is left out when the message printed just before it
/// ends with that cause's exact text: the one place where the same words would otherwise come
/// twice in a row. A cause that differs in any way is always printed.
pub fn report(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !last.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        cause = c.source();
    }
    out
}

/// A value from a log, made safe for a terminal and a one-line message: control characters
/// (escape sequences, newlines) become U+FFFD, and long values are cut at 200 characters.
pub fn clean(s: &str) -> String {
    let mut out: String = s.chars().take(200).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    if s.chars().nth(200).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Leaf(&'static str);

    #[derive(Debug, thiserror::Error)]
    #[error("{what}")]
    struct Layer {
        what: &'static str,
        #[source]
        source: Box<dyn Error + Send + Sync>,
    }

    /// A dependency's style: the source in the message too.
    #[derive(Debug, thiserror::Error)]
    #[error("store error: {source}")]
    struct Echoing {
        #[source]
        source: Leaf,
    }

    #[test]
    fn every_cause_once_outermost_first() {
        let e = Layer { what: "cannot list `s3://b/p`", source: Box::new(Echoing { source: Leaf("403 NotSignedUp") }) };
        assert_eq!(report(&e), "cannot list `s3://b/p`: store error: 403 NotSignedUp");
        // A cause whose words appear elsewhere, but not right before it, is kept.
        let e = Layer { what: "reading x: denied", source: Box::new(Layer { what: "opening y", source: Box::new(Leaf("denied")) }) };
        assert_eq!(report(&e), "reading x: denied: opening y: denied");
        assert_eq!(report(&Leaf("alone")), "alone");
    }
}
