//! User administration through HTTP against the app on a fresh database: paging and searching, the permission
//! rules for MANAGER and ADMIN, the last-ADMIN rule, and live authorization.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use std::collections::HashSet;

use serde_json::{Value, json};
use users_e2e::{STRONG_PASSWORD, TestApp, json_body, login_json};

const ADMIN: &str = "root@example.com";

async fn app() -> TestApp {
    TestApp::spawn_with(&[("BOOTSTRAP_ADMIN_EMAIL", ADMIN), ("BOOTSTRAP_ADMIN_PASSWORD", STRONG_PASSWORD)]).await
}

async fn token(app: &TestApp, email: &str) -> String {
    let response = login_json(&app.client, &app.address, email, STRONG_PASSWORD).await;
    assert_eq!(response.status(), 200, "login of {email}");
    json_body(response).await["access_token"].as_str().unwrap().to_owned()
}

async fn create(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.client.post(app.url("/users")).bearer_auth(token).json(&body).send().await.unwrap()
}

async fn create_verified(app: &TestApp, token: &str, email: &str, role: &str) -> String {
    let response =
        create(app, token, json!({"email": email, "password": STRONG_PASSWORD, "role": role, "email_verified": true}))
            .await;
    assert_eq!(response.status(), 201, "create {email} as {role}");
    json_body(response).await["id"].as_str().unwrap().to_owned()
}

/// Inserts `count` verified users named `seed{n}` straight into the database, sharing the admin's password hash.
async fn seed(app: &TestApp, count: usize) {
    app.db
        .execute(&format!(
            "INSERT INTO users (id, email, nickname, first_name, last_name, role, email_verified, is_locked, \
             is_professional, password_hash, created_at, updated_at) \
             SELECT gen_random_uuid(), 'seed' || n || '@example.com', 'seed_' || lpad(n::text, 3, '0'), \
             'First' || (n % 7), 'Last' || (n % 5), CASE WHEN n % 3 = 0 THEN 'ANONYMOUS' ELSE 'AUTHENTICATED' END, \
             n % 3 <> 0, n % 4 = 0, n % 5 = 0, (SELECT password_hash FROM users WHERE email = '{ADMIN}'), \
             now() - (n % 9) * interval '1 minute', now() \
             FROM generate_series(1, {count}) AS n"
        ))
        .await;
}

async fn page(app: &TestApp, token: &str, url: &str) -> Value {
    let response = app.client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    json_body(response).await
}

