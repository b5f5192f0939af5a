DROP INDEX mail_outbox_finished_idx;
DROP INDEX login_attempts_updated_at_idx;
DROP INDEX email_tokens_expires_at_idx;
DROP INDEX sessions_revoked_at_idx;
DROP INDEX sessions_expires_at_idx;
DROP TABLE rate_limit_windows;
