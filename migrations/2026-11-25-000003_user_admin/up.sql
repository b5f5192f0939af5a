-- User administration: the indexes that keep GET /users fast on a million users, and the one that keeps the
-- last-admin check from scanning the table.

-- Keyset pagination by creation time, in both directions: `(created_at, id) > ($1, $2) ORDER BY created_at, id`
-- is one index range scan, read backwards for newest first. The sorts by email and nickname use the unique indexes
-- on lower(email) and lower(nickname) of the first migration, which are in the database collation like the ORDER BY.
CREATE INDEX users_created_at_id_idx ON users (created_at, id);

-- The prefix search: `lower(column) LIKE 'prefix%'`. An index in the default operator class can only serve LIKE
-- when the database collation is C (or POSIX), which a deployment may not use (a C.UTF-8 database does not count
-- as C either), so each searched column gets an index in text_pattern_ops, which compares byte-wise whatever the
-- collation and therefore serves prefix patterns everywhere. The four are combined with a BitmapOr.
CREATE INDEX users_email_prefix_idx ON users (lower(email) text_pattern_ops);
CREATE INDEX users_nickname_prefix_idx ON users (lower(nickname) text_pattern_ops);
CREATE INDEX users_first_name_prefix_idx ON users (lower(first_name) text_pattern_ops);
CREATE INDEX users_last_name_prefix_idx ON users (lower(last_name) text_pattern_ops);

-- The unlocked ADMINs, which every demotion, lock and deletion by an administrator locks to decide whether the
-- last one would go. A handful of rows, so the check never reads the whole table.
CREATE INDEX users_unlocked_admins_idx ON users (id) WHERE role = 'ADMIN' AND NOT is_locked;
