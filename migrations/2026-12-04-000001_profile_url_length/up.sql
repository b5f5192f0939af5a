-- Profile URLs are limited to 2048 bytes in their stored (normalised, percent-encoded) form, as the domain now
-- checks. A longer URL stored before that check could never be read back (and would make every later write of its
-- row fail the constraint), so it is cleared first; the constraints then hold for every row.
UPDATE users SET linkedin_profile_url = NULL WHERE octet_length(linkedin_profile_url) > 2048;
UPDATE users SET github_profile_url = NULL WHERE octet_length(github_profile_url) > 2048;

ALTER TABLE users
    ADD CONSTRAINT users_linkedin_profile_url_length CHECK (octet_length(linkedin_profile_url) <= 2048),
    ADD CONSTRAINT users_github_profile_url_length CHECK (octet_length(github_profile_url) <= 2048);
