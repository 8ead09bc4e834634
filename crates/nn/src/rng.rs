//! Seeded random numbers that are pure functions of their inputs (splitmix64), so that the
//! same seed gives the same masks on any thread count, in any order, on resume.

/// splitmix64's finaliser: a well-mixed 64-bit value from any 64-bit input.
#[allow(clippy::inline_always)] // inlined into the kernels' vector code (`kernels::simd`)
#[inline(always)]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) from a mixed value (its top 53 bits).
#[allow(clippy::inline_always)] // inlined into the kernels' vector code (`kernels::simd`)
#[inline(always)]
pub fn unit(r: u64) -> f64 {
    (r >> 11) as f64 / (1u64 << 53) as f64
}
