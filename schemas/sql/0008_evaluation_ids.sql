-- An evaluation's id: blake3 (key "crossmerge 2026-11 evaluation v1") of the canonical JSON of
-- what decides its numbers: the checkpoint's manifest id, task, language, the data's content
-- hash, split, sentence range, settings and device kind (FORMAT.md §12). Re-running the same
-- evaluation gives the same id, which is how `study` memoises evaluations and how a number in
-- a study's results.json is traced. Rows from before this migration have none.

ALTER TABLE evaluations ADD COLUMN key TEXT;
CREATE INDEX evaluations_key ON evaluations(key);
