-- Picture moves as recorded jobs. Archiving or restoring a picture changes `archived` in the transaction of the
-- change; moving its objects between the active and the archive prefix happens afterwards, in the background. A
-- row whose `archived` differs from `objects_archived` (where its objects are now) is a move still to be done, so a
-- move survives a crash of the process that was to do it. Finishing a move sets `prefix` and `objects_archived`
-- together, on the condition that the row is still where and what it was when the move started.
ALTER TABLE pictures ADD COLUMN objects_archived boolean NOT NULL DEFAULT false;

-- Rows written before this migration were moved by the request that archived or restored them; a move that failed
-- half-way left its row pointing at the old prefix, and becomes a recorded move now.
UPDATE pictures SET objects_archived = (split_part(prefix, '/', 3) = 'archive');

-- The moves to do, oldest first; normally empty, so the background mover's look costs nothing.
CREATE INDEX pictures_misplaced_idx ON pictures (created_at, id) WHERE archived <> objects_archived;
