//! `UserStore::list_users`: the keyset-paginated, filtered listing with its prefix search and query plans.

use std::collections::BTreeSet;

use users_domain::permissions::Role;
use users_domain::ports::{UserCursor, UserQuery, UserSort, UserStore as _};
use users_domain::user::{PersonName, User, UserId};
use users_postgres::PgRepository;
use users_testkit::TestDatabase;

use crate::support::{account, count, everyone, execute, new_user, repository, repository_with_connections};

/// The listing of nobody.
const NO_ONE: [UserId; 0] = [];

/// Every sort order.
const SORTS: [UserSort; 4] = [UserSort::CreatedAt, UserSort::CreatedAtDesc, UserSort::Email, UserSort::Nickname];

/// The four prefix indexes of migration 000003.
const PREFIX_INDEXES: [&str; 4] = [
    "users_email_prefix_idx",
    "users_nickname_prefix_idx",
    "users_first_name_prefix_idx",
    "users_last_name_prefix_idx",
];

/// A first page, 100 at most, of everyone whose email, nickname or name starts with `prefix`.
fn search(prefix: &str) -> UserQuery {
    UserQuery { prefix: Some(prefix.to_owned()), ..everyone(100) }
}

/// Inserts a user with `role` and the given first name.
async fn insert(repository: &PgRepository, email: &str, nickname: &str, role: Role, first_name: &str) -> User {
    let mut new = new_user(email, nickname);
    new.role = role;
    new.email_verified = role != Role::Anonymous;
    new.first_name = PersonName::parse(first_name).unwrap();
    repository.insert_user(account(new)).await.unwrap()
}

/// The ids a listing returns, in its order.
async fn listed(repository: &PgRepository, query: UserQuery) -> Vec<UserId> {
    repository.list_users(query).await.unwrap().into_iter().map(|user| user.id).collect()
}

/// The ids a listing returns, as a set.
async fn listed_set(repository: &PgRepository, query: UserQuery) -> BTreeSet<UserId> {
    listed(repository, query).await.into_iter().collect()
}

/// The ids of `users`, as a set.
fn ids<'a>(users: impl IntoIterator<Item = &'a User>) -> BTreeSet<UserId> {
    users.into_iter().map(|user| user.id).collect()
}

/// Pages through `query` with its limit until a short page, following the cursor of each page's last user;
/// returns every id in order and the size of every page.
async fn page_through(repository: &PgRepository, mut query: UserQuery) -> (Vec<UserId>, Vec<usize>) {
    let mut all = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = repository.list_users(query.clone()).await.unwrap();
        sizes.push(page.len());
        assert!(page.len() <= query.limit as usize, "a page longer than its limit");
        all.extend(page.iter().map(|user| user.id));
        match page.last() {
            Some(last) if page.len() == query.limit as usize => {
                query.after = Some(UserCursor::after(last, query.sort));
            }
            _ => return (all, sizes),
        }
        assert!(sizes.len() < 100, "paging does not end");
    }
}

/// `users` in `sort` order, computed here: the sort key, then the id.
fn expected_order(users: &[User], sort: UserSort) -> Vec<UserId> {
    let mut users = users.to_vec();
    match sort {
        UserSort::CreatedAt => users.sort_by_key(|user| (user.created_at, user.id)),
        UserSort::CreatedAtDesc => {
            users.sort_by_key(|user| (user.created_at, user.id));
            users.reverse();
        }
        UserSort::Email => users.sort_by_key(|user| (user.email.canonical(), user.id)),
        UserSort::Nickname => users.sort_by_key(|user| (user.nickname.as_str().to_ascii_lowercase(), user.id)),
    }
    users.into_iter().map(|user| user.id).collect()
}

