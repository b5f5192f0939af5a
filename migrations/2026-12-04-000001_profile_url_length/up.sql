-- Profile URLs are limited to 2048 bytes in their stored (normalised, percent-encoded) form, as the domain now
-- checks. NOT VALID: rows written before the domain checked the stored form are not rejected here (they read back
-- as absent, with a warning), while every new write is held to the limit.
ALTER TABLE users
    ADD CONSTRAINT users_linkedin_profile_url_length CHECK (octet_length(linkedin_profile_url) <= 2048) NOT VALID,
    ADD CONSTRAINT users_github_profile_url_length CHECK (octet_length(github_profile_url) <= 2048) NOT VALID;
