ALTER TABLE users
    DROP CONSTRAINT users_github_profile_url_length,
    DROP CONSTRAINT users_linkedin_profile_url_length;
