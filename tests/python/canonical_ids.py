#!/usr/bin/env python3
"""An independent implementation of crossmerge's content ids (schemas/FORMAT.md).

Written from the format document, not from the Rust code, with the `blake3` and
`safetensors` packages. The Rust tests run it when those packages are installed.

    canonical_ids.py golden            print the golden vectors (tests/fixtures/golden-ids.json)
    canonical_ids.py ids FILE          print {tensor name: tensor id} for a .safetensors file
"""
import json
import struct
import sys

from blake3 import blake3

TENSOR = "crossmerge 2026-11 tensor v1"
BLOB = "crossmerge 2026-11 blob v1"
MANIFEST = "crossmerge 2026-11 manifest v1"
TAGS = {"BOOL": 1, "U8": 2, "I8": 3, "I16": 4, "U16": 5, "F16": 6, "BF16": 7, "I32": 8,
        "U32": 9, "F32": 10, "F64": 11, "I64": 12, "U64": 13, "F8_E4M3": 14, "F8_E5M2": 15}


def tensor_id(dtype, shape, data):
    h = blake3(derive_key_context=TENSOR)
    h.update(bytes([TAGS[dtype]]))
    h.update(struct.pack("<Q", len(shape)))
    for d in shape:
        h.update(struct.pack("<Q", d))
    h.update(data)
    return h.hexdigest()


def blob_id(data):
    return blake3(data, derive_key_context=BLOB).hexdigest()


def manifest_bytes(tensors, files, metadata):
    """Canonical manifest JSON: fixed key order, sorted entries, no spaces."""
    doc = {
        "format": "crossmerge.manifest.v1",
        "tensors": [{"name": n, "dtype": d, "shape": s, "id": i} for n, d, s, i in sorted(tensors)],
        "files": [{"path": p, "size": z, "id": i} for p, z, i in sorted(files)],
        "metadata": dict(sorted(metadata.items())),
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def golden():
    cases = [
        ("F32", [2, 3], struct.pack("<6f", 0.0, 1.0, -2.5, 3.25, 1e-3, -0.0)),
        ("BF16", [4], bytes([0x80, 0x3F, 0x00, 0x40, 0x49, 0x40, 0x80, 0xBF])),
        ("I64", [], struct.pack("<q", 7)),
        ("BOOL", [3], bytes([1, 0, 1])),
        ("U8", [0], b""),
        ("F64", [1, 1, 2], struct.pack("<2d", 3.141592653589793, -1.0)),
    ]
    tensors = [{"dtype": d, "shape": s, "data_hex": b.hex(), "id": tensor_id(d, s, b)} for d, s, b in cases]
    blob = b'{"hidden_size": 384}\n'
    files = [("config.json", len(blob), blob_id(blob))]
    m_tensors = [("encoder.w", "F32", [2, 3], tensors[0]["id"]), ("b", "BF16", [4], tensors[1]["id"])]
    mb = manifest_bytes(m_tensors, files, {"format": "pt"})
    return {
        "tensors": tensors,
        "blobs": [{"data_hex": blob.hex(), "id": blob_id(blob)}],
        "manifests": [{"canonical": mb.decode(), "id": blake3(mb, derive_key_context=MANIFEST).hexdigest()}],
    }


def ids(path):
    from safetensors import safe_open

    out = {}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    with safe_open(path, framework="numpy") as st:
        for name in st.keys():
            arr = st.get_tensor(name)
            out[name] = tensor_id(header[name]["dtype"], list(arr.shape), arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return out


if __name__ == "__main__":
    if sys.argv[1] == "golden":
        print(json.dumps(golden(), indent=2))
    else:
        print(json.dumps(ids(sys.argv[2]), sort_keys=True))
