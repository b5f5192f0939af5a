//! Picture records: the active picture and its history, the transactions that switch between them, the schema's
//! guarantees (one active picture per user, a user points only at its own picture) and the cascade from users.

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::{Duration, OffsetDateTime};
use users_domain::ports::{
    Guard, PictureRecords as _, PictureSize, PictureVariant, PictureWriteError, PortError, StoredPicture,
    UserStore as _,
};
use users_domain::user::{User, UserId};
use users_postgres::PgRepository;
use users_testkit::TestDatabase;
use uuid::Uuid;

use crate::support::{account, count, execute, new_user, now, repository, repository_with_connections, text};

/// Inserts a user.
async fn insert_user(repository: &PgRepository, nickname: &str) -> User {
    repository.insert_user(account(new_user(&format!("{nickname}@example.com"), nickname))).await.unwrap()
}

/// A new active picture of `user_id` uploaded at `created_at`, with all three sizes; `seed` varies the hashes.
fn picture(user_id: UserId, created_at: OffsetDateTime, seed: u8) -> StoredPicture {
    let id = Uuid::now_v7();
    let variants = PictureSize::ALL
        .into_iter()
        .map(|size| PictureVariant {
            size,
            content_type: if size == PictureSize::Original { "image/jpeg" } else { "image/png" }.to_owned(),
            width: size.max_edge(),
            height: size.max_edge() / 2,
            bytes: u64::from(size.max_edge()) * 10 + u64::from(seed),
            sha256: format!("{seed:02x}{}", size.as_str().len()).repeat(32).chars().take(64).collect(),
        })
        .collect();
    StoredPicture {
        id,
        user_id,
        created_at,
        archived: false,
        prefix: StoredPicture::active_prefix(user_id, id),
        variants,
    }
}

/// `picture` as it reads once archived.
fn archived(picture: &StoredPicture) -> StoredPicture {
    StoredPicture { archived: true, ..picture.clone() }
}

/// The ids of `pictures`, in order.
fn ids(pictures: &[StoredPicture]) -> Vec<Uuid> {
    pictures.iter().map(|picture| picture.id).collect()
}

/// The user's `profile_picture_id`, as text.
async fn profile_picture_id(database: &TestDatabase, user: &User) -> Option<String> {
    text(database, &format!("SELECT profile_picture_id::text AS value FROM users WHERE id = '{}'", user.id)).await
}

/// How many rows `table` holds.
async fn rows(database: &TestDatabase, table: &str) -> i64 {
    count(database, &format!("SELECT count(*) AS count FROM {table}")).await
}

/// Runs a statement directly and returns its outcome instead of unwrapping it.
async fn try_execute(database: &TestDatabase, statement: &str) -> Result<usize, diesel::result::Error> {
    let mut connection = AsyncPgConnection::establish(&database.url()).await.unwrap();
    diesel::sql_query(statement).execute(&mut connection).await
}

#[tokio::test]
async fn an_inserted_picture_reads_back_as_the_active_one_with_its_sizes() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    let new = picture(user.id, now(), 1);
    let at = now() + Duration::seconds(1);

    let previous = repository.insert_active_picture(new.clone(), at, Vec::new()).await.unwrap();
    assert_eq!(previous, None);
    assert_eq!(repository.active_picture(user.id).await.unwrap(), Some(new.clone()));
    assert_eq!(repository.archived_pictures(user.id).await.unwrap(), []);
    let stored = repository.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(stored.profile_picture_id, Some(new.id));
    assert_eq!(stored.updated_at, at);
    assert_eq!(rows(&database, "picture_variants").await, 3);
}

#[tokio::test]
async fn a_user_without_pictures_has_no_active_picture_and_no_history() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    assert_eq!(repository.active_picture(user.id).await.unwrap(), None);
    assert_eq!(repository.archived_pictures(user.id).await.unwrap(), []);
    assert_eq!(repository.active_picture(UserId::generate()).await.unwrap(), None);
    assert_eq!(repository.archived_pictures(UserId::generate()).await.unwrap(), []);
}