#[tokio::test]
async fn paging_through_45_users_in_every_order_returns_each_once_in_order() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    for i in 0..45_u32 {
        // Emails and nicknames are permutations of the insertion order, in mixed case, and differ from one another
        // only in two digits, so every collation orders their lower-case forms the way Rust does.
        let email = format!("{}{:02}@Example.com", if i % 2 == 0 { "User" } else { "user" }, (i * 7) % 45);
        let nickname = format!("{}{:02}", if i % 3 == 0 { "Nick_" } else { "nick_" }, (i * 11) % 45);
        insert(&repository, &email, &nickname, Role::Authenticated, "Ada").await;
    }
    // Seven creation times for 45 users: many ties, which only the id breaks.
    execute(
        &database,
        "UPDATE users SET created_at = timestamptz '2026-01-01 00:00:00+00' \
         + (abs(hashtext(id::text)) % 7) * interval '1 minute'",
    )
    .await;
    let mut users = Vec::new();
    for id in listed(&repository, everyone(100)).await {
        users.push(repository.find_user(id).await.unwrap().unwrap());
    }
    assert_eq!(users.len(), 45);

    for sort in SORTS {
        let expected = expected_order(&users, sort);
        let (all, sizes) = page_through(&repository, UserQuery { sort, ..everyone(10) }).await;
        assert_eq!(sizes, [10, 10, 10, 10, 5], "{sort:?}");
        assert_eq!(all, expected, "{sort:?}: gaps, duplicates or the wrong order");
        // A limit that divides the total ends with an empty page after the last full one.
        let (all, sizes) = page_through(&repository, UserQuery { sort, ..everyone(15) }).await;
        assert_eq!(sizes, [15, 15, 15, 0], "{sort:?}");
        assert_eq!(all, expected, "{sort:?}");
    }
}

#[tokio::test]
async fn filters_narrow_the_listing_by_role_and_flags() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let anonymous = insert(&repository, "anon@example.com", "anon", Role::Anonymous, "A").await;
    let member = insert(&repository, "member@example.com", "member", Role::Authenticated, "B").await;
    let locked = insert(&repository, "locked@example.com", "locked", Role::Authenticated, "C").await;
    let manager = insert(&repository, "manager@example.com", "manager", Role::Manager, "D").await;
    let boss = insert(&repository, "boss@example.com", "boss", Role::Admin, "E").await;
    execute(&database, "UPDATE users SET is_locked = true WHERE nickname = 'locked'").await;
    execute(&database, "UPDATE users SET is_professional = true WHERE nickname = 'manager'").await;
    let below_manager = vec![Role::Anonymous, Role::Authenticated];

    assert_eq!(listed_set(&repository, everyone(100)).await, ids([&anonymous, &member, &locked, &manager, &boss]));
    assert_eq!(
        listed_set(&repository, UserQuery { roles: below_manager.clone(), ..everyone(100) }).await,
        ids([&anonymous, &member, &locked])
    );
    assert_eq!(listed(&repository, UserQuery { roles: vec![], ..everyone(100) }).await, NO_ONE, "no role, no one");
    assert_eq!(
        listed_set(&repository, UserQuery { roles: vec![Role::Manager, Role::Admin], ..everyone(100) }).await,
        ids([&manager, &boss])
    );
    assert_eq!(
        listed_set(&repository, UserQuery { email_verified: Some(false), ..everyone(100) }).await,
        ids([&anonymous])
    );
    assert_eq!(
        listed_set(&repository, UserQuery { email_verified: Some(true), ..everyone(100) }).await,
        ids([&member, &locked, &manager, &boss])
    );
    assert_eq!(listed_set(&repository, UserQuery { is_locked: Some(true), ..everyone(100) }).await, ids([&locked]));
    assert_eq!(
        listed_set(&repository, UserQuery { is_locked: Some(false), ..everyone(100) }).await,
        ids([&anonymous, &member, &manager, &boss])
    );
    assert_eq!(
        listed_set(&repository, UserQuery { is_professional: Some(true), ..everyone(100) }).await,
        ids([&manager])
    );
    let combined = UserQuery {
        roles: below_manager,
        email_verified: Some(true),
        is_locked: Some(false),
        is_professional: Some(false),
        ..everyone(100)
    };
    assert_eq!(listed_set(&repository, combined).await, ids([&member]));
}

