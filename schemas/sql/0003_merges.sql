-- Provenance of merged checkpoints. `recipe_hash` is the blake3 of `recipe_canonical`: the
-- recipe point with every parameter fixed and every input resolved to its manifest ids
-- (schemas/FORMAT.md §8), so running an identical recipe on identical inputs finds its row and
-- returns the checkpoint without merging again.

CREATE TABLE merges (
    id                 INTEGER PRIMARY KEY,
    recipe_hash        TEXT NOT NULL,              -- 64 hex
    checkpoint_id      INTEGER NOT NULL REFERENCES checkpoints(id),
    method             TEXT NOT NULL,
    recipe_canonical   TEXT NOT NULL,              -- canonical JSON
    recipe_source      TEXT NOT NULL,              -- the recipe file as written
    recipe_path        TEXT,
    inputs             TEXT NOT NULL,              -- JSON array of resolved input manifest ids
    crossmerge_version TEXT NOT NULL,
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (recipe_hash, checkpoint_id)
) STRICT;
CREATE INDEX merges_recipe ON merges(recipe_hash);
