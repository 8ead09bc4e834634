-- Checkpoint records: each checkpoint row is also stored as a small blob object (its name,
-- version, kind, lineage, tags and merge provenance as JSON; schemas/FORMAT.md §10), written
-- before the row, so `crossmerge rebuild-catalog` can recover the catalog from the objects.
-- Rows made before this version have none.
ALTER TABLE checkpoints ADD COLUMN record_id TEXT REFERENCES objects(id);

-- Deleting an object row checks `objects.delta_base` for references to it: without an index
-- each DELETE scans the table, and gc of n rows is quadratic.
CREATE INDEX objects_delta_base ON objects(delta_base);
CREATE INDEX checkpoints_record ON checkpoints(record_id);
