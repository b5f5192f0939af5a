//! Shared helpers: parsed domain values, a repository on a test database, direct SQL to look behind the port, and
//! a proxy that can cut Postgres off.

use std::net::SocketAddr;
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use users_domain::permissions::Role;
use users_domain::ports::{
    EmailTokenPurpose, NewAccount, NewEmailToken, OutgoingMail, UserQuery, UserSort, UserStore as _, UserUpdate,
};
use users_domain::session::{NewSession, RefreshToken, SessionId, TokenHash};
use users_domain::user::{EmailAddress, NewUser, Nickname, PasswordHash, PersonName, User, UserId};
use users_postgres::{PgConfig, PgRepository};
use users_testkit::TestDatabase;

/// A repository on `url` with a short acquire timeout, so outage tests finish quickly.
pub async fn repository_at(url: String) -> PgRepository {
    repository_with_connections(url, 4).await
}

/// A repository on `url` with room for `max_connections` queries at once, for tests that race them.
pub async fn repository_with_connections(url: String, max_connections: usize) -> PgRepository {
    let config = PgConfig { url, max_connections, listing_connections: 1, acquire_timeout: Duration::from_secs(1) };
    PgRepository::connect(&config).await.unwrap()
}

/// A first page of everyone, oldest first.
pub fn everyone(limit: u32) -> UserQuery {
    users_testkit::conformance::query(UserSort::CreatedAt, limit)
}

/// A repository on a test database.
pub async fn repository(database: &TestDatabase) -> PgRepository {
    repository_at(database.url()).await
}

/// A new unverified user with the given email and nickname and a first name.
pub fn new_user(email: &str, nickname: &str) -> NewUser {
    NewUser {
        id: UserId::generate(),
        email: EmailAddress::parse(email).unwrap(),
        nickname: Nickname::parse(nickname).unwrap(),
        first_name: PersonName::parse("Ada").unwrap(),
        last_name: None,
        bio: None,
        linkedin_profile_url: None,
        github_profile_url: None,
        role: Role::Anonymous,
        email_verified: false,
        password_hash: PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".to_owned()),
    }
}

/// `user` as a new account without a token or mails.
pub fn account(user: NewUser) -> NewAccount {
    NewAccount { user, token: None, mails: Vec::new(), events: Vec::new() }
}

/// Inserts an unverified ANONYMOUS user with the given email and nickname.
pub async fn insert(repository: &PgRepository, email: &str, nickname: &str) -> User {
    repository.insert_user(account(new_user(email, nickname))).await.unwrap()
}

/// Inserts a user with `role`, verified unless ANONYMOUS.
pub async fn insert_with_role(repository: &PgRepository, email: &str, nickname: &str, role: Role) -> User {
    let mut new = new_user(email, nickname);
    new.role = role;
    new.email_verified = role != Role::Anonymous;
    repository.insert_user(account(new)).await.unwrap()
}

/// Inserts an unlocked ADMIN named `nickname`.
pub async fn admin(repository: &PgRepository, nickname: &str) -> User {
    insert_with_role(repository, &format!("{nickname}@example.com"), nickname, Role::Admin).await
}

/// Postgres keeps microseconds; the domain's clock has nanoseconds.
pub fn to_micros(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(at.nanosecond() / 1_000 * 1_000).unwrap()
}

/// The current time as Postgres will store it, so values read back compare equal.
pub fn now() -> OffsetDateTime {
    to_micros(OffsetDateTime::now_utc())
}

/// A session of `user_id` started at `at`, valid for 30 days, with `token_hash` as its first refresh token.
pub fn new_session(user_id: UserId, at: OffsetDateTime, token_hash: TokenHash) -> NewSession {
    NewSession {
        id: SessionId::generate(),
        user_id,
        expires_at: to_micros(at + time::Duration::days(30)),
        refresh_token_hash: token_hash,
        user_agent: Some("curl/8.5".to_owned()),
        ip: Some("203.0.113.7".to_owned()),
    }
}

