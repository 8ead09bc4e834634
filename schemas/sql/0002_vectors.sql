-- Task and language vectors. A vector holds no objects: its values are from − minus, computed
-- from the two stored checkpoints; `definition` is the blake3 of its canonical definition
-- (schemas/FORMAT.md §7), so deriving the same vector twice finds the same row.

CREATE TABLE vectors (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    version      INTEGER NOT NULL CHECK (version >= 1),
    kind         TEXT NOT NULL CHECK (kind IN ('task', 'language')),
    from_id      INTEGER NOT NULL REFERENCES checkpoints(id),
    minus_id     INTEGER NOT NULL REFERENCES checkpoints(id),
    include      TEXT NOT NULL,                    -- JSON array of globs, sorted
    exclude      TEXT NOT NULL,                    -- JSON array of globs, sorted
    definition   TEXT NOT NULL,                    -- 64 hex
    tensor_count INTEGER NOT NULL,
    parameters   INTEGER NOT NULL,
    l2_norm      REAL NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (name, version)
) STRICT;
CREATE INDEX vectors_definition ON vectors(definition);

CREATE TABLE vector_tensors (
    vector_id  INTEGER NOT NULL REFERENCES vectors(id),
    name       TEXT NOT NULL,
    parameters INTEGER NOT NULL,
    l2_norm    REAL NOT NULL,
    PRIMARY KEY (vector_id, name)
) STRICT, WITHOUT ROWID;