/// Follows `links.next` from the first page and returns every id in order.
async fn all_pages(app: &TestApp, token: &str, query: &str) -> Vec<String> {
    let mut url = app.url(&format!("/users?{query}"));
    let mut ids = Vec::new();
    loop {
        let body = page(app, token, &url).await;
        let items = body["items"].as_array().unwrap();
        assert!(items.len() <= 10);
        ids.extend(items.iter().map(|user| user["id"].as_str().unwrap().to_owned()));
        match body["links"]["next"].as_str() {
            // Links are built from PUBLIC_BASE_URL (http://app.test in tests); follow them on the real address.
            Some(next) => url = next.replace("http://app.test", &app.address),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn paging_through_45_users_in_every_order_has_no_gaps_or_duplicates() {
    let app = app().await;
    let admin = token(&app, ADMIN).await;
    seed(&app, 44).await;
    for (sort, order_by) in [
        ("created_at", "created_at, id"),
        ("-created_at", "created_at DESC, id DESC"),
        ("email", "lower(email), id"),
        ("nickname", "lower(nickname), id"),
    ] {
        let ids = all_pages(&app, &admin, &format!("limit=10&sort={sort}")).await;
        assert_eq!(ids.len(), 45, "{sort}");
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 45, "{sort}: duplicates");
        // The expected order, asked of Postgres directly, one position at a time.
        for (position, id) in ids.iter().enumerate() {
            let expected = app
                .db
                .count(&format!(
                    "SELECT count(*) AS n FROM (SELECT id, row_number() OVER (ORDER BY {order_by}) AS r FROM users) t \
                     WHERE t.id = '{id}' AND t.r = {}",
                    position + 1
                ))
                .await;
            assert_eq!(expected, 1, "{sort}: {id} at position {position}");
        }
    }
}

#[tokio::test]
async fn filters_and_prefix_search_narrow_the_list() {
    let app = app().await;
    let admin = token(&app, ADMIN).await;
    seed(&app, 44).await;
    let count = |body: &Value| body["items"].as_array().unwrap().len();
    let locked = page(&app, &admin, &app.url("/users?limit=100&is_locked=true")).await;
    assert_eq!(count(&locked), 11);
    assert!(locked["items"].as_array().unwrap().iter().all(|u| u["is_locked"] == true));
    let anonymous = page(&app, &admin, &app.url("/users?limit=100&role=ANONYMOUS&email_verified=false")).await;
    assert_eq!(count(&anonymous), 14);
    let professional = page(&app, &admin, &app.url("/users?limit=100&is_professional=true")).await;
    assert_eq!(count(&professional), 8);
    let by_email = page(&app, &admin, &app.url("/users?limit=100&q=SEED4")).await;
    assert_eq!(count(&by_email), 6, "seed4 and seed40..44");
    let by_nickname = page(&app, &admin, &app.url("/users?limit=100&q=seed_01")).await;
    assert_eq!(count(&by_nickname), 10);
    let by_first_name = page(&app, &admin, &app.url("/users?limit=100&q=first3")).await;
    assert_eq!(count(&by_first_name), 6);
    let by_last_name = page(&app, &admin, &app.url("/users?limit=100&q=last0")).await;
    assert_eq!(count(&by_last_name), 8);
}

#[tokio::test]
async fn search_wildcards_and_quotes_match_only_literally() {
    let app = app().await;
    let admin = token(&app, ADMIN).await;
    for (email, first) in [
        ("percent@example.com", "50%off"),
        ("plain@example.com", "50xoff"),
        ("under@example.com", "a_b"),
        ("plainer@example.com", "axb"),
        ("quote@example.com", "o'brien"),
        ("slash@example.com", "back\\slash"),
        ("other@example.com", "backxslash"),
    ] {
        let body = json!({"email": email, "password": STRONG_PASSWORD, "first_name": first, "email_verified": true});
        assert_eq!(create(&app, &admin, body).await.status(), 201);
    }
    for (q, expected) in [
        ("50%", "percent@example.com"),
        ("a_", "under@example.com"),
        ("o'b", "quote@example.com"),
        ("back\\", "slash@example.com"),
    ] {
        let url = format!("{}/users?{}", app.address, serde_urlencoded_pair("q", q));
        let body = page(&app, &admin, &url).await;
        let emails: Vec<&str> =
            body["items"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap()).collect();
        assert_eq!(emails, vec![expected], "q={q}");
    }
}

fn serde_urlencoded_pair(name: &str, value: &str) -> String {
    let mut encoded = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("{name}={encoded}")
}

#[tokio::test]
async fn bad_parameters_are_400_problems() {
    let app = app().await;
    let admin = token(&app, ADMIN).await;
    // A well-formed cursor whose value carries a NUL, which storage would refuse.
    let nul_cursor = format!("sort=email&cursor={}", base64_url("e:00000000-0000-7000-8000-000000000000:a\u{0}"));
    for query in [
        nul_cursor.as_str(),
        "limit=0",
        "limit=101",
        "limit=ten",
        "sort=password_hash",
        "role=ROOT",
        "is_locked=yes",
        "cursor=garbage",
        "colour=red",
        "limit=1&limit=2",
    ] {
        let response = app.client.get(app.url(&format!("/users?{query}"))).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
    }
    let slash = app.client.get(app.url("/users/")).bearer_auth(&admin).send().await.unwrap();
    assert!(slash.status().is_client_error());
}

#[tokio::test]
async fn plain_users_get_403_on_every_admin_route() {
    let app = app().await;
    let admin = token(&app, ADMIN).await;
    let id = create_verified(&app, &admin, "plain@example.com", "AUTHENTICATED").await;
    let plain = token(&app, "plain@example.com").await;
    let get = app.client.get(app.url("/users")).bearer_auth(&plain).send().await.unwrap();
    assert_eq!(get.status(), 403);
    assert_eq!(json_body(get).await["code"], "forbidden");
    let one = app.client.get(app.url(&format!("/users/{id}"))).bearer_auth(&plain).send().await.unwrap();
    assert_eq!(one.status(), 403);
    let post = create(&app, &plain, json!({"email": "x@example.com", "password": STRONG_PASSWORD})).await;
    assert_eq!(post.status(), 403);
}

#[tokio::test]
async fn a_manager_cannot_create_admins_or_promote_and_sees_managers_and_admins_as_404() {
    let app = app().await;
    let admin = token(&app, ADMIN).await;
    create_verified(&app, &admin, "manager@example.com", "MANAGER").await;
    let other_manager = create_verified(&app, &admin, "manager2@example.com", "MANAGER").await;
    let user = create_verified(&app, &admin, "user@example.com", "AUTHENTICATED").await;
    let manager = token(&app, "manager@example.com").await;

    let create_admin =
        create(&app, &manager, json!({"email": "boss@example.com", "password": STRONG_PASSWORD, "role": "ADMIN"}))
            .await;
    assert_eq!(create_admin.status(), 403);
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users WHERE email = 'boss@example.com'").await, 0);
    let promote = app
        .client
        .patch(app.url(&format!("/users/{user}")))
        .bearer_auth(&manager)
        .json(&json!({"role": "MANAGER"}))
        .send()
        .await
        .unwrap();
    assert_eq!(promote.status(), 403);
    assert_eq!(
        app.db.count(&format!("SELECT count(*) AS n FROM users WHERE id = '{user}' AND role = 'AUTHENTICATED'")).await,
        1
    );

    let admin_id = json_body(app.client.get(app.url("/me")).bearer_auth(&admin).send().await.unwrap()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let unknown = app
        .client
        .get(app.url("/users/00000000-0000-7000-8000-000000000000"))
        .bearer_auth(&manager)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let unknown_body = json_body(unknown).await;
    for hidden in [&admin_id, &other_manager] {
        let read = app.client.get(app.url(&format!("/users/{hidden}"))).bearer_auth(&manager).send().await.unwrap();
        assert_eq!(read.status(), 404, "{hidden}");
        assert_eq!(json_body(read).await, unknown_body, "the same 404 as an unknown id");
        let lock = app
            .client
            .patch(app.url(&format!("/users/{hidden}")))
            .bearer_auth(&manager)
            .json(&json!({"is_locked": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(lock.status(), 404);
        let delete =
            app.client.delete(app.url(&format!("/users/{hidden}"))).bearer_auth(&manager).send().await.unwrap();
        assert_eq!(delete.status(), 404);
    }
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users WHERE is_locked").await, 0, "nothing changed");
    let listed = page(&app, &manager, &app.url("/users?limit=100")).await;
    let roles: HashSet<&str> =
        listed["items"].as_array().unwrap().iter().map(|u| u["role"].as_str().unwrap()).collect();
    assert_eq!(roles, HashSet::from(["AUTHENTICATED"]));
}

#[tokio::test]
async fn two_admins_demoting_each_other_at_once_leave_exactly_one_admin() {
    let app = app().await;
    let root = token(&app, ADMIN).await;
    let root_id = json_body(app.client.get(app.url("/me")).bearer_auth(&root).send().await.unwrap()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let second_id = create_verified(&app, &root, "second@example.com", "ADMIN").await;
    let second = token(&app, "second@example.com").await;
    let demote = |actor: String, target: String| {
        let client = app.client.clone();
        let url = app.url(&format!("/users/{target}"));
        async move { client.patch(url).bearer_auth(actor).json(&json!({"role": "MANAGER"})).send().await.unwrap() }
    };
    let (a, b) = tokio::join!(demote(root.clone(), second_id), demote(second, root_id));
    let mut statuses = vec![a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    // Either both passed authorization and the lock decides (409 `last_admin`), or one demotion committed before
    // the other request was authorized, and its actor, now a MANAGER, no longer sees the ADMIN (404).
    assert!(statuses == vec![200, 409] || statuses == vec![200, 404], "{statuses:?}");
    if statuses == vec![200, 409] {
        let conflict = if a.status() == 409 { a } else { b };
        assert_eq!(json_body(conflict).await["code"], "last_admin");
    }
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users WHERE role = 'ADMIN'").await, 1);
}

#[tokio::test]
async fn the_last_admin_cannot_demote_lock_or_delete_themself_and_nobody_changes_their_own_role() {
    let app = app().await;
    let root = token(&app, ADMIN).await;
    let me = json_body(app.client.get(app.url("/me")).bearer_auth(&root).send().await.unwrap()).await;
    let id = me["id"].as_str().unwrap().to_owned();
    let patch_self =
        |body: Value| app.client.patch(app.url(&format!("/users/{id}"))).bearer_auth(&root).json(&body).send();
    for body in [json!({"role": "MANAGER"}), json!({"is_locked": true})] {
        let response = patch_self(body.clone()).await.unwrap();
        assert_eq!(response.status(), 409, "{body}");
        assert_eq!(json_body(response).await["code"], "last_admin");
    }
    let delete = app.client.delete(app.url(&format!("/users/{id}"))).bearer_auth(&root).send().await.unwrap();
    assert_eq!(delete.status(), 409);
    let leave = app
        .client
        .delete(app.url("/me"))
        .bearer_auth(&root)
        .json(&json!({"current_password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(leave.status(), 409, "DELETE /me keeps the last admin too");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users WHERE role = 'ADMIN' AND NOT is_locked").await, 1);

    // With a second admin, changing one's own role is simply forbidden.
    create_verified(&app, &root, "second@example.com", "ADMIN").await;
    let response = patch_self(json!({"role": "MANAGER"})).await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(json_body(response).await["code"], "forbidden");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users WHERE role = 'ADMIN'").await, 2, "nothing changed");
}

#[tokio::test]
async fn demotion_lock_and_deletion_take_effect_on_the_very_next_request() {
    let app = app().await;
    let root = token(&app, ADMIN).await;
    let manager_id = create_verified(&app, &root, "m@example.com", "MANAGER").await;
    let locked_id = create_verified(&app, &root, "l@example.com", "AUTHENTICATED").await;
    let deleted_id = create_verified(&app, &root, "d@example.com", "AUTHENTICATED").await;
    let manager = token(&app, "m@example.com").await;
    let locked = token(&app, "l@example.com").await;
    let deleted = token(&app, "d@example.com").await;
    assert_eq!(app.client.get(app.url("/users")).bearer_auth(&manager).send().await.unwrap().status(), 200);

    let patch = |id: &str, body: Value| {
        app.client.patch(app.url(&format!("/users/{id}"))).bearer_auth(&root).json(&body).send()
    };
    assert_eq!(patch(&manager_id, json!({"role": "AUTHENTICATED"})).await.unwrap().status(), 200);
    assert_eq!(app.client.get(app.url("/users")).bearer_auth(&manager).send().await.unwrap().status(), 403);

    let lock = patch(&locked_id, json!({"is_locked": true})).await.unwrap();
    assert_eq!(lock.status(), 200);
    let refused = app.client.get(app.url("/me")).bearer_auth(&locked).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(json_body(refused).await["code"], "account_locked");
    assert_eq!(
        app.db.count("SELECT count(*) AS n FROM mail_outbox WHERE to_address = 'l@example.com' AND subject = 'Your account has been locked'").await,
        1
    );
    assert_eq!(patch(&locked_id, json!({"is_locked": false})).await.unwrap().status(), 200);
    assert_eq!(
        app.client.get(app.url("/me")).bearer_auth(&locked).send().await.unwrap().status(),
        200,
        "unlock restores"
    );

    let delete = app.client.delete(app.url(&format!("/users/{deleted_id}"))).bearer_auth(&root).send().await.unwrap();
    assert_eq!(delete.status(), 204);
    assert_eq!(app.client.get(app.url("/me")).bearer_auth(&deleted).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn becoming_professional_stamps_the_time_and_queues_the_mail() {
    let app = app().await;
    let root = token(&app, ADMIN).await;
    let id = create_verified(&app, &root, "pro@example.com", "AUTHENTICATED").await;
    let response = app
        .client
        .put(app.url(&format!("/users/{id}")))
        .bearer_auth(&root)
        .json(&json!({"is_professional": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "PUT is a synonym of PATCH");
    let user = json_body(response).await;
    assert_eq!(user["is_professional"], true);
    assert!(user["professional_status_updated_at"].is_string());
    assert_eq!(
        app.db.count("SELECT count(*) AS n FROM mail_outbox WHERE to_address = 'pro@example.com' AND subject = 'You now have professional status'").await,
        1
    );
}

/// Base64url without padding, as the API's cursors are encoded.
fn base64_url(plain: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(plain)
}
