//! Header, header extensions and snapshot table of QCOW v1 and QCOW2 v2/v3.
//!
//! Every field is range-checked before it sizes an allocation or a read: the limits below are
//! QEMU's own implementation limits, so any image QEMU can write passes.

use rbdm_registry::Stream;

use crate::error::{corrupt, QcowError, Result};

pub(crate) const MAGIC: [u8; 4] = *b"QFI\xfb";
/// QEMU refuses L1 tables over 32 MiB; so do we (a 1 TiB image at 512-byte clusters).
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// Host offsets are 56 bits wide; no virtual size beyond that can be populated.
pub(crate) const MAX_SIZE: u64 = 1 << 56;
const MAX_SNAPSHOTS: u32 = 65536;
const MAX_SNAPSHOT_EXTRA: u32 = 1024;
const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
const MAX_NAME_BYTES: u32 = 1023;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = 0x1f;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_DATA_FILE: u32 = 0x4441_5441;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (zlib window bits -12): QCOW v1 and the QCOW2 default.
    Deflate,
    /// QCOW2 v3 compression type 1.
    Zstd,
}

/// How guest offsets map through the tables.
#[derive(Clone, Debug)]
pub(crate) struct Geometry {
    pub version: u32,
    pub cluster_bits: u32,
    /// log2 of the entries in one L2 table.
    pub l2_bits: u32,
    pub extended_l2: bool,
    pub compression: Compression,
}

impl Geometry {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Guest bytes one L1 entry covers, as a shift.
    pub fn l1_shift(&self) -> u32 {
        self.cluster_bits + self.l2_bits
    }
    /// 64-bit words per L2 entry.
    pub fn l2_words(&self) -> usize {
        if self.extended_l2 {
            2
        } else {
            1
        }
    }
    pub fn l2_table_bytes(&self) -> u64 {
        (8 * self.l2_words() as u64) << self.l2_bits
    }
    /// L1 entries needed to map `size` guest bytes.
    pub fn l1_entries_for(&self, size: u64) -> u64 {
        let shift = self.l1_shift();
        (size >> shift) + u64::from(size & ((1u64 << shift) - 1) != 0)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct L1Location {
    pub offset: u64,
    pub entries: u32,
}

impl L1Location {
    pub fn bytes(&self) -> u64 {
        u64::from(self.entries) * 8
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub disk_size: u64,
    pub l1: L1Location,
}

#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub geometry: Geometry,
    pub size: u64,
    pub l1: L1Location,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub snapshots: Vec<SnapshotInfo>,
    pub dirty: bool,
}

fn be16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_be_bytes(a)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

/// Reads `len` bytes at `offset`, refusing (as corrupt) a range beyond the end of the file.
/// Callers bound `len` before calling.
pub(crate) fn read_bytes(
    stream: &dyn Stream,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>> {
    check_in_file(stream, offset, len, what)?;
    let mut buf = vec![0u8; len as usize];
    stream.read_at(offset, &mut buf)?;
    Ok(buf)
}

pub(crate) fn check_in_file(stream: &dyn Stream, offset: u64, len: u64, what: &str) -> Result<()> {
    let size = stream.size();
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => corrupt(format!(
            "{what} at offset {offset} ({len} bytes) extends beyond the end of the file ({size} bytes)"
        )),
    }
}

/// The first bytes of the file, extended on demand up to a bound (the first cluster).
struct HeadBuf<'a> {
    stream: &'a dyn Stream,
    bytes: Vec<u8>,
    limit: u64,
}

impl<'a> HeadBuf<'a> {
    fn new(stream: &'a dyn Stream) -> Result<Self> {
        let limit = stream.size();
        let mut head = HeadBuf {
            stream,
            bytes: Vec::new(),
            limit,
        };
        head.ensure(4096.min(limit), "header")?;
        Ok(head)
    }

