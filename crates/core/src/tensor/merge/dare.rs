//! `dare_linear` and `dare_ties`: DARE's random drop and rescale.
//!
//! Paper: Yu et al. 2024, "Language models are Super Mario: absorbing abilities from
//! homologous models as a free lunch" (ICML).
//!
//! Numeric variant: each entry of τᵢ is kept with probability `density` and, with `rescale`,
//! either divided by `density` (`rescale_norm = "density"`, the paper's rule and crossmerge's
//! default) or scaled by `Σ|τᵢ| / Σ|kept τᵢ|` over the whole tensor so its L1 norm is kept
//! (`rescale_norm = "l1"`, mergekit 0.1.5's `rescaled_masked_tensor`, left unscaled when
//! either sum is below 1e-7; imported mergekit YAML uses it). The two agree in expectation, not
//! per tensor; the L1 sums take one more streaming pass over a tensor too large for one
//! window. Dropped entries become 0. Then
//! `dare_linear` sums the weighted vectors (task arithmetic) and `dare_ties` applies TIES's
//! sign election and disjoint merge to them (no magnitude trim). mergekit draws its mask with
//! `torch.bernoulli` on the device's generator, so its bits differ from ours for the same
//! seed; the distribution is the same.
//!
//! Determinism: the draw for entry e of input i of tensor t is a pure function of
//! (`seed`, stream, e) — splitmix64 of the three, compared with `density` as a 53-bit
//! uniform — where the stream mixes a hash of the tensor name with the input's index. The
//! same seed gives the same bits on any thread count and any window size; another seed gives
//! other bits.

/// DARE with the paper's rescale: [`dare_at`] from element 0.
pub fn dare(values: &[f32], density: f32, seed: u64, stream: u64, out: &mut [f32]) {
    dare_at(values, density, true, seed, stream, 0, out);
}

/// DARE on a window of a tensor whose first element has index `first`: keeps each element
/// with probability `density` (rescaled by `1/density` when `rescale`), writes into `out`.
/// `density` 0 drops everything; 1 keeps everything unchanged.
pub fn dare_at(
    values: &[f32],
    density: f32,
    rescale: bool,
    seed: u64,
    stream: u64,
    first: u64,
    out: &mut [f32],
) {
    out[..values.len()].copy_from_slice(values);
    dare_in_place(
        density,
        rescale,
        seed,
        stream,
        first,
        &mut out[..values.len()],
    );
}

/// [`dare_at`] in place.
pub fn dare_in_place(
    density: f32,
    rescale: bool,
    seed: u64,
    stream: u64,
    first: u64,
    values: &mut [f32],
) {
    let d = f64::from(density.clamp(0.0, 1.0));
    let scale = if rescale && d > 0.0 { 1.0 / d } else { 1.0 };
    for (e, v) in values.iter_mut().enumerate() {
        let keep = d > 0.0 && uniform(seed, stream, first + e as u64) < d;
        *v = if keep {
            (f64::from(*v) * scale) as f32
        } else {
            0.0
        };
    }
}

/// For mergekit's L1 rescale: `(Σ|v|, Σ|v| over the entries DARE keeps)` of a window whose
/// first element has index `first` (the same draws as [`dare_in_place`]).
pub fn dare_l1_sums(
    density: f32,
    seed: u64,
    stream: u64,
    first: u64,
    values: &[f32],
) -> (f64, f64) {
    let d = f64::from(density.clamp(0.0, 1.0));
    let mut before = 0.0;
    let mut after = 0.0;
    for (e, v) in values.iter().enumerate() {
        let a = f64::from(v.abs());
        before += a;
        if d > 0.0 && uniform(seed, stream, first + e as u64) < d {
            after += a;
        }
    }
    (before, after)
}

/// mergekit's factor: `before / after`, or 1 when either is below 1e-7 (it then leaves the
/// masked tensor as it is).
pub fn l1_factor(before: f64, after: f64) -> f64 {
    if before < 1e-7 || after < 1e-7 {
        1.0
    } else {
        before / after
    }
}

/// The stream of input `index` of tensor `name`: FNV-1a of the name, mixed with the index.
pub fn stream_of(name: &str, index: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (index as u64).wrapping_mul(0xA076_1D64_78BD_642F)
}

fn uniform(seed: u64, stream: u64, index: u64) -> f64 {
    let mut z = seed
        ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
