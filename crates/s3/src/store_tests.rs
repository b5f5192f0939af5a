//! The behaviour both stores promise, written once and run against each: the file store in a fresh temporary
//! directory, the S3 store against the real S3 server that `cargo xtask test` starts (Garage), under a key prefix
//! of its own because all tests share one bucket. Store-specific behaviour (timeouts, bucket creation, the file
//! layout) is tested further down.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use users_domain::ports::{PictureStore, PortError, StoredObject};
use uuid::Uuid;

use crate::{DEFAULT_TIMEOUT, FsPictureStore, S3Config, S3PictureStore, S3SetupError};

/// Keys from the brief and their cousins, each of which would escape the root or the bucket if used as-is.
const HOSTILE_KEYS: [&str; 6] = ["../x", "/etc/passwd", "a\\b", "a/../../b", "a\nb", ""];

/// The names a hostile key could have landed on had it not been refused.
const HOSTILE_LANDING_SPOTS: [&str; 9] =
    ["../x", "x", "/etc/passwd", "etc/passwd", "a\\b", "a/../../b", "b", "a\nb", "a"];

/// The configuration of the test S3 server, from the `UM_TEST_S3_*` variables that `cargo xtask test` sets.
fn s3_test_config() -> S3Config {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set. The S3 adapter tests need a running S3 server: run them with `cargo xtask test`, \
                 which starts Garage and sets UM_TEST_S3_ENDPOINT, UM_TEST_S3_REGION, UM_TEST_S3_BUCKET, \
                 UM_TEST_S3_ACCESS_KEY and UM_TEST_S3_SECRET_KEY."
            )
        })
    };
    S3Config {
        endpoint: var("UM_TEST_S3_ENDPOINT"),
        region: var("UM_TEST_S3_REGION"),
        bucket: var("UM_TEST_S3_BUCKET"),
        access_key: var("UM_TEST_S3_ACCESS_KEY"),
        secret_key: var("UM_TEST_S3_SECRET_KEY"),
    }
}

/// An error with its causes, for failure messages.
fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Connects to the test S3 server, failing with a message naming `cargo xtask test` when it is not there.
async fn connect(config: S3Config) -> S3PictureStore {
    let endpoint = config.endpoint.clone();
    S3PictureStore::connect(config).await.unwrap_or_else(|error| {
        panic!(
            "cannot use the test S3 server at {endpoint} ({}). Run the tests with `cargo xtask test`, which starts \
             Garage and points UM_TEST_S3_* at it.",
            chain(&error)
        )
    })
}

/// An address where nothing listens: a port the OS just handed out and that was released again.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn is_unavailable<T>(result: &Result<T, PortError>) -> bool {
    matches!(result, Err(PortError::Unavailable(_)))
}

fn is_unknown<T>(result: &Result<T, PortError>) -> bool {
    matches!(result, Err(PortError::Unknown(_)))
}

fn object(key: &str, content_type: &str, bytes: &[u8]) -> StoredObject {
    StoredObject { key: key.to_owned(), content_type: content_type.to_owned(), bytes: bytes.to_vec() }
}

/// One store under test, with a key prefix no other test uses, and the means to look behind its back.
trait Fixture {
    type Store: PictureStore;

    fn store(&self) -> &Self::Store;

    /// This test's key prefix, ending in `/`.
    fn prefix(&self) -> &str;

    /// A key under this test's prefix.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix())
    }

    /// The store's own listing.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, PortError>;

    /// Asserts that nothing exists at any of `names`, looking at the storage directly rather than through the
    /// store's key checks.
    async fn assert_nothing_at(&self, names: &[&str]);

    /// Removes what the test stored, so the shared bucket does not grow with every run.
    async fn cleanup(&self) {
        for key in self.list(self.prefix()).await.unwrap() {
            self.store().delete(key).await.unwrap();
        }
    }
}

struct FsFixture {
    /// Holds `store`'s root, so that anything written beside the root would show too.
    dir: tempfile::TempDir,
    store: FsPictureStore,
    prefix: String,
}

