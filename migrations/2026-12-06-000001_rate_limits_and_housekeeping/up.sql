-- Per-client-address request windows, shared by every instance, and the indexes housekeeping deletes by.

-- One row per (route, client address): the start of its current one-minute window and the requests counted in it.
-- A counted request is one upsert that either adds to the window or, once the window has ended, starts a new one;
-- so the row is reused for ever and the table holds at most one row per route and address seen. Housekeeping
-- deletes rows whose window ended long ago. The address is text (its canonical form), not inet: the limiter only
-- compares it for equality, and text keeps the adapter free of a network type binding.
CREATE TABLE rate_limit_windows (
    route text NOT NULL CONSTRAINT rate_limit_windows_route_length CHECK (char_length(route) BETWEEN 1 AND 64),
    client text NOT NULL CONSTRAINT rate_limit_windows_client_length CHECK (char_length(client) BETWEEN 2 AND 64),
    window_start timestamptz NOT NULL,
    hits integer NOT NULL CONSTRAINT rate_limit_windows_hits_positive CHECK (hits > 0),
    PRIMARY KEY (route, client)
);

CREATE INDEX rate_limit_windows_window_start_idx ON rate_limit_windows (window_start);

-- Housekeeping deletes in batches of a bounded size; each batch finds its rows through one of these instead of
-- scanning the whole table again.
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX email_tokens_expires_at_idx ON email_tokens (expires_at);
CREATE INDEX login_attempts_updated_at_idx ON login_attempts (updated_at);
-- Sent rows by their delivery time, dead ones by their last lease (when they were given up on, near enough).
CREATE INDEX mail_outbox_finished_idx ON mail_outbox (coalesce(sent_at, next_attempt_at)) WHERE status <> 'pending';
