//! User administration: the keyset-paginated, filtered listing with its prefix search and query plans, and the
//! administrator's updates and deletions under the last-admin rule.

use std::collections::BTreeSet;

use users_domain::accounts::ProfileChanges;
use users_domain::admin::{AdminChanges, AdminWriteError, UserCursor, UserQuery, UserSort};
use users_domain::permissions::Role;
use users_domain::ports::UserRepository as _;
use users_domain::user::{Nickname, PersonName, User, UserId};
use users_postgres::PgRepository;
use users_testkit::TestDatabase;

use crate::support::{
    count, execute, mail, new_session, new_user, now, repository, repository_with_connections, token_hash,
};

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

/// A first page of everyone, oldest first.
fn everyone(limit: u32) -> UserQuery {
    UserQuery {
        limit,
        sort: UserSort::CreatedAt,
        after: None,
        prefix: None,
        roles: Role::ALL.to_vec(),
        email_verified: None,
        is_locked: None,
        is_professional: None,
    }
}

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
    repository.insert_user(new).await.unwrap()
}

/// Inserts an unlocked ADMIN.
async fn admin(repository: &PgRepository, nickname: &str) -> User {
    insert(repository, &format!("{nickname}@example.com"), nickname, Role::Admin, "Admin").await
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

/// Changes that only set the role.
fn role(role: Role) -> AdminChanges {
    AdminChanges { role: Some(role), ..AdminChanges::default() }
}

/// Changes that only lock the user.
fn lock() -> AdminChanges {
    AdminChanges { is_locked: Some(true), ..AdminChanges::default() }
}

async fn mails(database: &TestDatabase) -> i64 {
    count(database, "SELECT count(*) AS count FROM mail_outbox").await
}

async fn unlocked_admins(database: &TestDatabase) -> i64 {
    count(database, "SELECT count(*) AS count FROM users WHERE role = 'ADMIN' AND NOT is_locked").await
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
    let by_last_name = repository.insert_user(new).await.unwrap();
    let mut decoy = new_user("dave@example.com", "dave_z");
    decoy.last_name = PersonName::parse("Xelda").unwrap();
    repository.insert_user(decoy).await.unwrap();

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
async fn an_admin_update_applies_profile_role_and_flags_and_queues_the_mails() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let mut new = new_user("ada@example.com", "ada");
    new.last_name = PersonName::parse("Lovelace").unwrap();
    let user = repository.insert_user(new).await.unwrap();
    let at = now();
    let changes = AdminChanges {
        expected_role: None,
        profile: ProfileChanges {
            nickname: Some(Nickname::parse("countess").unwrap()),
            first_name: Some(None),
            ..ProfileChanges::default()
        },
        role: Some(Role::Manager),
        is_professional: None,
        is_locked: Some(true),
        email: None,
        email_token: None,
        email_verified: Some(true),
    };

    let mails_sent = vec![mail("ada@example.com", "Your account changed"), mail("ada@example.com", "Welcome")];
    let updated = repository.admin_update_user(user.id, changes, mails_sent, at).await.unwrap();
    assert_eq!(updated.nickname.as_str(), "countess");
    assert_eq!(updated.first_name, None, "cleared");
    assert_eq!(updated.last_name, user.last_name, "left alone");
    assert_eq!(updated.role, Role::Manager);
    assert!(updated.is_locked && updated.email_verified && !updated.is_professional);
    assert_eq!(updated.professional_status_updated_at, None);
    assert_eq!(updated.updated_at, at);
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap(), updated);
    assert_eq!(mails(&database).await, 2);
}

#[tokio::test]
async fn the_professional_status_time_is_set_only_when_the_status_changes() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada", Role::Authenticated, "Ada").await;
    let professional =
        |is_professional| AdminChanges { is_professional: Some(is_professional), ..AdminChanges::default() };

    let unchanged = repository.admin_update_user(user.id, professional(false), vec![], now()).await.unwrap();
    assert_eq!(unchanged.professional_status_updated_at, None, "already not professional");

    let granted_at = now();
    let granted = repository.admin_update_user(user.id, professional(true), vec![], granted_at).await.unwrap();
    assert!(granted.is_professional);
    assert_eq!(granted.professional_status_updated_at, Some(granted_at));

    let again = repository.admin_update_user(user.id, professional(true), vec![], now()).await.unwrap();
    assert_eq!(again.professional_status_updated_at, Some(granted_at), "granting twice keeps the first time");
    let other = repository.admin_update_user(user.id, role(Role::Manager), vec![], now()).await.unwrap();
    assert_eq!(other.professional_status_updated_at, Some(granted_at), "other changes leave it alone");

    let withdrawn_at = now();
    let withdrawn = repository.admin_update_user(user.id, professional(false), vec![], withdrawn_at).await.unwrap();
    assert!(!withdrawn.is_professional);
    assert_eq!(withdrawn.professional_status_updated_at, Some(withdrawn_at));
}

