//! The on-disk encoding of one object (see `schemas/FORMAT.md`, "Object files").
//!
//! An object's payload (a tensor's raw little-endian bytes, a file's bytes, a manifest's
//! canonical JSON) is cut into chunks of [`CHUNK_SIZE`] bytes. Each chunk is optionally XORed
//! with the same chunk of a *delta base* object (a fine-tune against its base tensor), then
//! byte-grouped (byte 0 of every element, then byte 1, … as ZipNN does, so that the sign and
//! exponent bytes of floats sit together), then compressed as one independent zstd frame.
//! Independent frames let all cores compress and decompress, and let a reader stream.
//!
//! Ids never depend on this encoding: an id is the blake3 of the canonical *logical* content
//! (the canonical prefix, then the payload), and every decode re-hashes and refuses to hand
//! out bytes of an object whose hash does not match its name. Delta chains are at most one
//! level deep: a delta base is never itself a delta.

use std::io;

use rayon::prelude::*;

use crate::id::{BLOB_CONTEXT, MANIFEST_CONTEXT, ObjectId, TENSOR_CONTEXT};
use crate::store::{Backend, ObjectReader};

pub const MAGIC: &[u8; 8] = b"CMOBJ1\0\n";
pub const END_MAGIC: &[u8; 8] = b"CMOBJEND";
/// Raw payload bytes per zstd frame. A multiple of every element size.
pub const CHUNK_SIZE: u32 = 4 << 20;
/// Chunks encoded or decoded together, in parallel, per window.
pub const WINDOW_CHUNKS: usize = 8;
pub const ZSTD_LEVEL: i32 = 1;
const FIXED_HEADER: usize = 64;
const FOOTER_FIXED: usize = 16;
/// Largest canonical prefix accepted on read (dtype, rank, up to 64 dims).
const MAX_PREFIX: usize = 1 + 8 + 8 * 64;
/// Largest chunk size accepted on read.
const MAX_CHUNK: u32 = 64 << 20;

/// What an object holds; decides the hash context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Tensor,
    Blob,
    Manifest,
}

impl ObjectKind {
    pub const fn context(self) -> &'static str {
        match self {
            ObjectKind::Tensor => TENSOR_CONTEXT,
            ObjectKind::Blob => BLOB_CONTEXT,
            ObjectKind::Manifest => MANIFEST_CONTEXT,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            ObjectKind::Tensor => "tensor",
            ObjectKind::Blob => "blob",
            ObjectKind::Manifest => "manifest",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        [ObjectKind::Tensor, ObjectKind::Blob, ObjectKind::Manifest]
            .into_iter()
            .find(|k| k.name() == s)
    }

    const fn code(self) -> u8 {
        match self {
            ObjectKind::Tensor => 1,
            ObjectKind::Blob => 2,
            ObjectKind::Manifest => 3,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(ObjectKind::Tensor),
            2 => Some(ObjectKind::Blob),
            3 => Some(ObjectKind::Manifest),
            _ => None,
        }
    }
}

/// The fixed part of an object file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: ObjectKind,
    /// Element width used for byte grouping (1 = no grouping).
    pub width: u8,
    pub delta_base: Option<ObjectId>,
    pub chunk_size: u32,
    pub raw_len: u64,
    /// The canonical prefix hashed before the payload (dtype, rank, dims for tensors).
    pub prefix: Vec<u8>,
}

impl Header {
    pub fn new(kind: ObjectKind, width: u8, raw_len: u64, prefix: Vec<u8>) -> Self {
        Self {
            kind,
            width,
            delta_base: None,
            chunk_size: CHUNK_SIZE,
            raw_len,
            prefix,
        }
    }

    pub fn chunk_count(&self) -> usize {
        usize::try_from(self.raw_len.div_ceil(u64::from(self.chunk_size))).unwrap_or(usize::MAX)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER + self.prefix.len());
        out.extend_from_slice(MAGIC);
        out.push(self.kind.code());
        out.push(self.width);
        out.push(u8::from(self.delta_base.is_some()));
        out.push(0);
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&(self.prefix.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(self.delta_base.unwrap_or(ObjectId::zero()).as_bytes());
        out.extend_from_slice(&self.prefix);
        out
    }
}

/// The hasher for content of `kind`: keyed by the kind's context.
pub fn hasher(kind: ObjectKind) -> blake3::Hasher {
    blake3::Hasher::new_derive_key(kind.context())
}

