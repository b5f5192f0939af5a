-- Reverts up.sql: the key from users first, then the tables, children before parents. Without the pictures, every
-- users.profile_picture_id would point at nothing, so they are cleared too.
ALTER TABLE users DROP CONSTRAINT users_profile_picture_fkey;
UPDATE users SET profile_picture_id = NULL WHERE profile_picture_id IS NOT NULL;
DROP TABLE picture_variants;
DROP TABLE pictures;
