//! Decompression of one compressed cluster: the output is exactly one cluster, or an error.
//! Input is bounded by the descriptor (at most two clusters), output by the cluster size.

use std::io::Read;

use crate::error::{corrupt, Result};
use crate::header::Compression;

const ZSTD_MAGIC: u32 = 0xfd2f_b528;
/// A zstd frame decoding at most one 2 MiB cluster never needs a larger window; refusing
/// bigger declared windows keeps a forged frame from sizing a large buffer.
const ZSTD_MAX_WINDOW: u64 = 32 << 20;

pub(crate) fn decompress(
    kind: Compression,
    input: &[u8],
    out: &mut [u8],
    what: &dyn Fn() -> String,
) -> Result<()> {
    match kind {
        Compression::Deflate => inflate(input, out, what),
        Compression::Zstd => unzstd(input, out, what),
    }
}

fn inflate(input: &[u8], out: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
    let mut d = flate2::Decompress::new(false);
    match d.decompress(input, out, flate2::FlushDecompress::Finish) {
        Ok(_) if d.total_out() == out.len() as u64 => Ok(()),
        Ok(_) => corrupt(format!(
            "{}: deflate data ends after {} bytes, a cluster is {}",
            what(),
            d.total_out(),
            out.len()
        )),
        Err(e) => corrupt(format!("{}: bad deflate data: {e}", what())),
    }
}

/// QEMU stops reading a zstd stream once the cluster is full; several frames may precede
/// that point and garbage (the next cluster's data) may follow it.
fn unzstd(mut input: &[u8], out: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
    let mut filled = 0;
    while filled < out.len() {
        if input.len() < 4 {
            return corrupt(format!(
                "{}: zstd data ends after {filled} bytes, a cluster is {}",
                what(),
                out.len()
            ));
        }
        check_zstd_frame(input, what)?;
        let before = input.len();
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            zstd_frame(&mut input, &mut out[filled..])
        }));
        match got {
            Ok(Ok(n)) => filled += n,
            Ok(Err(e)) => return corrupt(format!("{}: bad zstd data: {e}", what())),
            Err(_) => return corrupt(format!("{}: bad zstd data (decoder failed)", what())),
        }
        if input.len() == before {
            return corrupt(format!("{}: zstd frame consumed no input", what()));
        }
    }
    Ok(())
}

/// Decodes one frame into `out` (stopping when `out` is full); advances `input` past it.
fn zstd_frame(input: &mut &[u8], out: &mut [u8]) -> std::io::Result<usize> {
    let mut dec =
        ruzstd::decoding::StreamingDecoder::new(&mut *input).map_err(std::io::Error::other)?;
    let mut filled = 0;
    while filled < out.len() {
        let n = dec.read(&mut out[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Checks the frame header's magic and declared window before the decoder sizes buffers by it.
fn check_zstd_frame(input: &[u8], what: &dyn Fn() -> String) -> Result<()> {
    let magic = u32::from_le_bytes([input[0], input[1], input[2], input[3]]);
    if magic != ZSTD_MAGIC {
        return corrupt(format!(
            "{}: not a zstd frame (magic {magic:#010x})",
            what()
        ));
    }
    let Some(&descriptor) = input.get(4) else {
        return corrupt(format!("{}: truncated zstd frame header", what()));
    };
    let single_segment = descriptor & 0x20 != 0;
    let window = if single_segment {
        // The window is the content size, whose field follows the dictionary id.
        let fcs_len = match descriptor >> 6 {
            0 => 1,
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let dict_len = match descriptor & 3 {
            0 => 0,
            1 => 1,
            2 => 2,
            _ => 4,
        };
        let at = 5 + dict_len;
        let Some(field) = input.get(at..at + fcs_len) else {
            return corrupt(format!("{}: truncated zstd frame header", what()));
        };
        let mut le = [0u8; 8];
        le[..fcs_len].copy_from_slice(field);
        let v = u64::from_le_bytes(le);
        if fcs_len == 2 {
            v + 256
        } else {
            v
        }
    } else {
        let Some(&wd) = input.get(5) else {
            return corrupt(format!("{}: truncated zstd frame header", what()));
        };
        let log = 10 + u64::from(wd >> 3);
        let base = 1u64 << log;
        base + (base / 8) * u64::from(wd & 7)
    };
    if window > ZSTD_MAX_WINDOW {
        return corrupt(format!(
            "{}: zstd frame declares a {window} byte window, over the limit",
            what()
        ));
    }
    Ok(())
}