/// The id of in-memory content.
pub fn content_id(kind: ObjectKind, prefix: &[u8], payload: &[u8]) -> ObjectId {
    let mut h = hasher(kind);
    h.update(prefix);
    if payload.len() >= 1 << 20 {
        h.update_rayon(payload);
    } else {
        h.update(payload);
    }
    ObjectId::from_bytes(*h.finalize().as_bytes())
}

/// Where the payload bytes of a new object come from.
pub trait Source: Sync {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl Source for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self
            .as_slice()
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("reading the input: {0}")]
    Source(#[source] io::Error),
    #[error("writing the object: {0}")]
    Store(#[source] io::Error),
    #[error("delta base: {0}")]
    Base(#[source] DecodeError),
    #[error("the input changed while it was being stored (its hash no longer matches)")]
    Changed,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("missing")]
    Missing,
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("corrupted: {0}")]
    Corrupted(String),
    #[error("unreadable: {0}")]
    Io(#[source] io::Error),
}

impl DecodeError {
    /// The short class a `verify` finding reports.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Missing => "missing",
            DecodeError::Truncated(_) => "truncated",
            DecodeError::Corrupted(_) => "corrupted",
            DecodeError::Io(_) => "unreadable",
        }
    }
}

/// Writes `source` (of `header.raw_len` bytes) as object `id`, streaming window by window on
/// all cores. The payload is hashed again as it is encoded and the object is committed only if
/// the hash equals `id`, so an input that changes under us can never be stored under the
/// wrong name. Returns the object's stored size in bytes.
pub fn write_object(
    backend: &dyn Backend,
    id: &ObjectId,
    header: &Header,
    source: &dyn Source,
    base: Option<&Decoder>,
) -> Result<u64, EncodeError> {
    let chunk = header.chunk_size as usize;
    if let Some(base) = base {
        debug_assert_eq!(base.header.raw_len, header.raw_len);
        debug_assert_eq!(base.header.chunk_size, header.chunk_size);
        debug_assert!(base.header.delta_base.is_none());
    }
    let width = usize::from(header.width.max(1));
    let mut writer = backend.create().map_err(EncodeError::Store)?;
    let head = header.encode();
    writer.write_all(&head).map_err(EncodeError::Store)?;
    let mut stored = head.len() as u64;
    let mut hash = hasher(header.kind);
    hash.update(&header.prefix);

    let window = chunk * WINDOW_CHUNKS;
    let mut raw = vec![0u8; window.min(usize::try_from(header.raw_len).unwrap_or(usize::MAX))];
    let mut base_raw = if base.is_some() {
        vec![0u8; raw.len()]
    } else {
        Vec::new()
    };
    let mut lengths = Vec::with_capacity(header.chunk_count());
    let mut offset = 0u64;
    while offset < header.raw_len {
        let n = usize::try_from((header.raw_len - offset).min(window as u64)).unwrap_or(window);
        let buf = &mut raw[..n];
        source.read_at(offset, buf).map_err(EncodeError::Source)?;
        let first_chunk = usize::try_from(offset / u64::from(header.chunk_size)).unwrap_or(0);
        if let Some(base) = base {
            base.decode_chunks(first_chunk, &mut base_raw[..n])
                .map_err(EncodeError::Base)?;
        }
        let base_slice = base.map(|_| &base_raw[..n]);
        let buf = &raw[..n];
        let (frames, ()) = rayon::join(
            || {
                buf.par_chunks(chunk)
                    .enumerate()
                    .map(|(i, c)| {
                        let b = base_slice.map(|b| &b[i * chunk..i * chunk + c.len()]);
                        encode_chunk(c, b, width)
                    })
                    .collect::<Vec<_>>()
            },
            || {
                hash.update(buf);
            },
        );
        for frame in frames {
            let frame = frame.map_err(EncodeError::Store)?;
            writer.write_all(&frame).map_err(EncodeError::Store)?;
            stored += frame.len() as u64;
            lengths.push(frame.len() as u64);
        }
        offset += n as u64;
    }
    if ObjectId::from_bytes(*hash.finalize().as_bytes()) != *id {
        return Err(EncodeError::Changed);
    }
    let mut footer = Vec::with_capacity(lengths.len() * 8 + FOOTER_FIXED);
    for l in &lengths {
        footer.extend_from_slice(&l.to_le_bytes());
    }
    footer.extend_from_slice(&(lengths.len() as u64).to_le_bytes());
    footer.extend_from_slice(END_MAGIC);
    writer.write_all(&footer).map_err(EncodeError::Store)?;
    stored += footer.len() as u64;
    writer.commit(id).map_err(EncodeError::Store)?;
    Ok(stored)
}

