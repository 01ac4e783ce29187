//! An in-memory `Stream` for tests and fuzzing: an image held in a `Vec`, with optional named
//! siblings that `open_relative` resolves (so backing chains work without files), and the
//! bodies of the fuzz targets, kept here so `cargo test` can run them over the seeds too.

use std::collections::HashMap;
use std::sync::Arc;

use rbdm_registry::{Point, Result, SourceError, SourceImage, Stream};

#[derive(Clone)]
pub struct MemStream {
    name: String,
    data: Arc<Vec<u8>>,
    siblings: Arc<HashMap<String, Arc<Vec<u8>>>>,
    /// Bytes that any name other than a named sibling opens (a fuzzed image's backing file).
    echo: Option<Arc<Vec<u8>>>,
}

impl MemStream {
    pub fn new(data: Vec<u8>) -> Self {
        MemStream {
            name: "memory".into(),
            data: Arc::new(data),
            siblings: Arc::new(HashMap::new()),
            echo: None,
        }
    }

    /// Same bytes, and every name `open_relative` is asked for (other than named siblings)
    /// opens `backing`: backing chains of a fuzzed image go through the decoder too.
    pub fn echoing(mut self, backing: Vec<u8>) -> Self {
        self.echo = Some(Arc::new(backing));
        self
    }

    /// Same bytes, and `name` resolvable by `open_relative` to `data`.
    pub fn with_sibling(mut self, name: &str, data: Vec<u8>) -> Self {
        Arc::make_mut(&mut self.siblings).insert(name.to_string(), Arc::new(data));
        self
    }
}

impl Stream for MemStream {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(buf.len()).map(|e| (o, e)))
            .and_then(|(o, e)| self.data.get(o..e));
        match src {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(SourceError::io(
                format!(
                    "{}: read of {} bytes at {offset}",
                    self.describe(),
                    buf.len()
                ),
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            )),
        }
    }

    fn open_relative(&self, name: &str) -> Result<Box<dyn Stream>> {
        let data = match self.siblings.get(name) {
            Some(data) => data.clone(),
            None => match &self.echo {
                Some(data) => data.clone(),
                None => {
                    return Err(SourceError::NotFound(format!(
                        "{}: no sibling named {name:?}",
                        self.describe()
                    )))
                }
            },
        };
        Ok(Box::new(MemStream {
            name: format!("memory:{name}"),
            data,
            siblings: self.siblings.clone(),
            echo: self.echo.clone(),
        }))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Separates a fuzz input's image from the bytes its backing file names open; without it the
/// image is its own backing file (a loop, which must be refused).
pub const BACKING_SEPARATOR: &[u8] = b"\n--backing--\n";

/// The fuzz input as a stream: the image, backed by what follows the separator.
pub fn fuzz_stream(data: &[u8]) -> MemStream {
    let at = data
        .windows(BACKING_SEPARATOR.len())
        .position(|w| w == BACKING_SEPARATOR);
    match at {
        Some(i) => {
            MemStream::new(data[..i].to_vec()).echoing(data[i + BACKING_SEPARATOR.len()..].to_vec())
        }
        None => MemStream::new(data.to_vec()).echoing(data.to_vec()),
    }
}

/// Fuzz body for the header, header extensions, snapshot table and backing chain: any bytes
/// open or fail cleanly.
pub fn fuzz_header(data: &[u8]) {
    if let Ok(img) = crate::open(Box::new(fuzz_stream(data))) {
        let _ = (
            img.snapshots(),
            img.snapshot_ids(),
            img.describe(),
            img.backing_file(),
        );
    }
}

/// Guest bytes the read fuzz body looks at: enough for several L2 tables at small clusters,
/// little enough that `list_snaps` output stays small.
const FUZZ_SPAN: u64 = 16 << 20;

/// Fuzz body for the L1/L2 lookups, compressed clusters and `list_snaps`: open the bytes as an
/// image, walk its allocation and read a few ranges at every point. Never panics; memory is
/// bounded by the 64 KiB read buffer, one decompressed cluster and the L2 cache.
pub fn fuzz_read(data: &[u8]) {
    let Ok(img) = crate::open(Box::new(fuzz_stream(data))) else {
        return;
    };
    let size = img.size();
    let _ = img.list_snaps(0, FUZZ_SPAN);
    let _ = img.list_snaps(size.saturating_sub(FUZZ_SPAN / 2), FUZZ_SPAN);
    let mut buf = vec![0u8; 64 << 10];
    let points = img.snapshots().len() + 1;
    for p in 0..points.min(8) {
        let point = if p + 1 == points {
            Point::Head
        } else {
            Point::Snap(p)
        };
        for offset in [0, 1000, size / 2, size.saturating_sub(5000)] {
            let _ = img.read(point, offset, &mut buf);
        }
    }
}
