-- The second factor: a TOTP secret per user (sealed by the service, encrypted when a data key is configured),
-- hashed single-use recovery codes, and logins waiting for their second step. users.mfa_enabled mirrors whether a
-- confirmed secret exists, so reading a user needs no join.
ALTER TABLE users ADD COLUMN mfa_enabled boolean NOT NULL DEFAULT false;

CREATE TABLE totp_secrets (
    user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret bytea NOT NULL CONSTRAINT totp_secrets_secret_length CHECK (octet_length(secret) BETWEEN 1 AND 512),
    enabled boolean NOT NULL DEFAULT false,
    -- The last 30-second step whose code was accepted: a code is accepted only for a later step.
    last_used_step bigint,
    created_at timestamptz NOT NULL,
    enabled_at timestamptz
);

CREATE TABLE recovery_codes (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash text NOT NULL,
    created_at timestamptz NOT NULL,
    used_at timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE mfa_challenges (
    token_hash text PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    attempts integer NOT NULL DEFAULT 0 CONSTRAINT mfa_challenges_attempts_positive CHECK (attempts >= 0)
);

CREATE INDEX mfa_challenges_user_idx ON mfa_challenges (user_id);
CREATE INDEX mfa_challenges_expires_idx ON mfa_challenges (expires_at);