#[tokio::test]
async fn a_prefix_matches_the_start_of_the_email_nickname_or_either_name_in_any_case() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let by_email = insert(&repository, "Zelda.Quill@example.com", "ghost", Role::Authenticated, "Marie").await;
    let by_nickname = insert(&repository, "ada@example.com", "ZeldaFan", Role::Authenticated, "Ada").await;
    let by_first_name = insert(&repository, "bob@example.com", "bobby", Role::Authenticated, "Zeldine").await;
    let mut new = new_user("carol@example.com", "carol");
    new.last_name = PersonName::parse("zELDAbaum").unwrap();
    let by_last_name = repository.insert_user(account(new)).await.unwrap();
    let mut decoy = new_user("dave@example.com", "dave_z");
    decoy.last_name = PersonName::parse("Xelda").unwrap();
    repository.insert_user(account(decoy)).await.unwrap();

    assert_eq!(listed(&repository, search("zELDA.q")).await, [by_email.id]);
    assert_eq!(listed(&repository, search("zeldaf")).await, [by_nickname.id]);
    assert_eq!(listed(&repository, search("ZELDI")).await, [by_first_name.id]);
    assert_eq!(listed(&repository, search("ZeldaB")).await, [by_last_name.id]);
    assert_eq!(
        listed_set(&repository, search("zeld")).await,
        ids([&by_email, &by_nickname, &by_first_name, &by_last_name])
    );
    assert_eq!(listed(&repository, search("elda")).await, NO_ONE, "a prefix, not a substring");
    assert_eq!(listed(&repository, search("zelda.quill@example.com.")).await, NO_ONE);
    // The search combines with the role filter and the sort.
    let managers = UserQuery { roles: vec![Role::Manager], ..search("zeld") };
    assert_eq!(listed(&repository, managers).await, NO_ONE);
    let by_nickname_order = UserQuery { sort: UserSort::Nickname, ..search("zeld") };
    assert_eq!(
        listed(&repository, by_nickname_order).await,
        [by_first_name.id, by_last_name.id, by_email.id, by_nickname.id],
        "bobby, carol, ghost, zeldafan"
    );
}