fn encode_chunk(raw: &[u8], base: Option<&[u8]>, width: usize) -> io::Result<Vec<u8>> {
    let mut grouped = vec![0u8; raw.len()];
    group(raw, base, width, &mut grouped);
    zstd::bulk::compress(&grouped, ZSTD_LEVEL)
}

/// Byte grouping (with optional XOR against `base`): plane j holds byte j of every element.
fn group(raw: &[u8], base: Option<&[u8]>, width: usize, out: &mut [u8]) {
    let n = raw.len() / width;
    if width == 1 || raw.len() % width != 0 {
        out.copy_from_slice(raw);
        if let Some(b) = base {
            out.iter_mut().zip(b).for_each(|(o, b)| *o ^= b);
        }
        return;
    }
    let (planes, _) = out.split_at_mut(n * width);
    match base {
        None => {
            for (i, e) in raw.chunks_exact(width).enumerate() {
                for (j, &byte) in e.iter().enumerate() {
                    planes[j * n + i] = byte;
                }
            }
        }
        Some(b) => {
            for (i, (e, be)) in raw
                .chunks_exact(width)
                .zip(b.chunks_exact(width))
                .enumerate()
            {
                for j in 0..width {
                    planes[j * n + i] = e[j] ^ be[j];
                }
            }
        }
    }
}

/// Inverse of [`group`]; XOR with `base` afterwards if given.
fn ungroup(grouped: &[u8], width: usize, out: &mut [u8]) {
    let n = grouped.len() / width;
    if width == 1 || grouped.len() % width != 0 {
        out.copy_from_slice(grouped);
        return;
    }
    for (i, e) in out.chunks_exact_mut(width).enumerate() {
        for (j, byte) in e.iter_mut().enumerate() {
            *byte = grouped[j * n + i];
        }
    }
}

/// An opened object: header and frame table parsed and checked, payload decoded on demand.
pub struct Decoder {
    reader: Box<dyn ObjectReader>,
    pub header: Header,
    frames: Vec<(u64, u64)>,
    base: Option<Box<Decoder>>,
    stored_len: u64,
}

impl Decoder {
    /// Opens object `id`, and its delta base if it has one.
    pub fn open(backend: &dyn Backend, id: &ObjectId) -> Result<Self, DecodeError> {
        Self::open_inner(backend, id, true)
    }

