//! Bounded source-spec input: reading the text from a file or stdin without letting a huge
//! or endless input (`/dev/zero`, a runaway pipe) grow memory, and quoting user values in
//! error messages as short excerpts so an error never echoes megabytes back.

use std::io::Read;

/// The most source-spec text accepted. A spec is a few hundred bytes; a raw spec with a long
/// snapshot list a few KiB. Ceph reads at most 4 KiB; 1 MiB is far more than any real spec.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// Longest part of a user value an error message quotes.
const EXCERPT_CHARS: usize = 64;

/// Why the spec text could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "the source-spec is larger than {} bytes (1 MiB, the limit)",
        MAX_SPEC_BYTES
    )]
    TooLong,
    #[error("the source-spec is not UTF-8 text")]
    NotUtf8,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads at most `MAX_SPEC_BYTES` (one more byte tells a too-long input apart), so memory
/// stays bounded whatever the reader is.
pub fn read_spec_text(reader: impl Read) -> Result<String, InputError> {
    let mut buf = Vec::new();
    reader
        .take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    check_len(buf.len())?;
    String::from_utf8(buf).map_err(|_| InputError::NotUtf8)
}

/// The length check for text that arrived whole (a `--source-spec` argument).
pub fn check_len(len: usize) -> Result<(), InputError> {
    if len > MAX_SPEC_BYTES {
        return Err(InputError::TooLong);
    }
    Ok(())
}

/// `s` quoted as `{:?}` does, cut to a short excerpt that says how long the whole was.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &s[..cut], s.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_reader_stops_at_the_limit() {
        let e = read_spec_text(std::io::repeat(b' ')).unwrap_err();
        assert!(matches!(e, InputError::TooLong), "{e}");
        assert!(e.to_string().contains("1048576"), "{e}");
        let exact = vec![b' '; MAX_SPEC_BYTES];
        assert_eq!(read_spec_text(&exact[..]).unwrap().len(), MAX_SPEC_BYTES);
        assert!(matches!(
            read_spec_text(&[0xff, 0xfe][..]),
            Err(InputError::NotUtf8)
        ));
    }

    #[test]
    fn quotes_are_short() {
        assert_eq!(quote("abc"), "\"abc\"");
        let long = "é".repeat(10_000);
        let q = quote(&long);
        assert!(q.len() < 200, "{q}");
        assert!(q.ends_with("... (20000 bytes)"), "{q}");
    }
}
