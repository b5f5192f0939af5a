//! Shared helpers: parsed domain values, a repository on a test database, and a proxy that can cut Postgres off.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use users_domain::permissions::Role;
use users_domain::user::{EmailAddress, NewUser, Nickname, PasswordHash, PersonName, UserId};
use users_postgres::{PgConfig, PgRepository};
use users_testkit::TestDatabase;

/// A repository on `url` with a short acquire timeout, so outage tests finish quickly.
pub async fn repository_at(url: String) -> PgRepository {
    let config = PgConfig { url, max_connections: 4, acquire_timeout: Duration::from_secs(1) };
    PgRepository::connect(&config).await.unwrap()
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