    fn open_inner(
        backend: &dyn Backend,
        id: &ObjectId,
        allow_delta: bool,
    ) -> Result<Self, DecodeError> {
        let reader = backend.open(id).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                DecodeError::Missing
            } else {
                DecodeError::Io(e)
            }
        })?;
        let len = reader.len();
        if len < (FIXED_HEADER + FOOTER_FIXED) as u64 {
            return Err(DecodeError::Truncated(format!("only {len} bytes")));
        }
        let mut fixed = [0u8; FIXED_HEADER];
        reader
            .read_exact_at(&mut fixed, 0)
            .map_err(DecodeError::Io)?;
        if &fixed[..8] != MAGIC {
            return Err(DecodeError::Corrupted("bad magic".into()));
        }
        let bad = |what: &str| DecodeError::Corrupted(format!("bad header: {what}"));
        let kind = ObjectKind::from_code(fixed[8]).ok_or_else(|| bad("kind"))?;
        let width = fixed[9];
        let is_delta = fixed[10];
        let chunk_size = u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes"));
        let raw_len = u64::from_le_bytes(fixed[16..24].try_into().expect("8 bytes"));
        let prefix_len = u32::from_le_bytes(fixed[24..28].try_into().expect("4 bytes")) as usize;
        let delta_base = ObjectId::from_bytes(fixed[32..64].try_into().expect("32 bytes"));
        if width == 0 || !matches!(width, 1 | 2 | 4 | 8) {
            return Err(bad("width"));
        }
        if chunk_size == 0 || chunk_size > MAX_CHUNK || chunk_size % u32::from(width) != 0 {
            return Err(bad("chunk size"));
        }
        if prefix_len > MAX_PREFIX || is_delta > 1 || (is_delta == 1) == delta_base.is_zero() {
            return Err(bad("prefix or delta flag"));
        }
        let mut prefix = vec![0u8; prefix_len];
        reader
            .read_exact_at(&mut prefix, FIXED_HEADER as u64)
            .map_err(|_| DecodeError::Truncated("header cut short".into()))?;
        let header = Header {
            kind,
            width,
            delta_base: (is_delta == 1).then_some(delta_base),
            chunk_size,
            raw_len,
            prefix,
        };

        let mut tail = [0u8; FOOTER_FIXED];
        reader
            .read_exact_at(&mut tail, len - FOOTER_FIXED as u64)
            .map_err(DecodeError::Io)?;
        if &tail[8..] != END_MAGIC {
            return Err(DecodeError::Truncated("no end marker".into()));
        }
        let n = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
        let head_len = (FIXED_HEADER + prefix_len) as u64;
        let expected = header.chunk_count() as u64;
        if n != expected || n.saturating_mul(8) > len - head_len - FOOTER_FIXED as u64 {
            return Err(bad("frame count"));
        }
        let table_at = len - FOOTER_FIXED as u64 - n * 8;
        let mut table = vec![0u8; usize::try_from(n * 8).map_err(|_| bad("frame count"))?];
        reader
            .read_exact_at(&mut table, table_at)
            .map_err(DecodeError::Io)?;
        let mut frames = Vec::with_capacity(table.len() / 8);
        let mut at = head_len;
        for l in table.chunks_exact(8) {
            let l = u64::from_le_bytes(l.try_into().expect("8 bytes"));
            if l > u64::from(MAX_CHUNK) * 2 {
                return Err(bad("frame length"));
            }
            frames.push((at, l));
            at += l;
        }
        if at != table_at {
            return Err(DecodeError::Truncated(format!(
                "frames end at byte {at} but the frame table starts at {table_at}"
            )));
        }
        let base = match header.delta_base {
            None => None,
            Some(_) if !allow_delta => {
                return Err(DecodeError::Corrupted(
                    "delta chain deeper than one level".into(),
                ));
            }
            Some(b) => {
                let base = Self::open_inner(backend, &b, false)
                    .map_err(|e| DecodeError::Corrupted(format!("its delta base `{b}` is {e}")))?;
                if base.header.raw_len != raw_len || base.header.chunk_size != chunk_size {
                    return Err(DecodeError::Corrupted("delta base of another size".into()));
                }
                Some(Box::new(base))
            }
        };
        Ok(Self {
            reader,
            header,
            frames,
            base,
            stored_len: len,
        })
    }

    /// Size of the object file, in bytes.
    pub fn stored_len(&self) -> u64 {
        self.stored_len
    }

    /// Decodes the chunks starting at `first` into `out` (whose length decides how many), in
    /// parallel. Not verified: use [`Decoder::stream`] or [`Decoder::read_all`] to hand bytes on.
    pub fn decode_chunks(&self, first: usize, out: &mut [u8]) -> Result<(), DecodeError> {
        let chunk = self.header.chunk_size as usize;
        let width = usize::from(self.header.width);
        out.par_chunks_mut(chunk)
            .enumerate()
            .try_for_each(|(i, dst)| self.decode_chunk(first + i, dst, width))?;
        if let Some(base) = &self.base {
            let mut b = vec![0u8; out.len()];
            base.decode_chunks(first, &mut b)?;
            out.par_chunks_mut(1 << 16)
                .zip(b.par_chunks(1 << 16))
                .for_each(|(o, b)| o.iter_mut().zip(b).for_each(|(o, b)| *o ^= b));
        }
        Ok(())
    }

    fn decode_chunk(&self, i: usize, dst: &mut [u8], width: usize) -> Result<(), DecodeError> {
        let &(at, len) = self
            .frames
            .get(i)
            .ok_or_else(|| DecodeError::Corrupted(format!("no frame {i}")))?;
        let mut frame = vec![0u8; usize::try_from(len).expect("checked on open")];
        self.reader
            .read_exact_at(&mut frame, at)
            .map_err(DecodeError::Io)?;
        let mut grouped = Vec::with_capacity(dst.len());
        let got = zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(&frame, &mut grouped))
            .map_err(|e| DecodeError::Corrupted(format!("frame {i}: {e}")))?;
        if got != dst.len() {
            return Err(DecodeError::Corrupted(format!(
                "frame {i} holds {got} bytes, expected {}",
                dst.len()
            )));
        }
        ungroup(&grouped, width, dst);
        Ok(())
    }

    /// Streams the payload window by window to `sink`, then checks the hash against `id`.
    /// Bytes handed to `sink` are provisional until this returns `Ok`: on a mismatch the
    /// caller must discard them (export writes to a temporary file for this reason).
    pub fn stream(
        &self,
        id: &ObjectId,
        sink: &mut (dyn FnMut(&[u8]) -> io::Result<()> + Send),
    ) -> Result<(), StreamError> {
        let window = self.header.chunk_size as usize * WINDOW_CHUNKS;
        let total = self.header.raw_len;
        let mut buf = vec![0u8; window.min(usize::try_from(total).unwrap_or(window))];
        let mut hash = hasher(self.header.kind);
        hash.update(&self.header.prefix);
        let mut offset = 0u64;
        while offset < total {
            let n = usize::try_from((total - offset).min(window as u64)).unwrap_or(window);
            let first = usize::try_from(offset / u64::from(self.header.chunk_size)).unwrap_or(0);
            self.decode_chunks(first, &mut buf[..n])?;
            let data = &buf[..n];
            let ((), sunk) = rayon::join(
                || {
                    hash.update_rayon(data);
                },
                || sink(data),
            );
            sunk.map_err(StreamError::Sink)?;
            offset += n as u64;
        }
        if ObjectId::from_bytes(*hash.finalize().as_bytes()) == *id {
            Ok(())
        } else {
            Err(DecodeError::Corrupted("content does not match its id".into()).into())
        }
    }

    /// The whole payload, verified against `id`.
    pub fn read_all(&self, id: &ObjectId) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(usize::try_from(self.header.raw_len).unwrap_or(0));
        self.stream(id, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .map_err(|e| match e {
            StreamError::Decode(d) => d,
            StreamError::Sink(io) => DecodeError::Io(io),
        })?;
        Ok(out)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("writing: {0}")]
    Sink(#[source] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemBackend;

    fn store(backend: &MemBackend, payload: &[u8], width: u8, base: Option<&ObjectId>) -> ObjectId {
        let id = content_id(ObjectKind::Tensor, b"p", payload);
        let mut header = Header::new(
            ObjectKind::Tensor,
            width,
            payload.len() as u64,
            b"p".to_vec(),
        );
        header.chunk_size = 64;
        let base_dec = base.map(|b| Decoder::open(backend, b).unwrap());
        header.delta_base = base.copied();
        write_object(backend, &id, &header, &payload.to_vec(), base_dec.as_ref()).unwrap();
        id
    }

    #[test]
    fn round_trips_with_grouping_and_delta() {
        let backend = MemBackend::new();
        let a: Vec<u8> = (0..1000u32)
            .flat_map(|i| (i as f32 * 0.37).to_le_bytes())
            .collect();
        let b: Vec<u8> = (0..1000u32)
            .flat_map(|i| (i as f32 * 0.3701).to_le_bytes())
            .collect();
        let ida = store(&backend, &a, 4, None);
        let idb = store(&backend, &b, 4, Some(&ida));
        assert_eq!(
            Decoder::open(&backend, &ida)
                .unwrap()
                .read_all(&ida)
                .unwrap(),
            a
        );
        let dec = Decoder::open(&backend, &idb).unwrap();
        assert_eq!(dec.header.delta_base, Some(ida));
        assert_eq!(dec.read_all(&idb).unwrap(), b);
    }

    #[test]
    fn empty_payload_round_trips() {
        let backend = MemBackend::new();
        let id = store(&backend, &[], 4, None);
        assert!(
            Decoder::open(&backend, &id)
                .unwrap()
                .read_all(&id)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn damage_is_detected_never_returned() {
        let backend = MemBackend::new();
        let a: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        let id = store(&backend, &a, 1, None);
        let raw = backend.get_raw(&id).unwrap();
        for pos in [70usize, raw.len() / 2, raw.len() - 30] {
            let mut bad = raw.clone();
            bad[pos] ^= 0x10;
            backend.put_raw(id, bad);
            let r = Decoder::open(&backend, &id).and_then(|d| d.read_all(&id));
            assert!(r.is_err(), "bit flip at {pos} went unnoticed");
        }
        backend.put_raw(id, raw[..raw.len() - 5].to_vec());
        assert!(matches!(
            Decoder::open(&backend, &id),
            Err(DecodeError::Truncated(_))
        ));
    }
}