#[tokio::test]
async fn a_taken_nickname_is_refused_and_nothing_changes_or_is_queued() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada", Role::Authenticated, "Ada").await;
    insert(&repository, "grace@example.com", "grace", Role::Authenticated, "Grace").await;
    let changes = AdminChanges {
        profile: ProfileChanges { nickname: Some(Nickname::parse("GRACE").unwrap()), ..ProfileChanges::default() },
        is_professional: Some(true),
        ..AdminChanges::default()
    };

    let error = repository
        .admin_update_user(user.id, changes, vec![mail("ada@example.com", "Changed")], now())
        .await
        .unwrap_err();
    assert!(matches!(error, AdminWriteError::NicknameTaken), "{error:?}");
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap(), user);
    assert_eq!(mails(&database).await, 0);
}

#[tokio::test]
async fn updating_or_deleting_a_missing_user_is_not_found_and_queues_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    admin(&repository, "boss").await;
    for changes in [AdminChanges::default(), role(Role::Manager), lock()] {
        let error = repository
            .admin_update_user(UserId::generate(), changes, vec![mail("ada@example.com", "Changed")], now())
            .await
            .unwrap_err();
        assert!(matches!(error, AdminWriteError::NotFound), "{error:?}");
    }
    let error = repository.admin_delete_user(UserId::generate(), None).await.unwrap_err();
    assert!(matches!(error, AdminWriteError::NotFound), "{error:?}");
    assert_eq!(mails(&database).await, 0);
}

#[tokio::test]
async fn the_only_unlocked_admin_cannot_be_demoted_locked_or_deleted() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let boss = admin(&repository, "boss").await;
    // A locked ADMIN does not count: it could not sign in to administer anything.
    let dormant = admin(&repository, "dormant").await;
    execute(&database, "UPDATE users SET is_locked = true WHERE nickname = 'dormant'").await;

    for changes in [
        role(Role::Manager),
        role(Role::Anonymous),
        lock(),
        AdminChanges { is_locked: Some(true), ..role(Role::Admin) },
    ] {
        let error = repository
            .admin_update_user(boss.id, changes.clone(), vec![mail("boss@example.com", "Changed")], now())
            .await
            .unwrap_err();
        assert!(matches!(error, AdminWriteError::LastAdmin), "{changes:?}: {error:?}");
    }
    let error = repository.admin_delete_user(boss.id, None).await.unwrap_err();
    assert!(matches!(error, AdminWriteError::LastAdmin), "{error:?}");

    assert_eq!(repository.find_user(boss.id).await.unwrap().unwrap(), boss, "nothing changed");
    assert_eq!(mails(&database).await, 0, "nothing queued");
    assert_eq!(unlocked_admins(&database).await, 1);
    assert!(repository.find_user(dormant.id).await.unwrap().is_some());
}

#[tokio::test]
async fn changes_that_keep_an_unlocked_admin_are_allowed_with_a_single_admin() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let boss = admin(&repository, "boss").await;
    let dormant = admin(&repository, "dormant").await;
    execute(&database, "UPDATE users SET is_locked = true WHERE nickname = 'dormant'").await;
    let member = insert(&repository, "member@example.com", "member", Role::Manager, "Member").await;

    let profile = AdminChanges {
        expected_role: None,
        profile: ProfileChanges { first_name: Some(None), ..ProfileChanges::default() },
        role: Some(Role::Admin),
        is_locked: Some(false),
        is_professional: Some(true),
        email_verified: Some(true),
        email: None,
        email_token: None,
    };
    let updated = repository.admin_update_user(boss.id, profile, vec![], now()).await.unwrap();
    assert!(updated.role == Role::Admin && !updated.is_locked && updated.is_professional);

    // A locked ADMIN can be demoted while another ADMIN is unlocked, and anyone else locked and deleted.
    assert_eq!(
        repository.admin_update_user(dormant.id, role(Role::Manager), vec![], now()).await.unwrap().role,
        Role::Manager
    );
    assert!(repository.admin_update_user(member.id, lock(), vec![], now()).await.unwrap().is_locked);
    repository.admin_delete_user(member.id, None).await.unwrap();
    repository.admin_delete_user(dormant.id, None).await.unwrap();
    assert_eq!(count(&database, "SELECT count(*) AS count FROM users").await, 1);
}

