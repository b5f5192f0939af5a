-- Picture moves as recorded jobs. Archiving or restoring a picture changes `archived` in the transaction of the
-- change; moving its objects between the active and the archive prefix happens afterwards, in the background. A
-- row whose `archived` differs from `objects_archived` is a move still to be done, so a move survives a crash of the
-- process that was to do it. `objects_archived` says where the objects are now, and is computed by Postgres from
-- `prefix` (`profile_pictures/{user}/archive/...` is the archive), so it cannot disagree with the prefix whatever
-- writes the row. Finishing a move sets `prefix`, on the condition that the row is still where and what it was when
-- the move started. Rows written before this migration were moved by the request that archived or restored them; a
-- move that failed half-way left its row pointing at the old prefix, and is a recorded move from now on.
--
-- Adding a stored generated column rewrites `pictures` once, while the migration runs. Instances of the earlier
-- version move objects themselves and set `prefix` without any condition: stop them before starting this one.
ALTER TABLE pictures
    ADD COLUMN objects_archived boolean NOT NULL GENERATED ALWAYS AS (split_part(prefix, '/', 3) = 'archive') STORED;

-- The moves to do, oldest first; normally empty, so the background mover's look costs nothing.
CREATE INDEX pictures_misplaced_idx ON pictures (created_at, id) WHERE archived <> objects_archived;
