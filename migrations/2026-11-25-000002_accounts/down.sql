-- Reverts up.sql. None of these tables is referenced by another, so the order does not matter.
DROP TABLE mail_outbox;
DROP TABLE login_attempts;
DROP TABLE email_tokens;
