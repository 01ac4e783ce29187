//! crc32c of 4 KiB blocks, several blocks at once: each block is its own crc chain, so
//! running four chains side by side keeps the CPU's crc unit busy (one instruction's latency
//! is three cycles, its throughput one a cycle) without the shift-and-combine steps a single
//! long buffer needs. Falls back to the `crc32c` crate where SSE 4.2 is missing.

use super::sums::BLOCK;

/// The crc of each whole 4 KiB block of `data` (a multiple of 4 KiB), appended to `out`.
pub(super) fn block_crcs(data: &[u8], out: &mut Vec<u32>) {
    debug_assert_eq!(data.len() % BLOCK as usize, 0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2, checked just above.
        unsafe { x86::block_crcs(data, out) };
        return;
    }
    out.extend(data.chunks_exact(BLOCK as usize).map(crc32c::crc32c));
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::_mm_crc32_u64;

    const BLOCK: usize = super::BLOCK as usize;
    const WAYS: usize = 4;

    /// # Safety
    /// The CPU must have SSE 4.2.
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn block_crcs(data: &[u8], out: &mut Vec<u32>) {
        let mut groups = data.chunks_exact(BLOCK * WAYS);
        for group in &mut groups {
            let mut crc = [u64::from(u32::MAX); WAYS];
            let words = |w: usize| {
                group[w * BLOCK..(w + 1) * BLOCK]
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            };
            for (((a, b), c), d) in words(0).zip(words(1)).zip(words(2)).zip(words(3)) {
                crc[0] = _mm_crc32_u64(crc[0], a);
                crc[1] = _mm_crc32_u64(crc[1], b);
                crc[2] = _mm_crc32_u64(crc[2], c);
                crc[3] = _mm_crc32_u64(crc[3], d);
            }
            out.extend(crc.iter().map(|c| !(*c as u32)));
        }
        out.extend(groups.remainder().chunks_exact(BLOCK).map(crc32c::crc32c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_crcs_equal_the_crate_one_block_at_a_time() {
        // 4 ways and a remainder of 3, so both paths run.
        let data: Vec<u8> = (0..7 * BLOCK as usize)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut got = Vec::new();
        block_crcs(&data, &mut got);
        let want: Vec<u32> = data
            .chunks_exact(BLOCK as usize)
            .map(crc32c::crc32c)
            .collect();
        assert_eq!(got, want);
    }
}
