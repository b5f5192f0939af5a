-- Accounts, their login sessions and the hashed refresh tokens of those sessions.
--
-- Length checks repeat only the rules the domain already enforces on the same stored form (character counts, as
-- Postgres' char_length counts code points like Rust's chars()). URL lengths are left out on purpose: the domain
-- limits the raw input, and the stored, normalised URL may be longer.

CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL CONSTRAINT users_email_length CHECK (char_length(email) BETWEEN 3 AND 254),
    nickname text NOT NULL CONSTRAINT users_nickname_length CHECK (char_length(nickname) BETWEEN 3 AND 32),
    first_name text CONSTRAINT users_first_name_length CHECK (char_length(first_name) <= 100),
    last_name text CONSTRAINT users_last_name_length CHECK (char_length(last_name) <= 100),
    bio text CONSTRAINT users_bio_length CHECK (char_length(bio) <= 500),
    profile_picture_id uuid,
    linkedin_profile_url text,
    github_profile_url text,
    role text NOT NULL CONSTRAINT users_role_known CHECK (role IN ('ANONYMOUS', 'AUTHENTICATED', 'MANAGER', 'ADMIN')),
    is_professional boolean NOT NULL DEFAULT false,
    professional_status_updated_at timestamptz,
    email_verified boolean NOT NULL DEFAULT false,
    pending_email text CONSTRAINT users_pending_email_length CHECK (char_length(pending_email) BETWEEN 3 AND 254),
    is_locked boolean NOT NULL DEFAULT false,
    password_hash text NOT NULL,
    failed_login_count integer NOT NULL DEFAULT 0 CONSTRAINT users_failed_login_count_positive CHECK (failed_login_count >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz
);

-- Emails and nicknames are unique case-insensitively. The adapter maps a violation of each index, by name, to the
-- domain's EmailTaken or NicknameTaken, so these names are part of its contract. Both values are ASCII-only in the
-- domain, so lower() agrees with Rust's to_ascii_lowercase() whatever the database's collation.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
CREATE UNIQUE INDEX users_nickname_lower_key ON users (lower(nickname));

CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    user_agent text,
    ip text
);

-- Listing a user's sessions and revoking all of them (logout-all, password change) look sessions up by user.
CREATE INDEX sessions_user_id_idx ON sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash text PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at timestamptz
);

-- Reuse detection revokes a token's whole family, found through its session.
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);
