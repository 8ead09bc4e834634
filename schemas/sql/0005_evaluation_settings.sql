-- The options that change an evaluation's numbers, stored with its row as a JSON object:
-- max_length, label_map (gold → model, when given), and for mlm the scoring ("masked" with
-- its seed, or "pseudo").

ALTER TABLE evaluations ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
