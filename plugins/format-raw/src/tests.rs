//! Tests of the raw format over in-memory streams: reads, extents, holes never read, snapshots.
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use rbdm_registry::conformance::{self, SnapRules};
use rbdm_registry::{ExtentState, Point, SourceImage, Stream, StreamExtent};

use super::*;

/// Bytes in memory; `holes` (ranges that really are zero) are reported by `extents` when
/// `knows_holes`. Every read is recorded, to check that known holes are never read.
struct MemStream {
    data: Vec<u8>,
    holes: Vec<(u64, u64)>,
    knows_holes: bool,
    reads: Mutex<Vec<(u64, u64)>>,
}

impl MemStream {
    fn new(data: Vec<u8>, holes: Vec<(u64, u64)>, knows_holes: bool) -> Self {
        MemStream {
            data,
            holes,
            knows_holes,
            reads: Mutex::new(Vec::new()),
        }
    }
}

impl Stream for MemStream {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> rbdm_registry::Result<()> {
        let end = (offset as usize).saturating_add(buf.len());
        if end > self.data.len() {
            return Err(SourceError::Invalid("read past the end".into()));
        }
        buf.copy_from_slice(&self.data[offset as usize..end]);
        self.reads.lock().unwrap().push((offset, end as u64));
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64) -> Option<rbdm_registry::Result<Vec<StreamExtent>>> {
        if !self.knows_holes {
            return None;
        }
        let end = (offset + len).min(self.size());
        let mut out = Vec::new();
        let mut pos = offset;
        for &(a, b) in &self.holes {
            let (a, b) = (a.max(pos), b.min(end));
            if a >= b {
                continue;
            }
            if a > pos {
                out.push(StreamExtent {
                    offset: pos,
                    len: a - pos,
                    zero: false,
                });
            }
            out.push(StreamExtent {
                offset: a,
                len: b - a,
                zero: true,
            });
            pos = b;
        }
        if pos < end {
            out.push(StreamExtent {
                offset: pos,
                len: end - pos,
                zero: false,
            });
        }
        Some(Ok(out))
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// One point: size, writes over the previous point's bytes, and which zero runs the stream
/// admits to being holes.
#[derive(Clone, Debug)]
struct PointGen {
    size: u64,
    writes: Vec<(u64, u64, u8)>,
    knows_holes: bool,
}

fn point_gen() -> impl Strategy<Value = PointGen> {
    let write = (
        0u64..40_000,
        1u64..12_000,
        prop_oneof![Just(0u8), Just(7u8), any::<u8>()],
    );
    (
        0u64..40_000,
        proptest::collection::vec(write, 0..5),
        any::<bool>(),
    )
        .prop_map(|(size, writes, knows_holes)| PointGen {
            size,
            writes,
            knows_holes,
        })
}

/// Zero runs of at least 1000 bytes: some file systems' holes, at odd offsets.
fn zero_runs(data: &[u8]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i] != 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < data.len() && data[i] == 0 {
            i += 1;
        }
        if i - start >= 1000 {
            out.push((start as u64 + 3, i as u64));
        }
    }
    out
}

fn build(gens: &[PointGen]) -> (Vec<Vec<u8>>, RawImage) {
    let mut contents: Vec<Vec<u8>> = Vec::new();
    for g in gens {
        let mut d = contents.last().cloned().unwrap_or_default();
        d.resize(g.size as usize, 0);
        for &(o, l, b) in &g.writes {
            let (o, e) = ((o as usize).min(d.len()), ((o + l) as usize).min(d.len()));
            d[o..e].fill(b);
        }
        contents.push(d);
    }
    let mut streams: Vec<Box<dyn Stream>> = contents
        .iter()
        .zip(gens)
        .map(|(d, g)| {
            Box::new(MemStream::new(d.clone(), zero_runs(d), g.knows_holes)) as Box<dyn Stream>
        })
        .collect();
    let head = streams.pop().expect("at least one point");
    let snaps = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("s{i}"), s))
        .collect();
    (contents, RawImage::new(head, snaps))
}