#[tokio::test]
async fn wildcards_quotes_and_backslashes_in_a_prefix_match_only_themselves() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let mut named = Vec::new();
    // Each special name comes with decoys that a wildcard, or an unescaped backslash, would match as well.
    for (i, first_name) in
        ["50%off", "50xoff", "500", "a_b", "axb", "O'Brien", "OBrien", r"back\slash", "backslash", r"\start", "%pct"]
            .into_iter()
            .enumerate()
    {
        let user = insert(
            &repository,
            &format!("lit{i:02}@example.com"),
            &format!("lit-{i:02}"),
            Role::Authenticated,
            first_name,
        )
        .await;
        named.push(user);
    }
    let underscore = insert(&repository, "under@example.com", "_under", Role::Authenticated, "Under").await;

    assert_eq!(listed(&repository, search("50%")).await, [named[0].id]);
    assert_eq!(listed(&repository, search("50%O")).await, [named[0].id]);
    assert_eq!(listed(&repository, search("a_")).await, [named[3].id]);
    assert_eq!(listed(&repository, search("o'b")).await, [named[5].id]);
    assert_eq!(listed(&repository, search("O'")).await, [named[5].id]);
    assert_eq!(listed(&repository, search(r"back\s")).await, [named[7].id]);
    assert_eq!(listed(&repository, search(r"BACK\")).await, [named[7].id]);
    assert_eq!(listed(&repository, search(r"\")).await, [named[9].id]);
    assert_eq!(listed(&repository, search("%")).await, [named[10].id]);
    assert_eq!(listed(&repository, search("_")).await, [underscore.id]);
    assert_eq!(listed(&repository, search("'")).await, NO_ONE);
    assert_eq!(listed(&repository, search("%'; DROP TABLE users; --")).await, NO_ONE);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM users").await, 12);
}

/// Postgres may switch a prepared statement to a generic plan for good, and a generic listing can walk the whole
/// table for a rare prefix or flag: listings are kept prepared only on the listing's own connections, whose sessions
/// plan every execution with its values, and never on the main pool's, whose sessions keep Postgres's default.
#[tokio::test]
async fn listings_are_kept_prepared_only_where_every_execution_is_planned_with_its_values() {
    let database = TestDatabase::create().await;
    // One connection in each pool: every listing runs on the same one.
    let repository = repository_with_connections(database.url(), 1).await;
    let ada = insert(&repository, "ada@example.com", "ada", Role::Authenticated, "Ada").await;
    let shapes = [
        everyone(10),
        search("ad"),
        search("AD"),
        UserQuery { is_locked: Some(false), ..search("ad") },
        UserQuery { roles: vec![Role::Authenticated, Role::Manager], ..everyone(100) },
        UserQuery { sort: UserSort::Email, ..search("ad") },
    ];
    for _ in 0..6 {
        for query in &shapes {
            assert_eq!(listed(&repository, query.clone()).await, [ada.id]);
        }
    }

    let listing = repository.listings_on_connection(true).await.unwrap();
    assert_eq!(listing.plan_cache_mode, "force_custom_plan");
    // The filtered search shares its text with the plain one: a flag is written whether set or not.
    assert_eq!(listing.prepared.len(), 5, "{:#?}", listing.prepared);
    for prepared in &listing.prepared {
        assert_eq!(prepared.generic_plans, 0, "{prepared:#?}");
    }
    let planned: i64 = listing.prepared.iter().map(|prepared| prepared.custom_plans).sum();
    assert_eq!(planned, 36, "every execution planned with its values: {:#?}", listing.prepared);

    let main = repository.listings_on_connection(false).await.unwrap();
    assert_eq!(main.plan_cache_mode, "auto", "the statements on a key keep their plan made once");
    assert!(main.prepared.is_empty(), "{:#?}", main.prepared);
}

/// A listing whose flag filter is unset folds it away, and one that sets it uses it: the same text gives both.
#[tokio::test]
async fn a_flag_filter_written_but_unset_filters_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 1).await;
    let verified = insert(&repository, "ver@example.com", "ver", Role::Authenticated, "Ver").await;
    let unverified = insert(&repository, "unv@example.com", "unv", Role::Anonymous, "Unv").await;
    for _ in 0..6 {
        assert_eq!(listed_set(&repository, everyone(10)).await, ids([&verified, &unverified]));
        let only_verified = UserQuery { email_verified: Some(true), ..everyone(10) };
        assert_eq!(listed(&repository, only_verified).await, [verified.id]);
        let only_unverified = UserQuery { email_verified: Some(false), ..everyone(10) };
        assert_eq!(listed(&repository, only_unverified).await, [unverified.id]);
    }
}

#[tokio::test]
async fn the_prefix_search_and_every_sort_use_an_index_on_a_large_table() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    execute(
        &database,
        "INSERT INTO users (id, email, nickname, first_name, last_name, role, email_verified, password_hash) \
         SELECT gen_random_uuid(), 'bulk' || i || '@example.com', 'bulk_' || i, 'First' || i, 'Last' || i, \
                (ARRAY['ANONYMOUS', 'AUTHENTICATED', 'MANAGER'])[1 + i % 3], i % 3 <> 0, 'not-a-hash' \
         FROM generate_series(1, 20000) AS i",
    )
    .await;
    execute(&database, "ANALYZE users").await;

    let prefix = UserQuery { roles: vec![Role::Anonymous, Role::Authenticated], ..search("Bulk1234") };
    let plan = repository.explain_list_users(prefix.clone()).await.unwrap();
    assert!(plan.contains("Index") || plan.contains("Bitmap"), "{plan}");
    assert!(!plan.contains("Seq Scan on users"), "{plan}");
    for index in PREFIX_INDEXES {
        assert!(plan.contains(index), "the search does not use {index}:\n{plan}");
    }
    // bulk1234 and bulk12340 to bulk12349 by email, a third of them MANAGERs.
    let found = repository.list_users(UserQuery { roles: Role::ALL.to_vec(), ..prefix }).await.unwrap();
    assert_eq!(found.len(), 11);

    let sample = repository.list_users(everyone(1)).await.unwrap().remove(0);
    for (sort, index) in [
        (UserSort::CreatedAt, "users_created_at_id_idx"),
        (UserSort::CreatedAtDesc, "users_created_at_id_idx"),
        (UserSort::Email, "users_email_lower_key"),
        (UserSort::Nickname, "users_nickname_lower_key"),
    ] {
        for after in [None, Some(UserCursor::after(&sample, sort))] {
            let query = UserQuery { sort, after, roles: vec![Role::Anonymous, Role::Authenticated], ..everyone(20) };
            let plan = repository.explain_list_users(query).await.unwrap();
            assert!(plan.contains(index), "{sort:?} does not use {index}:\n{plan}");
            assert!(!plan.contains("Seq Scan on users"), "{sort:?}:\n{plan}");
        }
    }
}

#[tokio::test]
async fn a_cursor_of_another_order_is_an_error() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada", Role::Authenticated, "Ada").await;
    let query =
        UserQuery { sort: UserSort::Email, after: Some(UserCursor::after(&user, UserSort::Nickname)), ..everyone(10) };
    assert!(repository.list_users(query).await.is_err());
}

#[tokio::test]
async fn a_row_the_domain_refuses_is_left_out_of_a_listing_instead_of_failing_it() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let ada = insert(&repository, "ada@example.com", "ada", Role::Authenticated, "Ada").await;
    let broken = insert(&repository, "broken@example.com", "broken", Role::Authenticated, "Broken").await;
    let grace = insert(&repository, "grace@example.com", "grace", Role::Authenticated, "Grace").await;
    // Passes the length check in SQL, not the domain's address parser: there is no safe stand-in for a login.
    execute(&database, &format!("UPDATE users SET email = 'not an address' WHERE id = '{}'", broken.id)).await;

    assert_eq!(listed_set(&repository, everyone(100)).await, ids([&ada, &grace]));
}

