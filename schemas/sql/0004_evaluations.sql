-- Evaluations of checkpoints: one row per run of `crossmerge eval`.

CREATE TABLE evaluations (
    id                 INTEGER PRIMARY KEY,
    checkpoint_id      INTEGER NOT NULL REFERENCES checkpoints(id),
    task               TEXT NOT NULL,
    language           TEXT,
    dataset_hash       TEXT NOT NULL,              -- blake3 of the data file's bytes, 64 hex
    dataset_path       TEXT NOT NULL,
    split              TEXT,
    metrics            TEXT NOT NULL,              -- JSON object: metric → value
    examples           INTEGER NOT NULL,
    truncated          INTEGER NOT NULL,           -- words (or texts) cut by --max-length
    device             TEXT NOT NULL,
    crossmerge_version TEXT NOT NULL,
    duration_s         REAL NOT NULL,
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX evaluations_checkpoint ON evaluations(checkpoint_id, task);
