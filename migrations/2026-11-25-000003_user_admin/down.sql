-- Reverts up.sql: only indexes, which nothing else depends on.
DROP INDEX users_unlocked_admins_idx;
DROP INDEX users_last_name_prefix_idx;
DROP INDEX users_first_name_prefix_idx;
DROP INDEX users_nickname_prefix_idx;
DROP INDEX users_email_prefix_idx;
DROP INDEX users_created_at_id_idx;
