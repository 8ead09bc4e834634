//! Small matrix products on strided views of slices, for the kernels that work on one sequence
//! and one head at a time (self-attention's `t × d` and `t × t` blocks): gemm's f32 kernels,
//! the ones candle's CPU matrix products run on, called directly and single-threaded (the
//! callers already spread sequences over rayon's threads). Through candle each of these would
//! be a tensor, a graph node and a thread dispatch; written by hand as row updates (as they were)
//! they ran at a small fraction of the CPU's speed (no register blocking, scalar tails).
//!
//! gemm takes raw pointers; [`product`] checks every view against its slice first, so it is
//! safe to call. gemm's result for a given shape, strides and CPU does not depend on anything
//! else (no threads here), so the kernels stay deterministic.

/// A `rows × cols` matrix inside a slice: element `(i, j)` at `offset + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub rows: usize,
    pub cols: usize,
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    /// Rows of `cols` contiguous values, `rs` apart, from `offset`.
    pub(crate) fn rows(rows: usize, cols: usize, offset: usize, rs: usize) -> Self {
        Self {
            rows,
            cols,
            offset,
            rs,
            cs: 1,
        }
    }

    /// The same values transposed.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            offset: self.offset,
        }
    }

    /// Whether every element lies inside a slice of `len` values.
    fn fits(&self, len: usize) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return self.offset <= len;
        }
        let last = (self.rows - 1)
            .checked_mul(self.rs)
            .and_then(|r| {
                (self.cols - 1)
                    .checked_mul(self.cs)
                    .and_then(|c| r.checked_add(c))
            })
            .and_then(|e| e.checked_add(self.offset));
        last.is_some_and(|e| e < len) && isize::try_from(self.rs.max(self.cs)).is_ok()
    }
}

/// `dst ← scale·lhs·rhs` (`accumulate`: `dst ← dst + scale·lhs·rhs`) on the views `d`, `l`,
/// `r` of the three slices.
///
/// # Panics
/// When the shapes do not chain or a view reaches outside its slice (a bug in the caller).
pub(crate) fn product(
    dst: (&mut [f32], View),
    lhs: (&[f32], View),
    rhs: (&[f32], View),
    scale: f32,
    accumulate: bool,
) {
    product_on(dst, lhs, rhs, scale, accumulate, 1);
}

/// [`product`] on `threads` of rayon's threads (gemm splits the output's blocks among them;
/// each element's sum is the same whatever their number), as candle's matrix products run.
///
/// # Panics
/// As [`product`].
pub(crate) fn product_on(
    (dst, d): (&mut [f32], View),
    lhs: (&[f32], View),
    rhs: (&[f32], View),
    scale: f32,
    accumulate: bool,
    threads: usize,
) {
    check(d, lhs, rhs);
    assert!(d.fits(dst.len()), "matrix view outside its slice");
    // SAFETY: every element of `d` lies inside `dst` (checked above), initialised; `dst` is
    // a unique borrow, so it overlaps neither input, whose views `check` kept inside them.
    #[allow(unsafe_code)]
    unsafe {
        gemm_into(dst.as_mut_ptr(), d, lhs, rhs, scale, accumulate, threads);
    }
}

/// `scale·lhs·rhs` as a new row-major matrix on `threads` of rayon's threads, written by
/// gemm without zeroing it first: a product's output is overwritten anyway, and zeroing the
/// large ones (a layer's rows) cost training a memset per product.
///
/// # Panics
/// As [`product`].
pub(crate) fn product_new(
    lhs: (&[f32], View),
    rhs: (&[f32], View),
    scale: f32,
    threads: usize,
) -> Vec<f32> {
    let d = View::rows(lhs.1.rows, rhs.1.cols, 0, rhs.1.cols);
    check(d, lhs, rhs);
    let len = d.rows * d.cols;
    let mut out = Vec::with_capacity(len);
    // SAFETY: `out` has room for the `len` elements of `d`; gemm, not accumulating, writes
    // every one of them and reads none (it zeroes its factor on the destination and never
    // loads it; with an empty inner dimension it writes zeros; the test below runs each of
    // its paths over a destination of NaNs), so all `len` are initialised before `set_len`.
    #[allow(unsafe_code)]
    unsafe {
        gemm_into(out.as_mut_ptr(), d, lhs, rhs, scale, false, threads);
        out.set_len(len);
    }
    out
}

/// Asserts that the views chain (`l.cols = r.rows`, into `d`) and lie inside their slices.
fn check(d: View, (lhs, l): (&[f32], View), (rhs, r): (&[f32], View)) {
    assert!(
        l.rows == d.rows && r.cols == d.cols && l.cols == r.rows,
        "matrix product of {}×{} and {}×{} into {}×{}",
        l.rows,
        l.cols,
        r.rows,
        r.cols,
        d.rows,
        d.cols
    );
    assert!(
        l.fits(lhs.len()) && r.fits(rhs.len()),
        "matrix view outside its slice"
    );
}