impl FsFixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = FsPictureStore::new(dir.path().join("pictures")).unwrap();
        Self { dir, store, prefix: format!("users-s3-tests/{}/", Uuid::new_v4()) }
    }

    /// Every file and directory under the temporary directory, relative to it, sorted.
    fn tree(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(base).unwrap().display().to_string());
                if path.is_dir() {
                    walk(&path, base, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out.sort();
        out
    }
}

impl Fixture for FsFixture {
    type Store = FsPictureStore;

    fn store(&self) -> &FsPictureStore {
        &self.store
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, PortError> {
        self.store.list(prefix).await
    }

    async fn assert_nothing_at(&self, names: &[&str]) {
        // The temporary directory is this test's alone, so "nothing" can be checked exactly: it holds the empty
        // root and nothing else, whatever the refused keys would have resolved to.
        let _ = names;
        assert_eq!(self.tree(), vec!["pictures".to_owned()]);
    }
}

struct S3Fixture {
    store: S3PictureStore,
    prefix: String,
}

impl S3Fixture {
    async fn new() -> Self {
        Self { store: connect(s3_test_config()).await, prefix: format!("users-s3-tests/{}/", Uuid::new_v4()) }
    }
}

impl Fixture for S3Fixture {
    type Store = S3PictureStore;

