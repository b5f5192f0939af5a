-- Account workflows: single-use email tokens, the per-email login backoff and the mail outbox.

-- Verification, email-change and password-reset tokens, stored as SHA-256 hashes only.
--
-- "Newest wins" is structural: a user holds at most one token per purpose (the unique constraint below), and
-- issuing a token replaces the previous row of that user and purpose in one upsert, used or not. A replaced token
-- is simply gone, so superseded, used, expired and unknown tokens all fail the same way, and the table never holds
-- more than three rows per user. The constraint also serves lookups by user and purpose.
CREATE TABLE email_tokens (
    token_hash text PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose text NOT NULL
        CONSTRAINT email_tokens_purpose_known CHECK (purpose IN ('verify', 'email_change', 'password_reset')),
    -- Only an email change carries an address, and it always does.
    new_email text
        CONSTRAINT email_tokens_new_email_length CHECK (char_length(new_email) BETWEEN 3 AND 254),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    CONSTRAINT email_tokens_new_email_only_for_email_change
        CHECK ((purpose = 'email_change') = (new_email IS NOT NULL)),
    CONSTRAINT email_tokens_one_per_user_and_purpose UNIQUE (user_id, purpose)
);

-- Consecutive failed logins per lower-cased email, existing account or not, and how long logins for it are
-- blocked. Not tied to users: unknown emails are throttled too, and deleting an account must not reset its key.
CREATE TABLE login_attempts (
    key text PRIMARY KEY,
    failures integer NOT NULL CONSTRAINT login_attempts_failures_positive CHECK (failures > 0),
    blocked_until timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Mails waiting for delivery. A mail is queued in the same transaction as the change it reports, so it is never
-- lost and never sent for a change that rolled back; the dispatcher claims due rows with FOR UPDATE SKIP LOCKED and
-- leases them by moving next_attempt_at forward.
CREATE TABLE mail_outbox (
    id uuid PRIMARY KEY,
    to_address text NOT NULL,
    -- The domain never puts CR or LF in a subject; checking it here too keeps header injection out even if a bug
    -- let one through.
    subject text NOT NULL
        CONSTRAINT mail_outbox_subject_single_line CHECK (position(E'\r' IN subject) = 0 AND position(E'\n' IN subject) = 0),
    text_body text NOT NULL,
    html_body text NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CONSTRAINT mail_outbox_status_known CHECK (status IN ('pending', 'sent', 'dead')),
    attempts integer NOT NULL DEFAULT 0 CONSTRAINT mail_outbox_attempts_not_negative CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz
);

-- The dispatcher only ever looks for pending mail that is due; sent and dead rows stay out of the index.
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at) WHERE status = 'pending';