/// gemm's `dst ← scale·lhs·rhs` (or `+=`) on the view `d` of `dst`.
///
/// # Safety
/// [`check`] passed for `d`, `lhs` and `rhs`; `dst` is valid for writes of every element of
/// `d` (and for reads too, initialised, when accumulating) and overlaps neither input.
#[allow(unsafe_code)]
unsafe fn gemm_into(
    dst: *mut f32,
    d: View,
    (lhs, l): (&[f32], View),
    (rhs, r): (&[f32], View),
    scale: f32,
    accumulate: bool,
    threads: usize,
) {
    if d.rows == 0 || d.cols == 0 {
        return;
    }
    // Strides fit in isize (checked by `fits`); a stride never exceeds the slice.
    let s = |x: usize| x as isize;
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's contract; gemm reads `lhs` and `rhs` inside their views and writes
    // only the `d.rows × d.cols` elements of `d` (on its threads, each its own blocks of
    // them), reading them only when accumulating, and returns when all are written.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.add(d.offset),
            s(d.cs),
            s(d.rs),
            accumulate,
            lhs.as_ptr().add(l.offset),
            s(l.cs),
            s(l.rs),
            rhs.as_ptr().add(r.offset),
            s(r.cs),
            s(r.rs),
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{View, product, product_new, product_on};

    /// Strided and transposed views against the schoolbook sum, with and without accumulation.
    #[test]
    fn products_of_strided_views_equal_the_schoolbook_sum() {
        let (m, k, n) = (7, 5, 9);
        // lhs: rows of a wider matrix (row stride 12, from column 3).
        let big: Vec<f32> = (0..m * 12).map(|i| (i % 13) as f32 - 6.0).collect();
        let l = View::rows(m, k, 3, 12);
        // rhs: the transpose of an (n × k) block with row stride 8.
        let other: Vec<f32> = (0..n * 8).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
        let r = View::rows(n, k, 1, 8).t();
        let at = |v: &[f32], w: View, i: usize, j: usize| v[w.offset + i * w.rs + j * w.cs];
        let want = |i: usize, j: usize| {
            (0..k)
                .map(|c| at(&big, l, i, c) * at(&other, r, c, j))
                .sum::<f32>()
        };
        let d = View::rows(m, n, 2, 11);
        let mut dst = vec![1.0f32; 2 + m * 11];
        product((&mut dst, d), (&big, l), (&other, r), 0.5, false);
        for i in 0..m {
            for j in 0..n {
                assert!((at(&dst, d, i, j) - 0.5 * want(i, j)).abs() < 1e-5);
            }
            // Elements outside the view are untouched.
            for j in n..11 {
                if 2 + i * 11 + j < dst.len() {
                    assert_eq!(dst[2 + i * 11 + j].to_bits(), 1f32.to_bits());
                }
            }
        }
        product((&mut dst, d), (&big, l), (&other, r), 2.0, true);
        for i in 0..m {
            for j in 0..n {
                assert!((at(&dst, d, i, j) - 2.5 * want(i, j)).abs() < 1e-4);
            }
        }
    }

    /// gemm does not read a destination it overwrites: over NaNs, every path of it (a
    /// vector, a small block, large blocks on threads, an empty inner dimension) gives the
    /// product, bit for bit what `product_new` gives without zeroing its output.
    #[test]
    fn products_overwrite_without_reading_the_destination() {
        for (m, k, n, threads) in [
            (1, 7, 9, 1),
            (9, 7, 1, 1),
            (5, 3, 4, 1),
            (70, 40, 90, 2),
            (6, 0, 5, 1),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.25).collect();
            let (l, r) = (View::rows(m, k, 0, k), View::rows(k, n, 0, n));
            let mut over_nan = vec![f32::NAN; m * n];
            product_on(
                (&mut over_nan, View::rows(m, n, 0, n)),
                (&a, l),
                (&b, r),
                1.0,
                false,
                threads,
            );
            assert!(
                over_nan.iter().all(|v| !v.is_nan()),
                "{m}×{k}×{n}: NaN read back"
            );
            let new = product_new((&a, l), (&b, r), 1.0, threads);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&new), bits(&over_nan), "{m}×{k}×{n}");
            if k == 0 {
                assert!(new.iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside its slice")]
    fn a_view_past_its_slice_is_refused() {
        let a = vec![0f32; 10];
        let mut d = vec![0f32; 4];
        product(
            (&mut d, View::rows(2, 2, 0, 2)),
            (&a, View::rows(2, 3, 0, 5)),
            (&a, View::rows(3, 2, 5, 2)),
            1.0,
            false,
        );
    }
}
