//! Profile picture records: the domain's [`PictureRecords`] on the `pictures` and `picture_variants` tables.
//!
//! Every write that changes which picture is active (a new upload, archiving, restoring) is one transaction that
//! starts by locking the user's row. Such writes for one user therefore run one after the other, each seeing the
//! outcome of the one before, and a deletion of the user either waits for them or makes them find the user gone.
//! The unique index on the active picture backs this up: a write that slipped past the lock would fail, not leave
//! two active pictures.
//!
//! A picture is always read with its sizes in one statement (a join), so a read costs one round trip however many
//! pictures it returns, and never sees a picture without the sizes it had when the statement started.

use diesel::dsl::not;
use diesel::pg::Pg;
use diesel::prelude::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _};
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::audit::AuditEvent;
use users_domain::ports::{PictureRecords, PictureSize, PictureWriteError, PortError, StoredPicture};
use users_domain::user::UserId;
use uuid::Uuid;

use crate::audit::insert_events;
use crate::errors::{TxError, query_error};
use crate::repository::PgRepository;
use crate::rows::{NewPictureRow, NewPictureVariantRow, PictureRow, PictureVariantRow, PictureWithVariants};
use crate::schema::{picture_variants, pictures, users};

/// Which pictures a read returns.
///
/// Conditions on `archived` here and below are the bare column or its negation, the way the partial index on
/// active pictures states its predicate (`NOT archived`), never a comparison with a bound value: a statement kept
/// prepared and run with a generic plan could not prove that `archived = $2` matches that predicate.
#[derive(Debug, Clone, Copy)]
enum Which<'a> {
    /// The user's active picture, if any.
    Active(Uuid),
    /// The user's archived pictures.
    Archived(Uuid),
    /// The pictures with these ids.
    Ids(&'a [Uuid]),
}

/// The pictures `which` selects, each with its sizes, newest first (the id breaking ties), in one statement.
async fn load(connection: &mut AsyncPgConnection, which: Which<'_>) -> Result<Vec<StoredPicture>, TxError<PortError>> {
    let mut query = pictures::table
        .left_join(picture_variants::table)
        .select((PictureRow::as_select(), Option::<PictureVariantRow>::as_select()))
        .order((pictures::created_at.desc(), pictures::id.desc()))
        .into_boxed::<Pg>();
    query = match which {
        Which::Active(user_id) => query.filter(pictures::user_id.eq(user_id)).filter(not(pictures::archived)),
        Which::Archived(user_id) => query.filter(pictures::user_id.eq(user_id)).filter(pictures::archived),
        Which::Ids(ids) => query.filter(pictures::id.eq_any(ids)),
    };
    let rows = query.load::<(PictureRow, Option<PictureVariantRow>)>(connection).await?;
    // The order puts the rows of one picture next to each other, so grouping needs only the previous picture.
    let mut grouped: Vec<PictureWithVariants> = Vec::new();
    for (picture, variant) in rows {
        match grouped.last_mut() {
            Some(last) if last.picture.id == picture.id => last.variants.extend(variant),
            _ => grouped.push(PictureWithVariants { picture, variants: variant.into_iter().collect() }),
        }
    }
    grouped
        .into_iter()
        .map(|group| StoredPicture::try_from(group).map_err(|error| TxError::Abort(PortError::Unknown(error))))
        .collect()
}

/// Runs a read outside any transaction and translates its failure.
async fn read(
    connection: &mut AsyncPgConnection,
    which: Which<'_>,
    context: &'static str,
) -> Result<Vec<StoredPicture>, PortError> {
    let loaded = load(connection, which).await;
    loaded.map_err(|error| error.into_port(connection, context))
}

/// Locks the user's row for a picture write; `false` when the user does not exist (any more).
///
/// `FOR NO KEY UPDATE` is the lock the later update of `profile_picture_id` takes anyway, so it blocks no one that
/// update would not; a deletion of the user needs a stronger lock and waits for the transaction to end.
async fn lock_user(connection: &mut AsyncPgConnection, user_id: Uuid) -> Result<bool, DieselError> {
    let locked = users::table
        .find(user_id)
        .select(users::id)
        .for_no_key_update()
        .get_result::<Uuid>(connection)
        .await
        .optional()?;
    Ok(locked.is_some())
}

/// Archives the user's active picture, if any, and returns its id.
async fn archive_active(connection: &mut AsyncPgConnection, user_id: Uuid) -> Result<Option<Uuid>, DieselError> {
    diesel::update(pictures::table)
        .filter(pictures::user_id.eq(user_id))
        .filter(not(pictures::archived))
        .set(pictures::archived.eq(true))
        .returning(pictures::id)
        .get_result(connection)
        .await
        .optional()
}

