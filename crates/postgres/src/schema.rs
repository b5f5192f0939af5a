//! The tables of `migrations/`, written by hand for diesel's query builder.
//!
//! Kept in step with the SQL by the adapter tests, which run every query against a freshly migrated database: a
//! column that drifts from its migration fails them at once.

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        nickname -> Text,
        first_name -> Nullable<Text>,
        last_name -> Nullable<Text>,
        bio -> Nullable<Text>,
        profile_picture_id -> Nullable<Uuid>,
        linkedin_profile_url -> Nullable<Text>,
        github_profile_url -> Nullable<Text>,
        role -> Text,
        is_professional -> Bool,
        professional_status_updated_at -> Nullable<Timestamptz>,
        email_verified -> Bool,
        pending_email -> Nullable<Text>,
        is_locked -> Bool,
        password_hash -> Text,
        failed_login_count -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        last_login_at -> Nullable<Timestamptz>,
        mfa_enabled -> Bool,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        created_at -> Timestamptz,
        last_used_at -> Timestamptz,
        expires_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        user_agent -> Nullable<Text>,
        ip -> Nullable<Text>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Text,
        session_id -> Uuid,
        created_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
        successor_hash -> Nullable<Text>,
    }
}

diesel::table! {
    email_tokens (token_hash) {
        token_hash -> Text,
        user_id -> Uuid,
        purpose -> Text,
        new_email -> Nullable<Text>,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    login_attempts (key) {
        key -> Text,
        failures -> Int4,
        blocked_until -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    mail_outbox (id) {
        id -> Uuid,
        to_address -> Text,
        subject -> Text,
        text_body -> Text,
        html_body -> Text,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    pictures (id) {
        id -> Uuid,
        user_id -> Uuid,
        created_at -> Timestamptz,
        archived -> Bool,
        prefix -> Text,
        objects_archived -> Bool,
    }
}

diesel::table! {
    picture_variants (picture_id, size) {
        picture_id -> Uuid,
        size -> Text,
        content_type -> Text,
        width -> Int4,
        height -> Int4,
        bytes -> Int8,
        sha256 -> Text,
    }
}

diesel::table! {
    totp_secrets (user_id) {
        user_id -> Uuid,
        secret -> Bytea,
        enabled -> Bool,
        last_used_step -> Nullable<Int8>,
        created_at -> Timestamptz,
        enabled_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    recovery_codes (user_id, code_hash) {
        user_id -> Uuid,
        code_hash -> Text,
        created_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    mfa_challenges (token_hash) {
        token_hash -> Text,
        user_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        attempts -> Int4,
    }
}

diesel::table! {
    rate_limit_windows (route, client) {
        route -> Text,
        client -> Text,
        window_start -> Timestamptz,
        hits -> Int4,
    }
}

diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::joinable!(email_tokens -> users (user_id));
diesel::joinable!(picture_variants -> pictures (picture_id));
diesel::joinable!(totp_secrets -> users (user_id));
diesel::joinable!(recovery_codes -> users (user_id));
diesel::joinable!(mfa_challenges -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    sessions,
    refresh_tokens,
    email_tokens,
    login_attempts,
    mail_outbox,
    pictures,
    picture_variants,
    totp_secrets,
    recovery_codes,
    mfa_challenges,
    rate_limit_windows
);

diesel::table! {
    account_requests (id) {
        id -> Uuid,
        kind -> Text,
        email -> Text,
        created_at -> Timestamptz,
        claimed_until -> Timestamptz,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        algorithm -> Text,
        private_key -> Bytea,
        created_at -> Timestamptz,
        activates_at -> Timestamptz,
    }
}

diesel::table! {
    audit_events (id) {
        id -> Uuid,
        at -> Timestamptz,
        #[sql_name = "type"]
        kind -> Text,
        actor_id -> Nullable<Uuid>,
        subject_id -> Nullable<Uuid>,
        session_id -> Nullable<Uuid>,
        ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        details -> Jsonb,
    }
}