/// The registry's contract checks over `[offset, offset+len)` (exact: raw compares
/// contents), and the reads they checked against against what the points hold.
fn check(img: &RawImage, contents: &[Vec<u8>], offset: u64, len: u64) -> Result<(), TestCaseError> {
    conformance::check_list_snaps_range(img, offset, len, SnapRules::EXACT)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (i, cur) in contents.iter().enumerate() {
        let point = if i + 1 == contents.len() {
            Point::Head
        } else {
            Point::Snap(i)
        };
        let end = offset.saturating_add(len).min(cur.len() as u64);
        if offset >= end {
            continue;
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        img.read(point, offset, &mut buf).unwrap();
        prop_assert!(
            buf[..] == cur[offset as usize..end as usize],
            "point {} reads wrong",
            i
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn list_snaps_is_exact_and_strict(gens in proptest::collection::vec(point_gen(), 1..4), q in (0u64..45_000, 0u64..50_000)) {
        let (contents, img) = build(&gens);
        check(&img, &contents, q.0, q.1)?;
    }

    #[test]
    fn allocated_covers_every_nonzero_byte(gens in proptest::collection::vec(point_gen(), 1..4), q in (0u64..45_000, 0u64..50_000)) {
        let (contents, img) = build(&gens);
        let Some(ranges) = img.allocated(q.0, q.1) else {
            prop_assert!(img.blind.iter().any(|&b| b), "streams that know their holes answer");
            return Ok(());
        };
        prop_assert!(img.blind.iter().all(|&b| !b), "a blind stream cannot answer");
        let ranges = ranges.unwrap();
        for (i, c) in contents.iter().enumerate() {
            let end = (q.0 + q.1).min(c.len() as u64);
            for at in (q.0..end).filter(|&at| c[at as usize] != 0) {
                prop_assert!(
                    ranges.iter().any(|&(o, l)| o <= at && at < o + l),
                    "point {} byte {} holds data outside {:?}", i, at, ranges
                );
            }
        }
    }

    #[test]
    fn reads_match_contents_and_pad_with_zeros(gens in proptest::collection::vec(point_gen(), 1..3), off in 0u64..45_000, n in 0usize..9000) {
        let (contents, img) = build(&gens);
        for (i, c) in contents.iter().enumerate() {
            let point = if i + 1 == contents.len() { Point::Head } else { Point::Snap(i) };
            let mut buf = vec![0xaa; n];
            img.read(point, off, &mut buf).unwrap();
            for (k, b) in buf.iter().enumerate() {
                prop_assert_eq!(*b, c.get(off as usize + k).copied().unwrap_or(0));
            }
        }
    }
}

/// Lets a test keep a handle on a stream the image owns.
struct Shared(Arc<MemStream>);

impl Stream for Shared {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> rbdm_registry::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn extents(&self, offset: u64, len: u64) -> Option<rbdm_registry::Result<Vec<StreamExtent>>> {
        self.0.extents(offset, len)
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

#[test]
fn known_holes_are_never_read() {
    let mut data = vec![0u8; 3 << 20];
    data[100_000..200_000].fill(1);
    data[2 << 20..(2 << 20) + 5000].fill(2);
    let mut snap = data.clone();
    snap[150_000..160_000].fill(3);
    let head = Arc::new(MemStream::new(data.clone(), zero_runs(&data), true));
    let old = Arc::new(MemStream::new(snap.clone(), zero_runs(&snap), true));
    let img = RawImage::new(
        Box::new(Shared(head.clone())),
        vec![("old".into(), Box::new(Shared(old.clone())))],
    );
    let lists = img.list_snaps(0, 3 << 20).unwrap();
    for s in [&head, &old] {
        let reads = s.reads.lock().unwrap();
        assert!(!reads.is_empty());
        for &(a, b) in reads.iter() {
            assert!(
                !s.holes.iter().any(|&(ha, hb)| a < hb && ha < b),
                "read {a}..{b} overlaps a known hole"
            );
        }
    }
    // The only difference is 150_000..160_000 (3s in the snapshot, 1s in the head): data
    // there, in whole 4 KiB blocks, and everything else unchanged.
    let changed: Vec<_> = lists[1]
        .iter()
        .filter(|e| e.state != ExtentState::Unchanged)
        .collect();
    assert_eq!(changed.len(), 1, "{:?}", lists[1]);
    assert_eq!(
        (changed[0].offset, changed[0].len, changed[0].state),
        (147_456, 16_384, ExtentState::Data)
    );
}

#[test]
fn a_huge_sparse_stream_is_walked_without_reads() {
    let t = 1u64 << 40;
    struct Sparse(u64, Mutex<u64>);
    impl Stream for Sparse {
        fn size(&self) -> u64 {
            self.0
        }
        fn read_at(&self, _: u64, buf: &mut [u8]) -> rbdm_registry::Result<()> {
            *self.1.lock().unwrap() += buf.len() as u64;
            buf.fill(0);
            Ok(())
        }
        fn extents(
            &self,
            offset: u64,
            len: u64,
        ) -> Option<rbdm_registry::Result<Vec<StreamExtent>>> {
            Some(Ok(vec![StreamExtent {
                offset,
                len: len.min(self.0 - offset),
                zero: true,
            }]))
        }
        fn describe(&self) -> String {
            "sparse".into()
        }
    }
    let img = RawImage::new(
        Box::new(Sparse(t, Mutex::new(0))),
        vec![("a".into(), Box::new(Sparse(t, Mutex::new(0))))],
    );
    let started = std::time::Instant::now();
    let mut pos = 0;
    while pos < t {
        let l = img.list_snaps(pos, 32 << 20).unwrap();
        assert_eq!(
            l[0],
            vec![SnapExtent {
                offset: pos,
                len: 32 << 20,
                state: ExtentState::Zero
            }]
        );
        assert_eq!(
            l[1],
            vec![SnapExtent {
                offset: pos,
                len: 32 << 20,
                state: ExtentState::Unchanged
            }]
        );
        pos += 32 << 20;
    }
    assert!(
        started.elapsed().as_secs() < 20,
        "took {:?}",
        started.elapsed()
    );
}

/// Over http or s3 nothing knows the holes, so `list_snaps` reads the data to find zeros; the
/// copy's reads of the data it reported must then come from what that scan kept.
#[test]
fn data_scanned_by_list_snaps_is_not_read_again() {
    let mut data = vec![0u8; 4 << 20];
    data[100_000..1_300_000].fill(5);
    data[3 << 20..(3 << 20) + 4096].fill(6);
    let head = Arc::new(MemStream::new(data.clone(), Vec::new(), false));
    let img = RawImage::new(Box::new(Shared(head.clone())), Vec::new());
    let lists = img.list_snaps(0, 4 << 20).unwrap();
    let scanned: u64 = head.reads.lock().unwrap().iter().map(|r| r.1 - r.0).sum();
    assert_eq!(scanned, 4 << 20, "the scan reads everything once");
    for e in lists[0].iter().filter(|e| e.state == ExtentState::Data) {
        let mut buf = vec![0u8; e.len as usize];
        img.read(Point::Head, e.offset, &mut buf).unwrap();
        assert!(buf == data[e.offset as usize..(e.offset + e.len) as usize]);
    }
    let total: u64 = head.reads.lock().unwrap().iter().map(|r| r.1 - r.0).sum();
    assert_eq!(
        total, scanned,
        "reads of scanned data went to the stream again"
    );
    // A range never scanned still reads from the stream.
    let mut buf = vec![0u8; 4096];
    let fresh = RawImage::new(Box::new(Shared(head.clone())), Vec::new());
    fresh.read(Point::Head, 100_000, &mut buf).unwrap();
    assert_eq!(buf, vec![5u8; 4096]);
    assert!(head.reads.lock().unwrap().len() > 4);
}

#[test]
fn the_stream_and_image_keep_the_registry_contract() {
    let mut data = vec![0u8; 3 << 20];
    data[100_000..200_000].fill(1);
    let mut snap = data.clone();
    snap[150_000..160_000].fill(3);
    for knows_holes in [true, false] {
        let stream = MemStream::new(data.clone(), zero_runs(&data), knows_holes);
        conformance::check_stream(&stream, Some(&data)).unwrap();
        let open = || {
            RawImage::new(
                Box::new(MemStream::new(data.clone(), zero_runs(&data), knows_holes)),
                vec![(
                    "old".into(),
                    Box::new(MemStream::new(snap.clone(), zero_runs(&snap), knows_holes)),
                )],
            )
        };
        let lists = conformance::check_source(&open(), 1 << 20, SnapRules::EXACT).unwrap();
        // Errors, not zeros, once the streams fail: both points over one switch.
        let head = conformance::Breakable::new(Box::new(MemStream::new(
            data.clone(),
            zero_runs(&data),
            knows_holes,
        )));
        let old = head.sibling(Box::new(MemStream::new(
            snap.clone(),
            zero_runs(&snap),
            knows_holes,
        )));
        let img = RawImage::new(head.handle(), vec![("old".into(), old)]);
        conformance::check_source_fails(&img, &lists, &head).unwrap();
    }
}
