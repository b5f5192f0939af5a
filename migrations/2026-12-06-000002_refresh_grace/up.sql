-- The reuse grace of refresh tokens: a token presented again shortly after its exchange, while the token it was
-- exchanged for is unused, is a retry whose answer got lost, not a theft. Telling the two apart needs each spent
-- token's successor. Tokens spent before this migration have none, so they keep the strict rule.
--
-- No foreign key: a rotation records the successor before inserting it, and the family's rows go together with
-- their session anyway (ON DELETE CASCADE on session_id).
ALTER TABLE refresh_tokens
    ADD COLUMN successor_hash text,
    ADD CONSTRAINT refresh_tokens_successor_only_when_used CHECK (successor_hash IS NULL OR used_at IS NOT NULL);