/// Points the user at `picture_id` (or at none) and records the change time.
async fn point_user_at(
    connection: &mut AsyncPgConnection,
    user_id: Uuid,
    picture_id: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<(), DieselError> {
    diesel::update(users::table.find(user_id))
        .set((users::profile_picture_id.eq(picture_id), users::updated_at.eq(now)))
        .execute(connection)
        .await
        .map(drop)
}

/// The one picture of `loaded` with id `id`; its absence means a row vanished inside the transaction, a bug.
fn take<E: From<PortError>>(loaded: &mut Vec<StoredPicture>, id: Uuid) -> Result<StoredPicture, TxError<E>> {
    match loaded.iter().position(|picture| picture.id == id) {
        Some(index) => Ok(loaded.swap_remove(index)),
        None => Err(TxError::Abort(E::from(PortError::Unknown(anyhow::anyhow!(
            "picture {id} vanished inside the transaction that changed it"
        ))))),
    }
}

/// A read inside a transaction whose error type is the method's own.
async fn load_ids<E: From<PortError>>(
    connection: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<Vec<StoredPicture>, TxError<E>> {
    load(connection, Which::Ids(ids)).await.map_err(|error| match error {
        TxError::Query(error) => TxError::Query(error),
        TxError::Abort(error) => TxError::Abort(E::from(error)),
    })
}

/// Refuses a picture the service could not have meant to record: one marked archived, or without exactly one
/// variant of every size. Checked before anything is written, so a bug never leaves a partial picture behind.
fn check_new_picture(picture: &StoredPicture) -> Result<(), PortError> {
    if picture.archived || StoredPicture::is_archive_prefix(&picture.prefix) {
        return Err(PortError::Unknown(anyhow::anyhow!(
            "a new picture must not be recorded as archived or under the archive"
        )));
    }
    let complete = picture.variants.len() == PictureSize::ALL.len()
        && PictureSize::ALL
            .iter()
            .all(|size| picture.variants.iter().filter(|variant| variant.size == *size).count() == 1);
    if !complete {
        return Err(PortError::Unknown(anyhow::anyhow!(
            "a new picture must have exactly one variant of every size, not {}",
            picture.variants.iter().map(|variant| variant.size.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

/// Records `picture` as its user's active picture (see [`PictureRecords::insert_active_picture`]).
async fn insert_active(
    connection: &mut AsyncPgConnection,
    picture: &StoredPicture,
    now: OffsetDateTime,
    events: &[AuditEvent],
) -> Result<Option<StoredPicture>, TxError<PictureWriteError>> {
    let user_id = picture.user_id.as_uuid();
    let picture_row = NewPictureRow::from(picture);
    let variant_rows = picture
        .variants
        .iter()
        .map(|variant| NewPictureVariantRow::new(picture.id, variant))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TxError::Abort(PictureWriteError::Port(PortError::Unknown(error))))?;
    connection
        .transaction::<_, TxError<PictureWriteError>, _>(async |connection| {
            if !lock_user(connection, user_id).await? {
                return Err(TxError::Abort(PictureWriteError::UserGone));
            }
            let previous = archive_active(connection, user_id).await?;
            diesel::insert_into(pictures::table).values(&picture_row).execute(connection).await?;
            diesel::insert_into(picture_variants::table).values(&variant_rows).execute(connection).await?;
            point_user_at(connection, user_id, Some(picture.id), now).await?;
            insert_events(connection, events).await?;
            let Some(previous) = previous else { return Ok(None) };
            let mut loaded = load_ids(connection, &[previous]).await?;
            take(&mut loaded, previous).map(Some)
        })
        .await
}

/// Archives the user's active picture (see [`PictureRecords::archive_active_picture`]).
async fn archive(
    connection: &mut AsyncPgConnection,
    user_id: Uuid,
    now: OffsetDateTime,
    events: &[AuditEvent],
) -> Result<Option<StoredPicture>, TxError<PortError>> {
    connection
        .transaction::<_, TxError<PortError>, _>(async |connection| {
            // A user that is gone has no pictures left: the deletion cascaded to them.
            if !lock_user(connection, user_id).await? {
                return Ok(None);
            }
            let Some(archived) = archive_active(connection, user_id).await? else { return Ok(None) };
            point_user_at(connection, user_id, None, now).await?;
            insert_events(connection, events).await?;
            let mut loaded = load_ids(connection, &[archived]).await?;
            take(&mut loaded, archived).map(Some)
        })
        .await
}

/// Makes an archived picture of the user active again (see [`PictureRecords::restore_picture`]).
async fn restore(
    connection: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
    now: OffsetDateTime,
    events: &[AuditEvent],
) -> Result<Option<(StoredPicture, Option<StoredPicture>)>, TxError<PortError>> {
    connection
        .transaction::<_, TxError<PortError>, _>(async |connection| {
            if !lock_user(connection, user_id).await? {
                return Ok(None);
            }
            // Under the user's lock no other write can change which of its pictures are archived, so the answer
            // holds until this transaction ends. Another user's picture, or the active one, is no such picture.
            let chosen = pictures::table
                .find(id)
                .filter(pictures::user_id.eq(user_id))
                .filter(pictures::archived)
                .select(pictures::id)
                .get_result::<Uuid>(connection)
                .await
                .optional()?;
            if chosen.is_none() {
                return Ok(None);
            }
            // The active one is archived first, so the unique index on active pictures never sees two.
            let previous = archive_active(connection, user_id).await?;
            diesel::update(pictures::table.find(id)).set(pictures::archived.eq(false)).execute(connection).await?;
            point_user_at(connection, user_id, Some(id), now).await?;
            insert_events(connection, events).await?;
            let ids: Vec<Uuid> = std::iter::once(id).chain(previous).collect();
            let mut loaded = load_ids(connection, &ids).await?;
            let restored = take(&mut loaded, id)?;
            let previous = previous.map(|previous| take(&mut loaded, previous)).transpose()?;
            Ok(Some((restored, previous)))
        })
        .await
}

impl PictureRecords for PgRepository {
    async fn insert_active_picture(
        &self,
        picture: StoredPicture,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<Option<StoredPicture>, PictureWriteError> {
        check_new_picture(&picture)?;
        let mut connection = self.connection().await?;
        let inserted = insert_active(&mut connection, &picture, now, &events).await;
        inserted.map_err(|error| error.into_port(&mut connection, "recording a new active picture"))
    }

    async fn misplaced_pictures(&self, limit: u32) -> Result<Vec<StoredPicture>, PortError> {
        let mut connection = self.connection().await?;
        // The ids first, from the partial index of recorded moves, then those pictures with their sizes. In random
        // order: moves that keep failing cannot hold the first places of every round and starve the rest, and
        // instances looking at a backlog at once mostly take different pictures.
        let ids = pictures::table
            .filter(pictures::archived.ne(pictures::objects_archived))
            .order(diesel::dsl::sql::<diesel::sql_types::Double>("random()"))
            .limit(i64::from(limit))
            .select(pictures::id)
            .load::<Uuid>(&mut connection)
            .await;
        let ids = match ids {
            Ok(ids) => ids,
            Err(error) => return Err(query_error(error, &mut connection, "reading the pictures to move")),
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        read(&mut connection, Which::Ids(&ids), "reading the pictures to move").await
    }

    async fn finish_move(&self, id: Uuid, from: String, to: String, archived: bool) -> Result<bool, PortError> {
        let mut connection = self.connection().await?;
        // Only if the row is still where and what the move started from: a row restored, archived again, moved by
        // another instance or deleted meanwhile is left alone. (The primary key finds the row, so comparing
        // `archived` with a bound value is no matter for the partial index on active pictures.)
        let moved = diesel::update(pictures::table.find(id))
            .filter(pictures::prefix.eq(&from))
            .filter(pictures::archived.eq(archived))
            .set(pictures::prefix.eq(&to))
            .execute(&mut connection)
            .await;
        match moved {
            Ok(rows) => Ok(rows == 1),
            Err(error) => Err(query_error(error, &mut connection, "finishing a picture move")),
        }
    }

    async fn active_picture(&self, user_id: UserId) -> Result<Option<StoredPicture>, PortError> {
        let mut connection = self.connection().await?;
        let active = read(&mut connection, Which::Active(user_id.as_uuid()), "reading the active picture").await?;
        // The unique index allows one active picture per user at most.
        Ok(active.into_iter().next())
    }

    async fn archived_pictures(&self, user_id: UserId) -> Result<Vec<StoredPicture>, PortError> {
        let mut connection = self.connection().await?;
        read(&mut connection, Which::Archived(user_id.as_uuid()), "reading the archived pictures").await
    }

    async fn archive_active_picture(
        &self,
        user_id: UserId,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<Option<StoredPicture>, PortError> {
        let mut connection = self.connection().await?;
        let archived = archive(&mut connection, user_id.as_uuid(), now, &events).await;
        archived.map_err(|error| error.into_port(&mut connection, "archiving the active picture"))
    }

    async fn restore_picture(
        &self,
        user_id: UserId,
        id: Uuid,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<Option<(StoredPicture, Option<StoredPicture>)>, PortError> {
        let mut connection = self.connection().await?;
        let restored = restore(&mut connection, user_id.as_uuid(), id, now, &events).await;
        restored.map_err(|error| error.into_port(&mut connection, "restoring an archived picture"))
    }
}