#[tokio::test]
async fn with_two_admins_one_can_be_demoted_locked_or_deleted_and_then_the_other_cannot() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;

    let first = admin(&repository, "first").await;
    let second = admin(&repository, "second").await;
    let demoted = repository.admin_update_user(first.id, role(Role::Manager), vec![], now()).await.unwrap();
    assert_eq!(demoted.role, Role::Manager);
    let error = repository.admin_update_user(second.id, role(Role::Manager), vec![], now()).await.unwrap_err();
    assert!(matches!(error, AdminWriteError::LastAdmin), "{error:?}");

    let third = admin(&repository, "third").await;
    assert!(repository.admin_update_user(second.id, lock(), vec![], now()).await.unwrap().is_locked);
    let error = repository.admin_update_user(third.id, lock(), vec![], now()).await.unwrap_err();
    assert!(matches!(error, AdminWriteError::LastAdmin), "{error:?}");

    let fourth = admin(&repository, "fourth").await;
    repository.admin_delete_user(third.id, None).await.unwrap();
    let error = repository.admin_delete_user(fourth.id, None).await.unwrap_err();
    assert!(matches!(error, AdminWriteError::LastAdmin), "{error:?}");
    assert_eq!(unlocked_admins(&database).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_concurrent_removals_of_the_last_two_admins_exactly_one_succeeds() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 4).await;
    let first = admin(&repository, "first").await;
    let second = admin(&repository, "second").await;

    for round in 0..12 {
        execute(&database, "UPDATE users SET role = 'ADMIN', is_locked = false").await;
        // Demote both, lock both, or demote one while locking the other; the loser must see the winner's commit
        // and be refused as the last admin, never deadlock or fail otherwise.
        let (first_changes, second_changes) = match round % 3 {
            0 => (role(Role::Manager), role(Role::Authenticated)),
            1 => (lock(), lock()),
            _ => (role(Role::Manager), lock()),
        };
        let (one, other) = tokio::join!(
            repository.admin_update_user(first.id, first_changes, vec![mail("first@example.com", "Changed")], now()),
            repository.admin_update_user(second.id, second_changes, vec![mail("second@example.com", "Changed")], now()),
        );
        let outcomes = [one.map(drop), other.map(drop)];
        assert_eq!(outcomes.iter().filter(|outcome| outcome.is_ok()).count(), 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes.iter().any(|outcome| matches!(outcome, Err(AdminWriteError::LastAdmin))),
            "round {round}: {outcomes:?}"
        );
        assert_eq!(unlocked_admins(&database).await, 1, "round {round}");
        assert_eq!(mails(&database).await, round + 1, "round {round}: only the winner's mail is queued");
    }

    let (one, other) =
        tokio::join!(repository.admin_delete_user(first.id, None), repository.admin_delete_user(second.id, None));
    let outcomes = [one, other];
    assert_eq!(outcomes.iter().filter(|outcome| outcome.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().any(|outcome| matches!(outcome, Err(AdminWriteError::LastAdmin))), "{outcomes:?}");
    assert_eq!(unlocked_admins(&database).await, 1);
}

#[tokio::test]
async fn an_admin_deletion_removes_the_user_with_their_sessions() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    admin(&repository, "boss").await;
    let user = insert(&repository, "ada@example.com", "ada", Role::Authenticated, "Ada").await;
    let login = now();
    repository.start_session(new_session(user.id, login, token_hash()), login).await.unwrap();

    repository.admin_delete_user(user.id, None).await.unwrap();
    assert_eq!(repository.find_user(user.id).await.unwrap(), None);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM sessions").await, 0);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM refresh_tokens").await, 0);
    let error = repository.admin_delete_user(user.id, None).await.unwrap_err();
    assert!(matches!(error, AdminWriteError::NotFound), "{error:?}");
}

#[tokio::test]
async fn a_write_checked_against_a_role_the_row_no_longer_has_is_refused_as_not_found() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let _boss = admin(&repository, "boss").await;
    let target = insert(&repository, "target@example.com", "target", Role::Authenticated, "Target").await;
    // Promoted to ADMIN after a MANAGER's rights were checked against AUTHENTICATED.
    repository.admin_update_user(target.id, role(Role::Admin), vec![], now()).await.unwrap();
    let stale = AdminChanges { expected_role: Some(Role::Authenticated), ..lock() };
    let error = repository.admin_update_user(target.id, stale, vec![], now()).await.unwrap_err();
    assert!(matches!(error, AdminWriteError::NotFound), "{error:?}");
    let error = repository.admin_delete_user(target.id, Some(Role::Authenticated)).await.unwrap_err();
    assert!(matches!(error, AdminWriteError::NotFound), "{error:?}");
    let stored = repository.find_user(target.id).await.unwrap().unwrap();
    assert!(!stored.is_locked && stored.role == Role::Admin, "nothing changed");
}

#[tokio::test]
async fn marking_an_anonymous_users_email_verified_promotes_them() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "anon@example.com", "anon", Role::Anonymous, "Anon").await;
    let verify = AdminChanges { email_verified: Some(true), ..AdminChanges::default() };
    let updated = repository.admin_update_user(user.id, verify, vec![], now()).await.unwrap();
    assert!(updated.email_verified);
    assert_eq!(updated.role, Role::Authenticated);
}