    /// Makes sure the first `end` bytes are loaded; `end` beyond the file is corrupt.
    fn ensure(&mut self, end: u64, what: &str) -> Result<()> {
        if end <= self.bytes.len() as u64 {
            return Ok(());
        }
        if end > self.limit {
            return corrupt(format!(
                "{what}: needs the first {end} bytes of the file, which is only {} bytes (truncated?)",
                self.limit
            ));
        }
        // Round up so a run of small extensions costs one read, not one each.
        let want = end.div_ceil(4096).saturating_mul(4096).min(self.limit);
        let start = self.bytes.len() as u64;
        let more = read_bytes(self.stream, start, want - start, what)?;
        self.bytes.extend_from_slice(&more);
        Ok(())
    }
}

pub(crate) fn parse(stream: &dyn Stream) -> Result<Header> {
    let file_size = stream.size();
    if file_size < 8 {
        return corrupt(format!(
            "not a qcow image: the file is {file_size} bytes, too short for a header"
        ));
    }
    let head = HeadBuf::new(stream)?;
    if head.bytes[0..4] != MAGIC {
        return corrupt(format!(
            "not a qcow image: bad magic {:02x?} at offset 0 (expected 51 46 49 fb, \"QFI\\xfb\")",
            &head.bytes[0..4]
        ));
    }
    match be32(&head.bytes, 4) {
        1 => parse_v1(stream, head),
        2 | 3 => parse_v2(stream, head),
        v => Err(QcowError::Unsupported(format!(
            "qcow version {v} (field at offset 4) is not supported; versions 1, 2 and 3 are"
        ))),
    }
}

fn parse_v1(stream: &dyn Stream, mut head: HeadBuf<'_>) -> Result<Header> {
    head.ensure(48, "qcow v1 header (48 bytes)")?;
    let b = &head.bytes;
    let backing_offset = be64(b, 8);
    let backing_len = be32(b, 16);
    let size = be64(b, 24);
    let cluster_bits = u32::from(b[32]);
    let l2_bits = u32::from(b[33]);
    let crypt = be32(b, 36);
    let l1_offset = be64(b, 40);

    check_size(size)?;
    if !(9..=16).contains(&cluster_bits) {
        return corrupt(format!(
            "cluster_bits {cluster_bits} (field at offset 32) is out of range 9..16"
        ));
    }
    if !(6..=13).contains(&l2_bits) {
        return corrupt(format!(
            "l2_bits {l2_bits} (field at offset 33) is out of range 6..13"
        ));
    }
    if crypt != 0 {
        return Err(QcowError::Unsupported(format!(
            "encrypted qcow images ({}, crypt_method {crypt} at offset 36) are not supported",
            crypt_name(crypt)
        )));
    }
    let geometry = Geometry {
        version: 1,
        cluster_bits,
        l2_bits,
        extended_l2: false,
        compression: Compression::Deflate,
    };
    let entries = l1_entries_checked(&geometry, size, "virtual size (field at offset 24)")?;
    let l1 = L1Location {
        offset: l1_offset,
        entries,
    };
    check_l1(stream, &geometry, l1, "L1 table (offset field at 40)")?;
    let backing_file = read_backing_name(stream, backing_offset, backing_len)?;
    Ok(Header {
        geometry,
        size,
        l1,
        backing_file,
        backing_format: None,
        snapshots: Vec::new(),
        dirty: false,
    })
}

fn parse_v2(stream: &dyn Stream, mut head: HeadBuf<'_>) -> Result<Header> {
    let version = be32(&head.bytes, 4);
    let fixed = if version == 2 { 72 } else { 104 };
    head.ensure(fixed, &format!("qcow2 v{version} header ({fixed} bytes)"))?;
    let b = &head.bytes;
    let backing_offset = be64(b, 8);
    let backing_len = be32(b, 16);
    let cluster_bits = be32(b, 20);
    let size = be64(b, 24);
    let crypt = be32(b, 32);
    let l1_entries = be32(b, 36);
    let l1_offset = be64(b, 40);
    let nb_snapshots = be32(b, 60);
    let snapshots_offset = be64(b, 64);
    let (incompatible, header_len) = if version == 2 {
        (0, 72)
    } else {
        (be64(b, 72), be32(b, 100))
    };

    if !(9..=21).contains(&cluster_bits) {
        return corrupt(format!(
            "cluster_bits {cluster_bits} (field at offset 20) is out of range 9..21 (512 B to 2 MiB clusters)"
        ));
    }
    let cluster_size = 1u64 << cluster_bits;
    check_size(size)?;
    if crypt != 0 {
        return Err(QcowError::Unsupported(format!(
            "encrypted qcow2 images ({}, crypt_method {crypt} at offset 32) are not supported",
            crypt_name(crypt)
        )));
    }
    check_refcount_table(be64(b, 48), be32(b, 56), cluster_bits)?;
    if version == 3 {
        let order = be32(b, 96);
        if order > 6 {
            return corrupt(format!(
                "refcount_order {order} (field at offset 96) is over 6 (64-bit refcounts)"
            ));
        }
    }
    if version == 3
        && (header_len < 104 || header_len % 8 != 0 || u64::from(header_len) > cluster_size)
    {
        return corrupt(format!(
            "header_length {header_len} (field at offset 100) must be a multiple of 8 between 104 and the cluster size {cluster_size}"
        ));
    }
    head.ensure(u64::from(header_len), "qcow2 header")?;
    let compression_type = if header_len > 104 { head.bytes[104] } else { 0 };

    // Extensions live between the header and the backing file name (or the end of cluster 0).
    let mut ext_end = cluster_size.min(stream.size());
    if backing_offset != 0 && backing_offset < ext_end {
        ext_end = backing_offset;
    }
    let ext = parse_extensions(&mut head, u64::from(header_len), ext_end)?;

    check_incompatible(incompatible, &ext.feature_names, ext.data_file.as_deref())?;
    let extended_l2 = incompatible & INCOMPAT_EXTENDED_L2 != 0;
    if extended_l2 && cluster_bits < 14 {
        return corrupt(format!(
            "extended L2 entries need clusters of at least 16 KiB, cluster_bits is {cluster_bits} (offset 20)"
        ));
    }
    let compression = compression_of(incompatible, header_len, compression_type)?;

    let geometry = Geometry {
        version,
        cluster_bits,
        l2_bits: cluster_bits - 3 - u32::from(extended_l2),
        extended_l2,
        compression,
    };
    let needed = l1_entries_checked(&geometry, size, "virtual size (field at offset 24)")?;
    if u64::from(l1_entries) < u64::from(needed) {
        return corrupt(format!(
            "L1 table has {l1_entries} entries (field at offset 36) but the virtual size {size} needs {needed}"
        ));
    }
    let l1 = L1Location {
        offset: l1_offset,
        entries: l1_entries,
    };
    check_l1(stream, &geometry, l1, "L1 table (offset field at 40)")?;
    let backing_file = read_backing_name(stream, backing_offset, backing_len)?;
    let snapshots = if nb_snapshots == 0 {
        Vec::new()
    } else {
        parse_snapshots(stream, &geometry, snapshots_offset, nb_snapshots, size)?
    };
    Ok(Header {
        geometry,
        size,
        l1,
        backing_file,
        backing_format: ext.backing_format,
        snapshots,
        dirty: incompatible & INCOMPAT_DIRTY != 0,
    })
}

fn crypt_name(method: u32) -> &'static str {
    match method {
        1 => "AES",
        2 => "LUKS",
        _ => "unknown method",
    }
}