#[tokio::test]
async fn a_second_upload_archives_the_first_and_returns_it() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    let first = picture(user.id, now(), 1);
    let second = picture(user.id, now() + Duration::seconds(1), 2);

    repository.insert_active_picture(first.clone(), now(), Vec::new()).await.unwrap();
    let previous = repository.insert_active_picture(second.clone(), now(), Vec::new()).await.unwrap();
    // Archived, with its sizes, and still where its objects are until the service moves them.
    assert_eq!(previous, Some(archived(&first)));
    assert_eq!(repository.active_picture(user.id).await.unwrap(), Some(second.clone()));
    assert_eq!(repository.archived_pictures(user.id).await.unwrap(), [archived(&first)]);
    assert_eq!(profile_picture_id(&database, &user).await, Some(second.id.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_for_one_user_all_succeed_one_after_the_other_and_leave_one_active() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 4).await;
    let user = insert_user(&repository, "ada").await;

    for round in 0..8 {
        let one = picture(user.id, now(), 1);
        let other = picture(user.id, now(), 2);
        let (first, second) = tokio::join!(
            repository.insert_active_picture(one.clone(), now(), Vec::new()),
            repository.insert_active_picture(other.clone(), now(), Vec::new()),
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        // The later of the two archives the earlier, which archived the previous round's winner (if any).
        let active = repository.active_picture(user.id).await.unwrap().unwrap();
        let (winner, loser, loser_saw) =
            if active.id == one.id { (&one, &other, &second) } else { (&other, &one, &first) };
        assert_eq!(active.id, winner.id, "round {round}");
        let winner_saw = if active.id == one.id { &first } else { &second };
        assert_eq!(winner_saw.as_ref().map(|picture| picture.id), Some(loser.id), "round {round}");
        assert_eq!(loser_saw.is_some(), round > 0, "round {round}");
        let active_rows =
            format!("SELECT count(*) AS count FROM pictures WHERE user_id = '{}' AND NOT archived", user.id);
        assert_eq!(count(&database, &active_rows).await, 1, "round {round}");
        assert_eq!(profile_picture_id(&database, &user).await, Some(winner.id.to_string()), "round {round}");
    }
    assert_eq!(repository.archived_pictures(user.id).await.unwrap().len(), 15);
}

#[tokio::test]
async fn the_schema_refuses_a_second_active_picture_for_one_user() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    repository.insert_active_picture(picture(user.id, now(), 1), now(), Vec::new()).await.unwrap();

    let second = format!(
        "INSERT INTO pictures (id, user_id, created_at, archived, prefix) VALUES ('{}', '{}', now(), false, 'p')",
        Uuid::now_v7(),
        user.id
    );
    let error = try_execute(&database, &second).await.unwrap_err();
    assert!(error.to_string().contains("pictures_one_active_per_user"), "{error}");
}

#[tokio::test]
async fn a_user_can_only_point_at_a_picture_of_their_own() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let ada = insert_user(&repository, "ada").await;
    let grace = insert_user(&repository, "grace").await;
    let graces = picture(grace.id, now(), 1);
    repository.insert_active_picture(graces.clone(), now(), Vec::new()).await.unwrap();

    let steal = format!("UPDATE users SET profile_picture_id = '{}' WHERE id = '{}'", graces.id, ada.id);
    let error = try_execute(&database, &steal).await.unwrap_err();
    assert!(error.to_string().contains("users_profile_picture_fkey"), "{error}");
    let dangling = format!("UPDATE users SET profile_picture_id = '{}' WHERE id = '{}'", Uuid::now_v7(), ada.id);
    assert!(try_execute(&database, &dangling).await.is_err());
}

