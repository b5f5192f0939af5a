-- Profile pictures: one row per uploaded picture, active or archived, and one row per stored size of it.
--
-- The sizes live in a child table rather than in three groups of columns on `pictures`: the domain models them as
-- a list, each size's constraints are written once instead of three times, and a further size would be new rows
-- and a wider CHECK instead of six new columns. The adapter reads a picture and its sizes with one join, and
-- refuses to record a picture that lacks a size.

CREATE TABLE pictures (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    archived boolean NOT NULL DEFAULT false,
    -- Where the picture's objects are stored now: under the active or the archive prefix of its user.
    prefix text NOT NULL CONSTRAINT pictures_prefix_not_empty CHECK (prefix <> ''),
    -- The target of the ownership-checking foreign key from users below; redundant with the primary key otherwise.
    CONSTRAINT pictures_user_id_id_key UNIQUE (user_id, id)
);

-- At most one active picture per user. Every write that changes which picture is active first locks the user's
-- row, so writers queue instead of colliding here; the index is what makes a bug fail rather than corrupt. It also
-- serves the lookup of the active picture.
CREATE UNIQUE INDEX pictures_one_active_per_user ON pictures (user_id) WHERE NOT archived;

-- The history, newest first with the id breaking ties, exactly as the adapter orders it; it also serves the
-- cascade from users.
CREATE INDEX pictures_user_id_created_at_idx ON pictures (user_id, created_at DESC, id DESC);

CREATE TABLE picture_variants (
    picture_id uuid NOT NULL REFERENCES pictures (id) ON DELETE CASCADE,
    size text NOT NULL CONSTRAINT picture_variants_size_known CHECK (size IN ('original', 'medium', 'thumb')),
    content_type text NOT NULL
        CONSTRAINT picture_variants_content_type_known CHECK (content_type IN ('image/jpeg', 'image/png')),
    width integer NOT NULL CONSTRAINT picture_variants_width_positive CHECK (width > 0),
    height integer NOT NULL CONSTRAINT picture_variants_height_positive CHECK (height > 0),
    bytes bigint NOT NULL CONSTRAINT picture_variants_bytes_not_negative CHECK (bytes >= 0),
    -- The strong ETag, served as stored.
    sha256 text NOT NULL CONSTRAINT picture_variants_sha256_hex CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (picture_id, size)
);

-- users.profile_picture_id (a column since the first migration) now has to name a picture of the same user. No
-- picture could be recorded before this migration, so any value it holds is dangling and is cleared first.
--
-- The key is (id, profile_picture_id) -> pictures (user_id, id), so a user can never point at someone else's
-- picture. Deleting a picture sets only profile_picture_id to NULL (the column list needs Postgres 15), never
-- users.id. Deleting a user cascades to its pictures, whose SET NULL then finds the user row already gone: the
-- two keys form a cycle between the tables, but not one that blocks deleting either.
UPDATE users SET profile_picture_id = NULL WHERE profile_picture_id IS NOT NULL;
ALTER TABLE users
    ADD CONSTRAINT users_profile_picture_fkey FOREIGN KEY (id, profile_picture_id)
        REFERENCES pictures (user_id, id) ON DELETE SET NULL (profile_picture_id);
