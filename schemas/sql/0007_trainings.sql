-- Training runs: one row per `crossmerge train` that registered a checkpoint, committed in the
-- same transaction as the checkpoint's row (a killed run leaves neither).

CREATE TABLE trainings (
    id                 INTEGER PRIMARY KEY,
    checkpoint_id      INTEGER NOT NULL REFERENCES checkpoints(id),
    source_id          INTEGER NOT NULL REFERENCES checkpoints(id), -- the REF trained from
    task               TEXT NOT NULL,                -- mlm, pos, ner, nli, dp
    language           TEXT,
    data               TEXT NOT NULL,                -- JSON: [{role, path, hash (blake3)}]
    settings           TEXT NOT NULL,                -- JSON: every setting of the run
    seed               INTEGER NOT NULL,             -- u64 bits
    device             TEXT NOT NULL,
    crossmerge_version TEXT NOT NULL,
    duration_s         REAL NOT NULL,
    steps              INTEGER NOT NULL,             -- optimizer steps taken
    kept_step          INTEGER NOT NULL,             -- the step whose weights were registered
    kept               TEXT NOT NULL,                -- best_dev | last
    losses             TEXT NOT NULL,                -- JSON: [[step, loss], …]
    dev                TEXT NOT NULL,                -- JSON: [{step, metrics}]
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX trainings_checkpoint ON trainings(checkpoint_id);
