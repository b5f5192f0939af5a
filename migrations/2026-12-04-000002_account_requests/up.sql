-- Requests whose answer must not depend on whether the address has an account (forgotten password, resend of the
-- verification link). The request only inserts a row here, the same work for every address; a background worker
-- looks the address up, issues the token and queues the mail. Claims are leases (claimed_until) taken with
-- FOR UPDATE SKIP LOCKED, so several instances share the work and a crashed worker's claim expires.
CREATE TABLE account_requests (
    id uuid PRIMARY KEY,
    kind text NOT NULL CONSTRAINT account_requests_kind_known CHECK (kind IN ('password_reset', 'verification')),
    email text NOT NULL CONSTRAINT account_requests_email_length CHECK (char_length(email) BETWEEN 3 AND 254),
    created_at timestamptz NOT NULL DEFAULT now(),
    claimed_until timestamptz NOT NULL DEFAULT '-infinity'
);

CREATE INDEX account_requests_due_idx ON account_requests (claimed_until, created_at);

-- One waiting request per kind and address: repeating a request before it is handled adds nothing (and cannot
-- grow the table beyond one row per address and kind).
CREATE UNIQUE INDEX account_requests_one_per_address ON account_requests (kind, lower(email));