    fn store(&self) -> &S3PictureStore {
        &self.store
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, PortError> {
        self.store.list(prefix).await
    }

    async fn assert_nothing_at(&self, names: &[&str]) {
        // rust-s3's own listing, with the name as a query parameter, so that even names the store refuses can be
        // looked for without being turned into a path.
        for name in names {
            let (page, _) =
                self.store.raw_bucket().list_page((*name).to_owned(), None, None, None, None).await.unwrap();
            let found: Vec<_> = page.contents.iter().filter(|object| object.key == *name).collect();
            assert!(found.is_empty(), "an object exists at {name:?}");
        }
    }
}

// The shared behaviour. Each function is run once per store by `behaviour!` below.

async fn put_then_get_returns_the_same_bytes_and_content_type(fixture: &impl Fixture) {
    let store = fixture.store();
    let all_bytes: Vec<u8> = (0..=255).cycle().take(70_000).collect();
    let picture = object(&fixture.key("original.webp"), "image/webp", &all_bytes);
    let empty = object(&fixture.key("archive/empty.png"), "image/png", b"");

    store.put(picture.clone()).await.unwrap();
    store.put(empty.clone()).await.unwrap();

    assert_eq!(store.get(picture.key.clone()).await.unwrap(), Some(picture));
    assert_eq!(store.get(empty.key.clone()).await.unwrap(), Some(empty));
}

async fn put_replaces_an_existing_object(fixture: &impl Fixture) {
    let store = fixture.store();
    let key = fixture.key("thumb");
    store.put(object(&key, "image/png", b"first version")).await.unwrap();

    let second = object(&key, "image/jpeg", b"second, longer version");
    store.put(second.clone()).await.unwrap();

    assert_eq!(store.get(key.clone()).await.unwrap(), Some(second));
    assert_eq!(fixture.list(fixture.prefix()).await.unwrap(), vec![key]);
}

async fn copy_makes_an_independent_object_with_the_same_bytes_and_content_type(fixture: &impl Fixture) {
    let store = fixture.store();
    let (from, to) = (fixture.key("active/original.jpg"), fixture.key("archive/original.jpg"));
    store.put(object(&from, "image/jpeg", b"the original")).await.unwrap();
    store.put(object(&to, "image/png", b"an object the copy replaces")).await.unwrap();

    assert!(store.copy(from.clone(), to.clone()).await.unwrap());
    assert_eq!(store.get(to.clone()).await.unwrap(), Some(object(&to, "image/jpeg", b"the original")));
    // The copy outlives its source.
    store.delete(from.clone()).await.unwrap();
    assert_eq!(store.get(to.clone()).await.unwrap(), Some(object(&to, "image/jpeg", b"the original")));
    assert_eq!(fixture.list(fixture.prefix()).await.unwrap(), vec![to.clone()]);

    // Nothing to copy: false, and nothing written.
    let nowhere = fixture.key("archive/nowhere.png");
    assert!(!store.copy(from, nowhere.clone()).await.unwrap());
    assert_eq!(store.get(nowhere).await.unwrap(), None);
    for hostile in HOSTILE_KEYS {
        let copied = store.copy(to.clone(), hostile.to_owned()).await;
        assert!(matches!(copied, Err(PortError::Unknown(_))), "{hostile:?} gave {copied:?}");
    }
}

async fn get_of_a_missing_key_is_none(fixture: &impl Fixture) {
    assert_eq!(fixture.store().get(fixture.key("never-stored.png")).await.unwrap(), None);
}

async fn a_deleted_object_is_gone(fixture: &impl Fixture) {
    let store = fixture.store();
    let key = fixture.key("medium.webp");
    store.put(object(&key, "image/webp", b"bytes")).await.unwrap();

    store.delete(key.clone()).await.unwrap();

    assert_eq!(store.get(key).await.unwrap(), None);
    assert_eq!(fixture.list(fixture.prefix()).await.unwrap(), Vec::<String>::new());
}

async fn deleting_a_missing_key_succeeds(fixture: &impl Fixture) {
    let store = fixture.store();
    let key = fixture.key("never-stored.png");
    store.delete(key.clone()).await.unwrap();
    store.delete(key).await.unwrap();
}

async fn hostile_keys_are_refused_and_nothing_is_written(fixture: &impl Fixture) {
    let store = fixture.store();
    let prefixed: Vec<String> =
        ["../x", "a/./b", ".hidden", "a//b", "a/", "a b", "a\u{e9}"].iter().map(|name| fixture.key(name)).collect();
    for key in HOSTILE_KEYS.iter().map(|key| (*key).to_owned()).chain(prefixed) {
        let put = store.put(object(&key, "image/png", b"payload")).await;
        assert!(is_unknown(&put), "put {key:?} gave {put:?}");
        let get = store.get(key.clone()).await;
        assert!(is_unknown(&get), "get {key:?} gave {get:?}");
        let delete = store.delete(key.clone()).await;
        assert!(is_unknown(&delete), "delete {key:?} gave {delete:?}");
    }

    assert_eq!(fixture.list(fixture.prefix()).await.unwrap(), Vec::<String>::new());
    fixture.assert_nothing_at(&HOSTILE_LANDING_SPOTS).await;
}

async fn content_types_that_could_split_a_header_are_refused(fixture: &impl Fixture) {
    let store = fixture.store();
    for content_type in ["", "image/png\r\nX-Injected: 1", "image/png\0"] {
        let put = store.put(object(&fixture.key("p.png"), content_type, b"bytes")).await;
        assert!(is_unknown(&put), "{content_type:?} gave {put:?}");
    }
    assert_eq!(fixture.list(fixture.prefix()).await.unwrap(), Vec::<String>::new());
}

async fn list_returns_the_keys_under_a_prefix_in_order(fixture: &impl Fixture) {
    let store = fixture.store();
    for name in ["b/1", "a/2", "ab", "a/1", "a/deeper/3"] {
        store.put(object(&fixture.key(name), "image/png", name.as_bytes())).await.unwrap();
    }
    let keys = |names: &[&str]| names.iter().map(|name| fixture.key(name)).collect::<Vec<_>>();

    assert_eq!(fixture.list(&fixture.key("a/")).await.unwrap(), keys(&["a/1", "a/2", "a/deeper/3"]));
    assert_eq!(fixture.list(&fixture.key("a")).await.unwrap(), keys(&["a/1", "a/2", "a/deeper/3", "ab"]));
    assert_eq!(fixture.list(fixture.prefix()).await.unwrap(), keys(&["a/1", "a/2", "a/deeper/3", "ab", "b/1"]));
    assert_eq!(fixture.list(&fixture.key("c")).await.unwrap(), Vec::<String>::new());
    for hostile in ["../", "/etc", "a/../"] {
        let listed = fixture.list(hostile).await;
        assert!(is_unknown(&listed), "{hostile:?} gave {listed:?}");
    }
}

async fn ping_succeeds_when_the_store_is_up(fixture: &impl Fixture) {
    fixture.store().ping().await.unwrap();
}

/// Runs each shared behaviour once per store, as tests named `fs::<behaviour>` and `s3::<behaviour>`.
macro_rules! behaviour {
    ($($name:ident),* $(,)?) => {
        mod fs {
            $(
                #[tokio::test]
                async fn $name() {
                    let fixture = super::FsFixture::new();
                    super::$name(&fixture).await;
                    super::Fixture::cleanup(&fixture).await;
                }
            )*
        }

        mod s3 {
            $(
                #[tokio::test]
                async fn $name() {
                    let fixture = super::S3Fixture::new().await;
                    super::$name(&fixture).await;
                    super::Fixture::cleanup(&fixture).await;
                }
            )*
        }
    };
}

behaviour!(
    put_then_get_returns_the_same_bytes_and_content_type,
    put_replaces_an_existing_object,
    copy_makes_an_independent_object_with_the_same_bytes_and_content_type,
    get_of_a_missing_key_is_none,
    a_deleted_object_is_gone,
    deleting_a_missing_key_succeeds,
    hostile_keys_are_refused_and_nothing_is_written,
    content_types_that_could_split_a_header_are_refused,
    list_returns_the_keys_under_a_prefix_in_order,
    ping_succeeds_when_the_store_is_up,
);

mod s3_only {
    use super::*;

