-- Back to lower() in the prefix indexes; dropping the columns drops the indexes built on them.
ALTER TABLE users
    DROP COLUMN search_email,
    DROP COLUMN search_nickname,
    DROP COLUMN search_first_name,
    DROP COLUMN search_last_name;

CREATE INDEX users_email_prefix_idx ON users (lower(email) text_pattern_ops);
CREATE INDEX users_nickname_prefix_idx ON users (lower(nickname) text_pattern_ops);
CREATE INDEX users_first_name_prefix_idx ON users (lower(first_name) text_pattern_ops);
CREATE INDEX users_last_name_prefix_idx ON users (lower(last_name) text_pattern_ops);
