//! crc32c of 4 KiB blocks, several blocks at once. Fastest first, as the CPU allows:
//!
//! - AVX-512 with VPCLMULQDQ: each block folded with carry-less multiplies, 64 bytes a lane
//!   group (see `fold`), about twice the speed of the crc instruction;
//! - SSE 4.2: each block is its own crc chain, so running four chains side by side keeps the
//!   CPU's crc unit busy (one instruction's latency is three cycles, its throughput one a
//!   cycle) without the shift-and-combine steps a single long buffer needs;
//! - else the `crc32c` crate, a block at a time.
//!
//! A read checks every byte it returns, so this is most of what checksums cost a read.

use super::sums::BLOCK;

/// The crc of each whole 4 KiB block of `data` (a multiple of 4 KiB), appended to `out`.
pub(super) fn block_crcs(data: &[u8], out: &mut Vec<u32>) {
    debug_assert_eq!(data.len() % BLOCK as usize, 0);
    #[cfg(target_arch = "x86_64")]
    if fold::available() {
        // SAFETY: the CPU has the features `fold` needs, checked just above.
        unsafe { fold::block_crcs(data, out) };
        return;
    }
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

/// Folding (Intel's "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ"), in the
/// bit-reflected form crc32c uses. A block is read as four 64-byte accumulators; each step
/// replaces an accumulator `A` by `A·x^2048 mod P` (two carry-less multiplies per 128-bit
/// lane, by constants of 33 bits) plus the next 64 bytes, which keeps its crc. The four
/// accumulators are then folded into one, whose 64 bytes eight crc instructions finish.
#[cfg(target_arch = "x86_64")]
mod fold {
    use std::arch::x86_64::{
        __m512i, _mm512_clmulepi64_epi128, _mm512_loadu_si512, _mm512_set_epi64,
        _mm512_storeu_si512, _mm512_ternarylogic_epi64, _mm512_xor_si512, _mm_crc32_u64,
    };

    const BLOCK: usize = super::BLOCK as usize;
    /// Bytes of one accumulator.
    const LANES: usize = 64;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.2")
    }

    /// `x^n mod P` for crc32c's polynomial, not reflected.
    const fn x_pow_mod(n: u32) -> u32 {
        let mut r: u32 = 1;
        let mut i = 0;
        while i < n {
            let carry = r & 0x8000_0000 != 0;
            r <<= 1;
            if carry {
                r ^= 0x1EDC_6F41;
            }
            i += 1;
        }
        r
    }

    /// The multipliers that move a 128-bit lane `bits` further along the message: the lane's
    /// first (low) half by `x^(bits+32)`, its second by `x^(bits-32)`, reflected into 33 bits.
    const fn by(bits: u32) -> (i64, i64) {
        (reflected(bits + 32), reflected(bits - 32))
    }

    const fn reflected(n: u32) -> i64 {
        ((x_pow_mod(n).reverse_bits() as u64) << 1) as i64
    }

    /// Across the four accumulators, and from each of the first three to the last.
    const STEP: (i64, i64) = by(4 * LANES as u32 * 8);
    const BY: [(i64, i64); 3] = [
        by(3 * LANES as u32 * 8),
        by(2 * LANES as u32 * 8),
        by(LANES as u32 * 8),
    ];

    /// `x` moved along by the multipliers `k`, plus `next`.
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    fn fold(x: __m512i, k: (i64, i64), next: __m512i) -> __m512i {
        let k = _mm512_set_epi64(k.1, k.0, k.1, k.0, k.1, k.0, k.1, k.0);
        let lo = _mm512_clmulepi64_epi128(x, k, 0x00);
        let hi = _mm512_clmulepi64_epi128(x, k, 0x11);
        _mm512_ternarylogic_epi64(lo, hi, next, 0x96)
    }

    #[target_feature(enable = "avx512f,vpclmulqdq,sse4.2")]
    fn block_crc(block: &[u8; BLOCK]) -> u32 {
        // SAFETY: `i * LANES + LANES <= BLOCK` at every call below, so the 64 bytes read are
        // inside `block`; the load is unaligned.
        let load = |i: usize| unsafe { _mm512_loadu_si512(block.as_ptr().add(i * LANES).cast()) };
        // crc32c starts from all ones: the same as inverting the message's first 32 bits.
        let init = _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, 0xFFFF_FFFF);
        let mut acc = [_mm512_xor_si512(load(0), init), load(1), load(2), load(3)];
        for step in (4..BLOCK / LANES).step_by(4) {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = fold(*a, STEP, load(step + j));
            }
        }
        let z = fold(acc[0], BY[0], acc[3]);
        let z = fold(acc[1], BY[1], z);
        let z = fold(acc[2], BY[2], z);
        let mut words = [0u64; LANES / 8];
        // SAFETY: `words` is 64 bytes, what the store writes; unaligned store.
        unsafe { _mm512_storeu_si512(words.as_mut_ptr().cast(), z) };
        !(words.iter().fold(0, |crc, w| _mm_crc32_u64(crc, *w)) as u32)
    }

    /// # Safety
    /// The CPU must have what `available` checks.
    #[target_feature(enable = "avx512f,vpclmulqdq,sse4.2")]
    pub(super) unsafe fn block_crcs(data: &[u8], out: &mut Vec<u32>) {
        out.extend(
            data.chunks_exact(BLOCK)
                .filter_map(|b| b.try_into().ok())
                .map(|b| block_crc(b)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 7 blocks of varied bytes: 4 ways and a remainder of 3, so every path runs.
    fn sample() -> (Vec<u8>, Vec<u32>) {
        let data: Vec<u8> = (0..7 * BLOCK as usize)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let want = data
            .chunks_exact(BLOCK as usize)
            .map(crc32c::crc32c)
            .collect();
        (data, want)
    }

    #[test]
    fn block_crcs_equal_the_crate_one_block_at_a_time() {
        let (data, want) = sample();
        let mut got = Vec::new();
        block_crcs(&data, &mut got);
        assert_eq!(got, want);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_x86_kernel_equals_the_crate() {
        let (mut data, mut want) = sample();
        // All ones and all zeros too: the initial inversion and the constants both show.
        data.extend([0xff; BLOCK as usize].iter().chain(&[0; BLOCK as usize]));
        want.extend([crc32c::crc32c(&[0xff; 4096]), crc32c::crc32c(&[0; 4096])]);
        if std::arch::is_x86_feature_detected!("sse4.2") {
            let mut got = Vec::new();
            // SAFETY: the CPU has SSE 4.2, checked just above.
            unsafe { x86::block_crcs(&data, &mut got) };
            assert_eq!(got, want, "sse4.2");
        }
        if fold::available() {
            let mut got = Vec::new();
            // SAFETY: the CPU has what `fold` needs, checked just above.
            unsafe { fold::block_crcs(&data, &mut got) };
            assert_eq!(got, want, "avx512 vpclmulqdq");
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_in_a_block_changes_its_crc() {
        let (data, want) = sample();
        // The first word (where the initial inversion goes), the edges of the 64-byte
        // accumulators and of a folding step, the last bytes: each part of `fold` is hit.
        for at in [0, 3, 17, 63, 64, 255, 256, 1000, 3839, 3840, 4032, 4095] {
            let mut damaged = data[..BLOCK as usize].to_vec();
            damaged[at] ^= 0x10;
            let mut got = Vec::new();
            block_crcs(&damaged, &mut got);
            assert_eq!(got, [crc32c::crc32c(&damaged)], "byte {at}");
            assert_ne!(got[0], want[0], "byte {at}");
        }
    }
}
