//! Reused buffers. Freshly allocated memory costs a page fault per 4 KiB on first touch
//! (about 1.6 GB/s on the machines measured), more than the compression or arithmetic done in
//! it, so window-sized buffers go back to a pool when done and come out of it for the next
//! object or tensor.

use std::sync::Mutex;

/// Bytes each pool keeps at most; buffers beyond it are freed.
const LIMIT: usize = 512 << 20;

pub static BYTES: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
pub static FLOATS: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` elements (contents unspecified), the smallest pooled one that fits.
pub fn take<T: Copy + Default>(pool: &Mutex<Vec<Vec<T>>>, len: usize) -> Vec<T> {
    let mut p = pool
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let best = p
        .iter()
        .enumerate()
        .filter(|(_, v)| v.capacity() >= len)
        .min_by_key(|(_, v)| v.capacity())
        .map(|(i, _)| i);
    let mut v = best.map(|i| p.swap_remove(i)).unwrap_or_default();
    drop(p);
    v.resize(len, T::default());
    v
}

/// Returns a buffer to the pool (or frees it when the pool is full).
pub fn give<T>(pool: &Mutex<Vec<Vec<T>>>, v: Vec<T>) {
    let mut p = pool
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let held: usize = p
        .iter()
        .map(|b| b.capacity() * std::mem::size_of::<T>())
        .sum();
    if held + v.capacity() * std::mem::size_of::<T>() <= LIMIT {
        p.push(v);
    }
}