/// A fresh random token's hash, as the service would store it.
pub fn token_hash() -> TokenHash {
    RefreshToken::generate().hash()
}

/// A new email token of `user_id` for `purpose`, valid for `valid_for` from `now`.
pub fn email_token(
    user_id: UserId,
    purpose: EmailTokenPurpose,
    new_email: Option<&str>,
    now: OffsetDateTime,
    valid_for: time::Duration,
) -> NewEmailToken {
    NewEmailToken {
        hash: token_hash(),
        user_id,
        purpose,
        new_email: new_email.map(|email| EmailAddress::parse(email).unwrap()),
        expires_at: to_micros(now + valid_for),
    }
}

/// Stores a token of `purpose` for `user_id`, valid for a day, through a change that does nothing else, and
/// returns its hash.
pub async fn issue(
    repository: &PgRepository,
    user_id: UserId,
    purpose: EmailTokenPurpose,
    new_email: Option<&str>,
) -> TokenHash {
    let token = email_token(user_id, purpose, new_email, now(), time::Duration::days(1));
    let hash = token.hash.clone();
    let mut update = UserUpdate::new(user_id, now());
    update.issue_token = Some(token);
    repository.update_user(update).await.unwrap();
    hash
}

/// A mail to `to` with a subject and both bodies.
pub fn mail(to: &str, subject: &str) -> OutgoingMail {
    OutgoingMail {
        to: EmailAddress::parse(to).unwrap(),
        subject: subject.to_owned(),
        text: format!("{subject}\n\nplain text"),
        html: format!("<p>{subject}</p>"),
    }
}

/// Runs a statement directly, behind the repository's back.
pub async fn execute(database: &TestDatabase, statement: &str) {
    let mut connection = AsyncPgConnection::establish(&database.url()).await.unwrap();
    diesel::sql_query(statement).execute(&mut connection).await.unwrap();
}

/// The `count` column of a query's single row.
pub async fn count(database: &TestDatabase, query: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let mut connection = AsyncPgConnection::establish(&database.url()).await.unwrap();
    let row: Count = diesel::sql_query(query).get_result(&mut connection).await.unwrap();
    row.count
}

/// How many rows `table` holds.
pub async fn rows(database: &TestDatabase, table: &str) -> i64 {
    count(database, &format!("SELECT count(*) AS count FROM {table}")).await
}

/// The nullable text column `value` of a query's single row.
pub async fn text(database: &TestDatabase, query: &str) -> Option<String> {
    #[derive(QueryableByName)]
    struct Value {
        #[diesel(sql_type = Nullable<Text>)]
        value: Option<String>,
    }
    let mut connection = AsyncPgConnection::establish(&database.url()).await.unwrap();
    let row: Value = diesel::sql_query(query).get_result(&mut connection).await.unwrap();
    row.value
}

/// The nullable timestamp column `value` of a query's single row.
pub async fn timestamp(database: &TestDatabase, query: &str) -> Option<OffsetDateTime> {
    #[derive(QueryableByName)]
    struct Value {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        value: Option<OffsetDateTime>,
    }
    let mut connection = AsyncPgConnection::establish(&database.url()).await.unwrap();
    let row: Value = diesel::sql_query(query).get_result(&mut connection).await.unwrap();
    row.value
}

/// A TCP proxy in front of Postgres that can be switched off (every connection cut, new ones closed at once)
/// and on again, to play a database outage and its end without touching the shared server.
pub struct SwitchableProxy {
    address: SocketAddr,
    up: watch::Sender<bool>,
    acceptor: JoinHandle<()>,
}

impl SwitchableProxy {
    /// Starts a proxy on a free loopback port, forwarding to `target` (`host:port`).
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (up, up_changes) = watch::channel(true);
        let acceptor = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*up_changes.borrow() {
                    continue;
                }
                let mut up_changes = up_changes.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up_changes.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { address, up, acceptor }
    }

    /// The proxy's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Switches the proxy on or off.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for SwitchableProxy {
    fn drop(&mut self) {
        self.set_up(false);
        self.acceptor.abort();
    }
}
