-- crossmerge catalog, version 1.
-- Objects are files under objects/; every row here names one. An object row is inserted as
-- 'pending' (in a committed transaction) before its file is written and becomes 'stored' once
-- the file is durable, so a crash at any moment leaves either a pending row (whose file may be
-- absent, which is not damage) or a stored row whose file is complete; never a file the
-- catalog does not know and never a stored row without its file.

CREATE TABLE objects (
    id          TEXT PRIMARY KEY,                 -- 64 lowercase hex, blake3
    kind        TEXT NOT NULL CHECK (kind IN ('tensor', 'blob', 'manifest')),
    state       TEXT NOT NULL CHECK (state IN ('pending', 'stored')),
    raw_size    INTEGER NOT NULL,                 -- payload bytes (as exported)
    stored_size INTEGER,                          -- bytes on disk, once stored
    delta_base  TEXT REFERENCES objects(id)       -- XOR-delta base, never itself a delta
) STRICT;

-- What a manifest references, by name: tensors by tensor name, files by relative path.
CREATE TABLE manifest_refs (
    manifest_id TEXT NOT NULL REFERENCES objects(id),
    name        TEXT NOT NULL,
    object_id   TEXT NOT NULL REFERENCES objects(id),
    PRIMARY KEY (manifest_id, name)
) STRICT, WITHOUT ROWID;
CREATE INDEX manifest_refs_object ON manifest_refs(object_id);

CREATE TABLE checkpoints (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    version      INTEGER NOT NULL CHECK (version >= 1),
    kind         TEXT NOT NULL CHECK (kind IN ('base', 'language', 'task', 'merged')),
    manifest_id  TEXT NOT NULL REFERENCES objects(id),
    architecture TEXT,
    base_id      INTEGER REFERENCES checkpoints(id),
    language     TEXT,
    task         TEXT,
    source_path  TEXT,
    tensor_count INTEGER NOT NULL,
    parameters   INTEGER NOT NULL,
    logical_size INTEGER NOT NULL,                -- bytes of the exported tensors and files
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (name, version)
) STRICT;
CREATE INDEX checkpoints_manifest ON checkpoints(manifest_id);

CREATE TABLE tags (
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(id),
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (checkpoint_id, key)
) STRICT, WITHOUT ROWID;