#[tokio::test]
async fn archiving_leaves_no_active_picture_and_clears_the_users_picture() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    let first = picture(user.id, now(), 1);
    repository.insert_active_picture(first.clone(), now(), Vec::new()).await.unwrap();
    let at = now() + Duration::seconds(5);

    let archived_now = repository.archive_active_picture(user.id, at, Vec::new()).await.unwrap();
    assert_eq!(archived_now, Some(archived(&first)));
    assert_eq!(repository.active_picture(user.id).await.unwrap(), None);
    assert_eq!(repository.archived_pictures(user.id).await.unwrap(), [archived(&first)]);
    let stored = repository.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(stored.profile_picture_id, None);
    assert_eq!(stored.updated_at, at);

    // Nothing active any more: nothing to archive, and the user is left as it is.
    assert_eq!(repository.archive_active_picture(user.id, at + Duration::seconds(5), Vec::new()).await.unwrap(), None);
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap().updated_at, at);
    assert_eq!(repository.archive_active_picture(UserId::generate(), at, Vec::new()).await.unwrap(), None);
}

#[tokio::test]
async fn restoring_swaps_the_chosen_picture_with_the_active_one() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    let first = picture(user.id, now(), 1);
    let second = picture(user.id, now() + Duration::seconds(1), 2);
    repository.insert_active_picture(first.clone(), now(), Vec::new()).await.unwrap();
    repository.insert_active_picture(second.clone(), now(), Vec::new()).await.unwrap();
    let at = now() + Duration::seconds(5);

    let (restored, previous) = repository.restore_picture(user.id, first.id, at, Vec::new()).await.unwrap().unwrap();
    assert_eq!(restored, first, "active again, with its sizes");
    assert_eq!(previous, Some(archived(&second)));
    assert_eq!(repository.active_picture(user.id).await.unwrap(), Some(first.clone()));
    assert_eq!(repository.archived_pictures(user.id).await.unwrap(), [archived(&second)]);
    let stored = repository.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(stored.profile_picture_id, Some(first.id));
    assert_eq!(stored.updated_at, at);

    // With no active picture, restoring archives nothing.
    repository.archive_active_picture(user.id, at, Vec::new()).await.unwrap();
    let (restored, previous) = repository.restore_picture(user.id, second.id, at, Vec::new()).await.unwrap().unwrap();
    assert_eq!((restored, previous), (second.clone(), None));
    assert_eq!(profile_picture_id(&database, &user).await, Some(second.id.to_string()));
    assert_eq!(repository.archived_pictures(user.id).await.unwrap(), [archived(&first)]);
}

#[tokio::test]
async fn restoring_another_users_picture_the_active_one_or_an_unknown_one_finds_nothing_and_changes_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let ada = insert_user(&repository, "ada").await;
    let grace = insert_user(&repository, "grace").await;
    let adas_old = picture(ada.id, now(), 1);
    let adas = picture(ada.id, now() + Duration::seconds(1), 2);
    let graces_old = picture(grace.id, now(), 3);
    let graces = picture(grace.id, now() + Duration::seconds(1), 4);
    for new in [&adas_old, &adas, &graces_old, &graces] {
        repository.insert_active_picture(new.clone(), now(), Vec::new()).await.unwrap();
    }
    let before = repository.find_user(ada.id).await.unwrap().unwrap();
    let later = now() + Duration::seconds(5);

    assert_eq!(
        repository.restore_picture(ada.id, graces_old.id, later, Vec::new()).await.unwrap(),
        None,
        "another user's"
    );
    assert_eq!(repository.restore_picture(ada.id, adas.id, later, Vec::new()).await.unwrap(), None, "the active one");
    assert_eq!(repository.restore_picture(ada.id, Uuid::now_v7(), later, Vec::new()).await.unwrap(), None, "unknown");
    assert_eq!(repository.restore_picture(UserId::generate(), adas_old.id, later, Vec::new()).await.unwrap(), None);

    assert_eq!(repository.active_picture(ada.id).await.unwrap(), Some(adas));
    assert_eq!(repository.active_picture(grace.id).await.unwrap(), Some(graces));
    assert_eq!(repository.archived_pictures(grace.id).await.unwrap(), [archived(&graces_old)]);
    assert_eq!(repository.find_user(ada.id).await.unwrap().unwrap(), before);
}