#[tokio::test]
async fn every_listing_of_the_audit_trail_walks_an_index_on_a_large_table() {
    use users_domain::audit::{EventQuery, EventType};
    use users_domain::ports::AuditTrail as _;
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    // 200,000 events over 2,000 subjects and 50 actors, a few common types and a rare one, spread over months.
    execute(
        &database,
        "INSERT INTO audit_events (id, at, type, actor_id, subject_id) \
         SELECT gen_random_uuid(), now() - (i || ' minutes')::interval, \
                CASE WHEN i % 1000 = 0 THEN 'session.reuse_detected' \
                     ELSE (ARRAY['login.succeeded', 'login.failed', 'user.updated', 'session.revoked'])[1 + i % 4] END, \
                ('00000000-0000-4000-8000-' || lpad((i % 50)::text, 12, '0'))::uuid, \
                ('00000000-0000-4000-9000-' || lpad((i % 2000)::text, 12, '0'))::uuid \
         FROM generate_series(1, 200000) AS i",
    )
    .await;
    execute(&database, "ANALYZE audit_events").await;
    let subject = UserId::from_uuid(uuid::Uuid::parse_str("00000000-0000-4000-9000-000000000007").unwrap());
    let actor = UserId::from_uuid(uuid::Uuid::parse_str("00000000-0000-4000-8000-000000000007").unwrap());
    let page = EventQuery { limit: 51, ..EventQuery::default() };
    let first = repository.list_events(page.clone()).await.unwrap();
    assert_eq!(first.len(), 51);
    let cursor = first.last().map(|event| (event.at, event.id));
    for (query, index) in [
        (page.clone(), "audit_events_at_id_idx"),
        (EventQuery { after: cursor, ..page.clone() }, "audit_events_at_id_idx"),
        (EventQuery { subject_id: Some(subject), ..page.clone() }, "audit_events_subject_idx"),
        (EventQuery { subject_id: Some(subject), after: cursor, ..page.clone() }, "audit_events_subject_idx"),
        (EventQuery { actor_id: Some(actor), ..page.clone() }, "audit_events_actor_idx"),
        (EventQuery { kinds: vec![EventType::SessionReuseDetected], ..page.clone() }, "audit_events_type_idx"),
        // A common type is found soon enough walking the whole trail in order: either index, never a sort.
        (EventQuery { kinds: vec![EventType::LoginFailed], ..page.clone() }, "audit_events_"),
    ] {
        let plan = repository.explain_list_events(query.clone()).await.unwrap();
        assert!(plan.contains(index), "{query:?} does not use {index}:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{query:?}:\n{plan}");
        assert!(!plan.contains("Sort"), "{query:?} sorts instead of walking the index:\n{plan}");
    }
}
