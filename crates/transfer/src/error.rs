//! What goes wrong reading or writing an export stream: where (the byte offset and the
//! record tag) and what.

use std::fmt;

/// A record's tag byte, shown as `'w' (0x77)`, or `0x07` when it is not printable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag(pub u8);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' (0x{:02x})", self.0 as char, self.0)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// How a stream breaks the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("stream ends inside {0}")]
    Truncated(&'static str),
    #[error("expected the banner {0:?}")]
    Banner(&'static str),
    #[error("unknown record tag")]
    UnknownTag,
    #[error("record length {len}, expected {want}")]
    Length { len: u64, want: u64 },
    #[error("record length {len} does not match its contents")]
    LengthMismatch { len: u64 },
    #[error("{what} length {len} is more than {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("the header's metadata exceeds {max} bytes")]
    TooMuchMetadata { max: u64 },
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("image format {0} is not supported")]
    Format(u64),
    #[error("image order {0} is out of range 12..=25")]
    Order(u64),
    #[error("invalid layout: {0}")]
    Layout(String),
    #[error("extent {offset}+{len} lies beyond the image size {size}")]
    Extent { offset: u64, len: u64, size: u64 },
    #[error("diff starts at snapshot '{name}', but the image is at '{have}'")]
    FromSnap { name: String, have: String },
    #[error("unexpected data after the last diff")]
    Trailing,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream is not what rbd writes: `offset` is where the broken item starts and
    /// `record` the tag of the record it belongs to (none for banners and counts).
    #[error("export stream corrupt at byte {offset}{}: {problem}", in_record(.record))]
    Corrupt {
        offset: u64,
        record: Option<Tag>,
        problem: Problem,
    },
    #[error("error reading the stream at byte {offset}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("error writing the output")]
    Write(#[source] std::io::Error),
    /// Reading the source file of a raw import.
    #[error("error reading {path}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A failed import whose partial image could not be removed either. The import's own
    /// failure is the `source`, so a reporter walking the chain prints it after this, once.
    #[error("the partial image {image} is left behind (removing it failed: {})", rbdm_image::report(.cleanup))]
    Leftover {
        image: String,
        cleanup: rbdm_image::Error,
        source: Box<Error>,
    },
    /// The image refused an operation; `context` says which, in rbd's words.
    #[error("{context}")]
    Image {
        context: String,
        #[source]
        source: rbdm_image::Error,
    },
}

fn in_record(record: &Option<Tag>) -> String {
    match record {
        Some(tag) => format!(", in record {tag}"),
        None => String::new(),
    }
}

impl Error {
    pub fn corrupt(offset: u64, record: Option<Tag>, problem: Problem) -> Self {
        Error::Corrupt {
            offset,
            record,
            problem,
        }
    }

    /// For `map_err` on image calls.
    pub fn image(context: impl Into<String>) -> impl FnOnce(rbdm_image::Error) -> Error {
        let context = context.into();
        move |source| Error::Image { context, source }
    }

    /// The errno rbd exits with: EBADMSG for a corrupt stream, the OS's for I/O.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Corrupt { .. } => libc::EBADMSG,
            Error::Read { source, .. } | Error::Write(source) | Error::ReadFile { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            Error::Image { source, .. } => source.errno(),
            Error::Leftover { source, .. } => source.errno(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
