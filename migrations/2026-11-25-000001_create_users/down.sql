-- Reverts up.sql: dependent tables first, so the foreign keys never dangle.
DROP TABLE refresh_tokens;
DROP TABLE sessions;
DROP TABLE users;
