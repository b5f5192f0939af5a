-- The keys that sign access tokens, shared by every instance on this database. The private key is sealed by the
-- service (encrypted under the data key when one is configured). A key signs from `activates_at` until a newer key
-- activates; its state (pending, current, verifying, retired) follows from the activation times and the access-token
-- lifetime, so it is not stored.
CREATE TABLE signing_keys (
    -- The RFC 7638 thumbprint of the public key.
    kid text PRIMARY KEY CONSTRAINT signing_keys_kid_length CHECK (char_length(kid) BETWEEN 1 AND 128),
    algorithm text NOT NULL CONSTRAINT signing_keys_algorithm_known CHECK (algorithm IN ('ES256')),
    private_key bytea NOT NULL
        CONSTRAINT signing_keys_private_key_length CHECK (octet_length(private_key) BETWEEN 1 AND 8192),
    created_at timestamptz NOT NULL,
    activates_at timestamptz NOT NULL
);

CREATE INDEX signing_keys_activates_idx ON signing_keys (activates_at);
