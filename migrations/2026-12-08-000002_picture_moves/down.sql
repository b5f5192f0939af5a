DROP INDEX pictures_misplaced_idx;
ALTER TABLE pictures DROP COLUMN objects_archived;