#[tokio::test]
async fn the_history_lists_archived_pictures_newest_first() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    let base = now();
    // Uploaded in an order that differs from their creation times, which alone decide the order of the history.
    let pictures: Vec<StoredPicture> =
        [3, 0, 2, 1, 4].into_iter().map(|minutes| picture(user.id, base + Duration::minutes(minutes), 1)).collect();
    for new in &pictures {
        repository.insert_active_picture(new.clone(), now(), Vec::new()).await.unwrap();
    }
    let by_minute = |minutes: usize| pictures[[1, 3, 2, 0, 4][minutes]].id;

    let history = repository.archived_pictures(user.id).await.unwrap();
    assert_eq!(ids(&history), [by_minute(3), by_minute(2), by_minute(1), by_minute(0)]);
    assert!(history.iter().all(|picture| picture.archived && picture.variants.len() == 3));
    let active = repository.active_picture(user.id).await.unwrap().unwrap();
    assert_eq!(active.id, pictures[4].id, "the last upload is the active one");
    assert!(!active.archived);
}

#[tokio::test]
async fn a_picture_for_a_deleted_user_is_refused_as_user_gone_and_nothing_is_stored() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    repository.delete_user(user.id, Guard::default(), Vec::new()).await.unwrap();

    let error = repository.insert_active_picture(picture(user.id, now(), 1), now(), Vec::new()).await.unwrap_err();
    assert!(matches!(error, PictureWriteError::UserGone), "{error:?}");
    let error =
        repository.insert_active_picture(picture(UserId::generate(), now(), 1), now(), Vec::new()).await.unwrap_err();
    assert!(matches!(error, PictureWriteError::UserGone), "{error:?}");
    assert_eq!(rows(&database, "pictures").await, 0);
    assert_eq!(rows(&database, "picture_variants").await, 0);
}

#[tokio::test]
async fn a_picture_without_every_size_or_marked_archived_is_refused_and_nothing_is_stored() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    let mut incomplete = picture(user.id, now(), 1);
    incomplete.variants.pop();
    let mut doubled = picture(user.id, now(), 1);
    doubled.variants[2] = doubled.variants[1].clone();
    let pre_archived = StoredPicture { archived: true, ..picture(user.id, now(), 1) };

    for refused in [incomplete, doubled, pre_archived] {
        let error = repository.insert_active_picture(refused, now(), Vec::new()).await.unwrap_err();
        assert!(matches!(error, PictureWriteError::Port(PortError::Unknown(_))), "{error:?}");
    }
    assert_eq!(rows(&database, "pictures").await, 0);
    assert_eq!(profile_picture_id(&database, &user).await, None);
}

#[tokio::test]
async fn a_failed_upload_leaves_the_previous_picture_active() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    let first = picture(user.id, now(), 1);
    repository.insert_active_picture(first.clone(), now(), Vec::new()).await.unwrap();
    // A hash the schema refuses fails the last insert of the transaction, after the first picture was archived.
    let mut broken = picture(user.id, now(), 2);
    broken.variants[2].sha256 = "not hex".to_owned();

    let error = repository.insert_active_picture(broken, now(), Vec::new()).await.unwrap_err();
    assert!(matches!(error, PictureWriteError::Port(PortError::Unknown(_))), "{error:?}");
    assert_eq!(repository.active_picture(user.id).await.unwrap(), Some(first.clone()));
    assert_eq!(rows(&database, "pictures").await, 1);
    assert_eq!(profile_picture_id(&database, &user).await, Some(first.id.to_string()));
}

#[tokio::test]
async fn deleting_a_user_removes_their_pictures_and_sizes_but_no_one_elses() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let ada = insert_user(&repository, "ada").await;
    let grace = insert_user(&repository, "grace").await;
    for seed in 0..3 {
        repository.insert_active_picture(picture(ada.id, now(), seed), now(), Vec::new()).await.unwrap();
    }
    let graces = picture(grace.id, now(), 9);
    repository.insert_active_picture(graces.clone(), now(), Vec::new()).await.unwrap();

    // The user points at its active picture, which points back at the user: the cascade must still go through.
    repository.delete_user(ada.id, Guard::default(), Vec::new()).await.unwrap();
    assert_eq!(repository.active_picture(ada.id).await.unwrap(), None);
    assert_eq!(repository.archived_pictures(ada.id).await.unwrap(), []);
    assert_eq!(rows(&database, "pictures").await, 1);
    assert_eq!(rows(&database, "picture_variants").await, 3);
    assert_eq!(repository.active_picture(grace.id).await.unwrap(), Some(graces));
}