    #[tokio::test]
    async fn an_endpoint_where_nothing_listens_is_unavailable_within_the_timeout() {
        let store = S3PictureStore::new(S3Config { endpoint: dead_endpoint(), ..s3_test_config() }).unwrap();

        let started = Instant::now();
        let put = store.put(object("users-s3-tests/dead/p.png", "image/png", b"bytes")).await;
        assert!(is_unavailable(&put), "put gave {put:?}");
        let get = store.get("users-s3-tests/dead/p.png".to_owned()).await;
        assert!(is_unavailable(&get), "get gave {get:?}");
        let delete = store.delete("users-s3-tests/dead/p.png".to_owned()).await;
        assert!(is_unavailable(&delete), "delete gave {delete:?}");
        let ping = store.ping().await;
        assert!(is_unavailable(&ping), "ping gave {ping:?}");
        assert!(started.elapsed() < DEFAULT_TIMEOUT, "four calls took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_unavailable_after_the_timeout() {
        // A real socket that accepts connections and then says nothing, as a hung server would.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let timeout = Duration::from_millis(500);
        let store = S3PictureStore::new(S3Config { endpoint, ..s3_test_config() }).unwrap().with_timeout(timeout);

        for call in ["put", "get", "ping"] {
            let started = Instant::now();
            let result = match call {
                "put" => store.put(object("users-s3-tests/hung/p.png", "image/png", b"bytes")).await,
                "get" => store.get("users-s3-tests/hung/p.png".to_owned()).await.map(|_| ()),
                _ => store.ping().await,
            };
            let elapsed = started.elapsed();
            assert!(is_unavailable(&result), "{call} gave {result:?}");
            assert!(elapsed >= timeout && elapsed < timeout * 4, "{call} took {elapsed:?}");
        }
        silent.abort();
    }

    #[tokio::test]
    async fn connecting_to_an_endpoint_where_nothing_listens_fails_as_unavailable() {
        let result = S3PictureStore::connect(S3Config { endpoint: dead_endpoint(), ..s3_test_config() }).await;
        assert!(matches!(result, Err(S3SetupError::Unavailable(_))), "{result:?}");
    }

    #[tokio::test]
    async fn connect_creates_a_missing_bucket_and_accepts_an_existing_one() {
        let bucket = format!("users-s3-test-{}", Uuid::new_v4().simple());
        let config = S3Config { bucket: bucket.clone(), ..s3_test_config() };

        let store = connect(config.clone()).await;
        let picture = object("profile_pictures/x/original.png", "image/png", b"bytes");
        store.put(picture.clone()).await.unwrap();
        assert_eq!(store.get(picture.key.clone()).await.unwrap(), Some(picture.clone()));
        connect(config).await.ping().await.unwrap();

        store.delete(picture.key).await.unwrap();
        store.raw_bucket().delete().await.unwrap();
    }

    #[tokio::test]
    async fn instances_starting_together_may_both_create_the_bucket() {
        // Both probes see no bucket, both try to create it, and the loser must accept the winner's bucket.
        let config = S3Config { bucket: format!("users-s3-test-{}", Uuid::new_v4().simple()), ..s3_test_config() };
        let (first, second) = tokio::join!(connect(config.clone()), connect(config));
        first.ping().await.unwrap();
        second.ping().await.unwrap();
        first.raw_bucket().delete().await.unwrap();
    }

    #[tokio::test]
    async fn wrong_credentials_are_unknown_rather_than_unavailable_or_missing() {
        let config = S3Config { secret_key: "not-the-secret-key".to_owned(), ..s3_test_config() };
        let store = S3PictureStore::new(config.clone()).unwrap();

        let ping = store.ping().await;
        assert!(is_unknown(&ping), "ping gave {ping:?}");
        // A refused read must not pass for a missing picture.
        let get = store.get("users-s3-tests/any/p.png".to_owned()).await;
        assert!(is_unknown(&get), "get gave {get:?}");
        let connected = S3PictureStore::connect(config).await;
        assert!(matches!(connected, Err(S3SetupError::Bucket { .. })), "{connected:?}");
    }

    #[tokio::test]
    async fn the_content_type_is_stored_on_the_object() {
        let fixture = S3Fixture::new().await;
        let key = fixture.key("original.gif");
        fixture.store.put(object(&key, "image/gif", b"GIF89a")).await.unwrap();

        let (head, _) = fixture.store.raw_bucket().head_object(&key).await.unwrap();
        assert_eq!(head.content_type.as_deref(), Some("image/gif"));
        fixture.cleanup().await;
    }
}

mod fs_only {
    use super::*;