/// Refcounts are never read, but QEMU refuses an image whose refcount table is misplaced or
/// beyond its 8 MiB limit, and so do we: such a header is not one QEMU wrote.
fn check_refcount_table(offset: u64, clusters: u32, cluster_bits: u32) -> Result<()> {
    let max_clusters = (8u64 << 20) >> cluster_bits;
    if u64::from(clusters) > max_clusters {
        return corrupt(format!(
            "refcount_table_clusters {clusters} (field at offset 56) is over the 8 MiB limit ({max_clusters} clusters)"
        ));
    }
    let bytes = u64::from(clusters) << cluster_bits;
    if offset & ((1u64 << cluster_bits) - 1) != 0
        || offset
            .checked_add(bytes)
            .is_none_or(|e| e > i64::MAX as u64)
    {
        return corrupt(format!(
            "refcount_table_offset {offset:#x} (field at offset 48) is not cluster aligned or overflows"
        ));
    }
    Ok(())
}

fn check_size(size: u64) -> Result<()> {
    if size > MAX_SIZE {
        return corrupt(format!(
            "virtual size {size} (field at offset 24) is absurd: over 2^56 bytes"
        ));
    }
    Ok(())
}

/// L1 entries the virtual size needs, refusing sizes whose L1 would pass QEMU's 32 MiB limit
/// (which also bounds how far any walk over an image can go).
fn l1_entries_checked(g: &Geometry, size: u64, what: &str) -> Result<u32> {
    let needed = g.l1_entries_for(size);
    if needed * 8 > MAX_L1_BYTES {
        return corrupt(format!(
            "{what} {size} is absurd for {} byte clusters: it needs an L1 table of {needed} entries, over the 32 MiB limit",
            g.cluster_size()
        ));
    }
    Ok(needed as u32)
}

