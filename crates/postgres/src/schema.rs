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
    }
}

diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));

diesel::allow_tables_to_appear_in_same_query!(users, sessions, refresh_tokens);