    #[tokio::test]
    async fn deleting_the_last_object_of_a_directory_removes_that_directory_and_no_other() {
        let fixture = FsFixture::new();
        let store = fixture.store();
        let (moved, kept) = (fixture.key("archive/place/thumb.png"), fixture.key("archive/other/thumb.png"));
        store.put(object(&moved, "image/png", b"moved")).await.unwrap();
        store.put(object(&fixture.key("archive/place/medium.png"), "image/png", b"moved")).await.unwrap();
        store.put(object(&kept, "image/png", b"kept")).await.unwrap();
        let place = format!("pictures/{}archive/place", fixture.prefix());

        store.delete(moved.clone()).await.unwrap();
        assert!(fixture.tree().contains(&place), "still holds the medium size");
        store.delete(fixture.key("archive/place/medium.png")).await.unwrap();
        let tree = fixture.tree();
        assert!(!tree.contains(&place), "emptied, so removed: {tree:?}");
        assert!(tree.contains(&format!("pictures/{}archive", fixture.prefix())), "shared, so kept: {tree:?}");
        assert_eq!(store.get(kept).await.unwrap().unwrap().bytes, b"kept");
        // A later put into the removed directory creates it again.
        store.put(object(&moved, "image/png", b"again")).await.unwrap();
        assert_eq!(store.get(moved).await.unwrap().unwrap().bytes, b"again");
    }

