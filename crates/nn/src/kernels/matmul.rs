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
    (lhs, l): (&[f32], View),
    (rhs, r): (&[f32], View),
    scale: f32,
    accumulate: bool,
    threads: usize,
) {
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
        d.fits(dst.len()) && l.fits(lhs.len()) && r.fits(rhs.len()),
        "matrix view outside its slice"
    );
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
    // SAFETY: every element each view addresses lies inside its slice (checked above); `dst`
    // is a unique borrow, so it overlaps neither input; gemm reads `lhs` and `rhs` and writes
    // only the `d.rows × d.cols` elements of `dst`'s view (on its threads, each its own
    // blocks of them), and returns when all are written.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.as_mut_ptr().add(d.offset),
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
    use super::{View, product};

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