#[tokio::test]
async fn finishing_a_move_records_the_new_prefix_and_ends_the_recorded_move() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    let first = picture(user.id, now(), 1);
    repository.insert_active_picture(first.clone(), now(), Vec::new()).await.unwrap();
    assert_eq!(repository.misplaced_pictures(10).await.unwrap(), [], "a new picture is where it belongs");
    repository.insert_active_picture(picture(user.id, now(), 2), now(), Vec::new()).await.unwrap();
    assert_eq!(repository.misplaced_pictures(10).await.unwrap(), [archived(&first)]);
    let place = Uuid::now_v7();
    let archive = StoredPicture::archive_prefix(user.id, place);

    assert!(repository.finish_move(first.id, first.prefix.clone(), archive.clone(), true).await.unwrap());
    let history = repository.archived_pictures(user.id).await.unwrap();
    assert_eq!(history, [StoredPicture { prefix: archive, ..archived(&first) }]);
    assert!(history[0].is_placed());
    assert_eq!(
        history[0].keys(),
        [
            format!("profile_pictures/{}/archive/{place}/original.jpg", user.id),
            format!("profile_pictures/{}/archive/{place}/medium.png", user.id),
            format!("profile_pictures/{}/archive/{place}/thumb.png", user.id),
        ]
    );
    assert_eq!(repository.misplaced_pictures(10).await.unwrap(), []);
    // A picture that went with its user has nothing left to move.
    let gone = "profile_pictures/gone".to_owned();
    assert!(!repository.finish_move(Uuid::now_v7(), gone.clone(), gone, true).await.unwrap());
}

#[tokio::test]
async fn where_the_objects_are_is_read_from_the_prefix_whatever_wrote_it() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    let first = picture(user.id, now(), 1);
    repository.insert_active_picture(first.clone(), now(), Vec::new()).await.unwrap();
    repository.insert_active_picture(picture(user.id, now(), 2), now(), Vec::new()).await.unwrap();
    assert_eq!(repository.misplaced_pictures(10).await.unwrap(), [archived(&first)]);

    // A writer that knows nothing of recorded moves (an earlier version moving the objects itself) re-points the
    // row: the move is done as far as the row can tell, and nobody moves it again.
    let archive = StoredPicture::archive_prefix(user.id, Uuid::now_v7());
    execute(&database, &format!("UPDATE pictures SET prefix = '{archive}' WHERE id = '{}'", first.id)).await;
    assert_eq!(repository.misplaced_pictures(10).await.unwrap(), []);
    // Pointed back at an active prefix, it is a move to do again.
    execute(&database, &format!("UPDATE pictures SET prefix = '{}' WHERE id = '{}'", first.prefix, first.id)).await;
    assert_eq!(repository.misplaced_pictures(10).await.unwrap(), [archived(&first)]);
    // The column is computed by Postgres, never written.
    let mut connection = AsyncPgConnection::establish(&database.url()).await.unwrap();
    let written = diesel::sql_query("UPDATE pictures SET objects_archived = true").execute(&mut connection).await;
    assert!(written.is_err(), "{written:?}");
}

#[tokio::test]
async fn the_moves_to_do_come_in_varying_order_so_failing_ones_cannot_hold_every_place() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_user(&repository, "ada").await;
    for n in 1..=6 {
        repository.insert_active_picture(picture(user.id, now(), n), now(), Vec::new()).await.unwrap();
    }
    assert_eq!(repository.misplaced_pictures(10).await.unwrap().len(), 5, "five archived, none moved");
    // One place per call: oldest-first would name the same picture every time. At random, 40 calls all naming the
    // same one of five has a chance of 5 in 5^40.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let first = repository.misplaced_pictures(1).await.unwrap();
        assert_eq!(first.len(), 1);
        seen.insert(first[0].id);
    }
    assert!(seen.len() > 1, "always {seen:?}");
}