    /// Every file under `dir`, relative to it.
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(current) = pending.pop() {
            for entry in std::fs::read_dir(&current).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    out.push(path.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn puts_leave_no_temporary_files_behind() {
        let fixture = FsFixture::new();
        let key = fixture.key("original.png");
        fixture.store.put(object(&key, "image/png", b"one")).await.unwrap();
        fixture.store.put(object(&key, "image/png", b"two")).await.unwrap();
        fixture.store.ping().await.unwrap();

        let mut expected = vec![key.clone(), format!("{}.original.png.content-type", fixture.prefix)];
        expected.sort();
        assert_eq!(files(fixture.store.root()), expected);
    }

    #[tokio::test]
    async fn objects_are_plain_files_with_the_content_type_beside_them() {
        let fixture = FsFixture::new();
        let key = fixture.key("thumb.webp");
        fixture.store.put(object(&key, "image/webp", b"RIFF....WEBP")).await.unwrap();

        let root = fixture.store.root();
        assert_eq!(std::fs::read(root.join(&key)).unwrap(), b"RIFF....WEBP");
        let sidecar = root.join(&fixture.prefix).join(".thumb.webp.content-type");
        assert_eq!(std::fs::read_to_string(sidecar).unwrap(), "image/webp");
    }

    #[tokio::test]
    async fn a_lost_content_type_is_reported_rather_than_guessed() {
        let fixture = FsFixture::new();
        let key = fixture.key("thumb.webp");
        fixture.store.put(object(&key, "image/webp", b"bytes")).await.unwrap();
        std::fs::remove_file(fixture.store.root().join(&fixture.prefix).join(".thumb.webp.content-type")).unwrap();

        let get = fixture.store.get(key).await;
        assert!(is_unknown(&get), "{get:?}");
    }

    #[tokio::test]
    async fn keys_that_collide_with_directories_or_objects_are_missing_not_errors() {
        let fixture = FsFixture::new();
        let store = &fixture.store;
        store.put(object(&fixture.key("dir/inner.png"), "image/png", b"inner")).await.unwrap();
        store.put(object(&fixture.key("file"), "image/png", b"file")).await.unwrap();

        // `dir` is a directory and `file/below` lies under a file: neither is an object.
        assert_eq!(store.get(fixture.key("dir")).await.unwrap(), None);
        assert_eq!(store.get(fixture.key("file/below")).await.unwrap(), None);
        store.delete(fixture.key("dir")).await.unwrap();
        store.delete(fixture.key("file/below")).await.unwrap();
        // Storing there cannot work on a file system; it fails cleanly and leaves everything else alone.
        assert!(is_unknown(&store.put(object(&fixture.key("file/below"), "image/png", b"x")).await));
        assert!(is_unknown(&store.put(object(&fixture.key("dir"), "image/png", b"x")).await));
        assert_eq!(store.get(fixture.key("file")).await.unwrap().map(|o| o.bytes), Some(b"file".to_vec()));
        assert_eq!(
            fixture.list(fixture.prefix()).await.unwrap(),
            vec![fixture.key("dir/inner.png"), fixture.key("file")]
        );
        assert!(files(store.root()).iter().all(|file| !file.ends_with(".tmp")), "{:?}", files(store.root()));
    }

    #[tokio::test]
    async fn new_creates_the_root_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root: PathBuf = dir.path().join("data").join("pictures");
        let store = FsPictureStore::new(root.clone()).unwrap();
        assert!(root.is_dir());
        assert_eq!(store.root(), root.canonicalize().unwrap());
    }

    #[tokio::test]
    async fn new_fails_when_the_root_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pictures");
        std::fs::write(&root, b"not a directory").unwrap();
        assert!(FsPictureStore::new(root).is_err());
    }

    #[tokio::test]
    async fn a_vanished_root_is_unavailable_and_not_recreated() {
        let fixture = FsFixture::new();
        let store = &fixture.store;
        std::fs::remove_dir(store.root()).unwrap();

        assert!(is_unavailable(&store.ping().await));
        assert!(is_unavailable(&store.put(object(&fixture.key("p.png"), "image/png", b"x")).await));
        assert!(is_unavailable(&store.get(fixture.key("p.png")).await));
        assert!(is_unavailable(&store.delete(fixture.key("p.png")).await));
        assert!(!store.root().exists());
    }

    #[tokio::test]
    async fn a_root_replaced_by_a_file_is_unavailable() {
        let fixture = FsFixture::new();
        std::fs::remove_dir(fixture.store.root()).unwrap();
        std::fs::write(fixture.store.root(), b"oops").unwrap();
        assert!(is_unavailable(&fixture.store.ping().await));
    }
}