pub(crate) fn check_l1(
    stream: &dyn Stream,
    g: &Geometry,
    l1: L1Location,
    what: &str,
) -> Result<()> {
    if l1.bytes() > MAX_L1_BYTES {
        return corrupt(format!(
            "{what}: {} entries is over the 32 MiB limit",
            l1.entries
        ));
    }
    if g.version >= 2 && l1.offset & (g.cluster_size() - 1) != 0 {
        return corrupt(format!(
            "{what}: offset {} is not cluster aligned",
            l1.offset
        ));
    }
    if l1.entries == 0 {
        return Ok(());
    }
    check_in_file(stream, l1.offset, l1.bytes(), what)
}

fn read_backing_name(stream: &dyn Stream, offset: u64, len: u32) -> Result<Option<String>> {
    if offset == 0 || len == 0 {
        return Ok(None);
    }
    if len > MAX_NAME_BYTES {
        return corrupt(format!(
            "backing file name length {len} (field at offset 16) is over the 1023 byte limit"
        ));
    }
    let raw = read_bytes(stream, offset, u64::from(len), "backing file name")?;
    match String::from_utf8(raw) {
        Ok(name) => Ok(Some(name)),
        Err(_) => corrupt(format!("backing file name at offset {offset} is not UTF-8")),
    }
}

#[derive(Default)]
struct Extensions {
    backing_format: Option<String>,
    data_file: Option<String>,
    /// (type, bit, name) from the feature name table, for messages about unknown bits.
    feature_names: Vec<(u8, u8, String)>,
}

fn parse_extensions(head: &mut HeadBuf<'_>, start: u64, end: u64) -> Result<Extensions> {
    let mut ext = Extensions::default();
    let mut pos = start;
    while pos < end {
        if end - pos < 8 {
            return corrupt(format!(
                "header extension at offset {pos} does not fit before offset {end}"
            ));
        }
        head.ensure(pos + 8, "header extension")?;
        let kind = be32(&head.bytes, pos as usize);
        let len = u64::from(be32(&head.bytes, pos as usize + 4));
        if kind == EXT_END {
            break;
        }
        let data_start = pos + 8;
        if len > end - data_start {
            return corrupt(format!(
                "header extension {kind:#010x} at offset {pos} claims {len} bytes, past the end of the header area at {end}"
            ));
        }
        head.ensure(data_start + len, "header extension")?;
        let data = &head.bytes[data_start as usize..(data_start + len) as usize];
        match kind {
            EXT_BACKING_FORMAT => {
                ext.backing_format = Some(ext_string(data, pos, "backing format")?)
            }
            EXT_DATA_FILE => {
                ext.data_file = Some(ext_string(data, pos, "external data file name")?)
            }
            EXT_FEATURE_TABLE => ext.feature_names = feature_table(data),
            _ => {}
        }
        pos = data_start + len.div_ceil(8) * 8;
    }
    Ok(ext)
}

fn ext_string(data: &[u8], pos: u64, what: &str) -> Result<String> {
    match std::str::from_utf8(data) {
        Ok(s) => Ok(s.to_string()),
        Err(_) => corrupt(format!(
            "{what} header extension at offset {pos} is not UTF-8"
        )),
    }
}

fn feature_table(data: &[u8]) -> Vec<(u8, u8, String)> {
    data.chunks_exact(48)
        .map(|e| {
            let name = &e[2..];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            (e[0], e[1], String::from_utf8_lossy(name).into_owned())
        })
        .collect()
}

fn feature_name(names: &[(u8, u8, String)], bit: u32) -> String {
    names
        .iter()
        .find(|(kind, b, _)| *kind == 0 && u32::from(*b) == bit)
        .map(|(_, _, n)| format!(" \"{n}\""))
        .unwrap_or_default()
}

fn check_incompatible(
    bits: u64,
    names: &[(u8, u8, String)],
    data_file: Option<&str>,
) -> Result<()> {
    if bits & INCOMPAT_CORRUPT != 0 {
        return corrupt(
            "the image is marked corrupt (incompatible feature bit 1, field at offset 72); repair it with `qemu-img check -r all` first",
        );
    }
    if bits & INCOMPAT_DATA_FILE != 0 {
        let name = data_file.map(|n| format!(" ({n:?})")).unwrap_or_default();
        return Err(QcowError::Unsupported(format!(
            "qcow2 images with an external data file{name} (incompatible feature bit 2) are not supported"
        )));
    }
    let unknown = bits & !INCOMPAT_KNOWN;
    if unknown != 0 {
        let bit = unknown.trailing_zeros();
        return Err(QcowError::Unsupported(format!(
            "unknown qcow2 incompatible feature bit {bit}{} (field at offset 72) is set; refusing to read",
            feature_name(names, bit)
        )));
    }
    Ok(())
}

fn compression_of(incompatible: u64, header_len: u32, kind: u8) -> Result<Compression> {
    let flagged = incompatible & INCOMPAT_COMPRESSION != 0;
    match (kind, flagged) {
        (0, false) => Ok(Compression::Deflate),
        (0, true) => corrupt(format!(
            "incompatible feature bit 3 (compression type) is set but compression_type at offset 104 is zlib or absent (header_length {header_len})"
        )),
        (_, false) => corrupt(format!(
            "compression_type {kind} at offset 104 needs incompatible feature bit 3, which is not set"
        )),
        (1, true) => Ok(Compression::Zstd),
        (k, true) => Err(QcowError::Unsupported(format!(
            "qcow2 compression type {k} (offset 104) is not supported; zlib (0) and zstd (1) are"
        ))),
    }
}

/// Sequential reads through a table in bounded chunks: one stream request per 64 KiB, not one
/// per field, matters over HTTP.
struct SeqReader<'a> {
    stream: &'a dyn Stream,
    start: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_at: u64,
}

impl<'a> SeqReader<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        if self.pos + n - self.start > MAX_SNAPSHOT_TABLE_BYTES {
            return corrupt(format!(
                "{}: the snapshot table is over the 64 MiB limit",
                what()
            ));
        }
        let end = self.pos + n;
        let have_end = self.buf_at + self.buf.len() as u64;
        if self.pos < self.buf_at || end > have_end {
            let want = n
                .max(64 << 10)
                .min(self.stream.size().saturating_sub(self.pos))
                .max(n);
            self.buf = read_bytes(self.stream, self.pos, want, &what())?;
            self.buf_at = self.pos;
        }
        let from = (self.pos - self.buf_at) as usize;
        let out = self.buf[from..from + n as usize].to_vec();
        self.pos = end;
        Ok(out)
    }
}

fn parse_snapshots(
    stream: &dyn Stream,
    g: &Geometry,
    offset: u64,
    count: u32,
    head_size: u64,
) -> Result<Vec<SnapshotInfo>> {
    if count > MAX_SNAPSHOTS {
        return corrupt(format!(
            "nb_snapshots {count} (field at offset 60) is over the limit of {MAX_SNAPSHOTS}"
        ));
    }
    if offset & (g.cluster_size() - 1) != 0 {
        return corrupt(format!(
            "snapshot table offset {offset} (field at offset 64) is not cluster aligned"
        ));
    }
    let mut reader = SeqReader {
        stream,
        start: offset,
        pos: offset,
        buf: Vec::new(),
        buf_at: offset,
    };
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    for i in 0..count {
        let at = reader.pos;
        let what = || format!("snapshot table entry {i} at offset {at}");
        let fixed = reader.take(40, &what)?;
        let l1_offset = be64(&fixed, 0);
        let l1_entries = be32(&fixed, 8);
        let id_len = be16(&fixed, 12);
        let name_len = be16(&fixed, 14);
        let date_sec = be32(&fixed, 16);
        let extra_len = be32(&fixed, 36);
        if extra_len > MAX_SNAPSHOT_EXTRA {
            return corrupt(format!(
                "{}: extra data size {extra_len} is over the 1024 byte limit",
                what()
            ));
        }
        let extra = reader.take(u64::from(extra_len), &what)?;
        let id = reader.take(u64::from(id_len), &what)?;
        let name = reader.take(u64::from(name_len), &what)?;
        let used = reader.pos - offset;
        reader.pos += used.div_ceil(8) * 8 - used;
        let disk_size = if extra.len() >= 16 {
            be64(&extra, 8)
        } else {
            head_size
        };
        if disk_size > MAX_SIZE {
            return corrupt(format!(
                "{}: disk size {disk_size} is absurd: over 2^56 bytes",
                what()
            ));
        }
        l1_entries_checked(g, disk_size, &format!("{}: disk size", what()))?;
        let l1 = L1Location {
            offset: l1_offset,
            entries: l1_entries,
        };
        check_l1(stream, g, l1, &format!("{}: L1 table", what()))?;
        out.push(SnapshotInfo {
            id: String::from_utf8_lossy(&id).into_owned(),
            name: String::from_utf8_lossy(&name).into_owned(),
            date_sec,
            disk_size,
            l1,
        });
    }
    Ok(out)
}
