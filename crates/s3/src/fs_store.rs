//! [`FsPictureStore`]: pictures as files under `DATA_DIR/pictures`, the embedded default (`STORAGE_BACKEND=fs`).
//!
//! An object lives at `root/<key>`, as the plain bytes, so an operator can look at a picture with any tool. Its
//! content type lives beside it in a hidden sidecar, `root/<dir>/.<name>.content-type`, holding only the type.
//! A sidecar rather than a mapping from the key's extension, because the port hands over an explicit content type
//! and promises to return it: a mapping would silently change a type it does not know (or a key without an
//! extension) into a guess. The sidecar is hidden (its name starts with `.`), and keys may not have segments that
//! start with `.`, so no key can ever name a sidecar or a temporary file, however the domain names its objects.
//!
//! Writes are atomic: each file is written and synced under a unique hidden temporary name in its final
//! directory, then renamed into place. The sidecar is renamed first and the object second, and deletion removes
//! the object first and the sidecar second: the object's file is what makes an object exist, so a reader never
//! sees an object without its content type. (An overwrite that changes a key's content type has a short window
//! in which a reader can see the new type with the old bytes; the domain never reuses a key for another type.)
//! All file-system calls run on tokio's blocking pool.

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use users_domain::ports::{PictureStore, PortError, StoredObject};

use crate::key::{KeyPrefix, ObjectKey, check_content_type};

/// What the sidecar holding an object's content type adds to the object's name (after a leading `.`).
const CONTENT_TYPE_SUFFIX: &str = ".content-type";

/// The suffix of temporary files, which a later sweep may remove when a crash left one behind.
const TEMP_SUFFIX: &str = ".tmp";

/// Profile pictures as files under one root directory.
#[derive(Debug, Clone)]
pub struct FsPictureStore {
    /// The canonical root, so that a later change of the working directory changes nothing.
    root: Arc<Path>,
}

impl FsPictureStore {
    /// Opens a store at `root` (normally `DATA_DIR/pictures`), creating the directory if needed.
    ///
    /// # Errors
    /// When the directory cannot be created or resolved, or `root` exists and is not a directory.
    pub fn new(root: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&root)?;
        let root = fs::canonicalize(root)?;
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(ErrorKind::NotADirectory, format!("{} is not a directory", root.display())));
        }
        Ok(Self { root: root.into() })
    }

    /// The canonical root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lists the keys of all objects whose key starts with `prefix` (which may end inside a segment), sorted.
    /// Files that no valid key names (hidden sidecars, temporary files, anything put there by hand) are left out.
    ///
    /// # Errors
    /// [`PortError::Unknown`] for a prefix that could never start a valid key, [`PortError::Unavailable`] when the
    /// root directory is gone or unreadable.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, PortError> {
        let prefix = KeyPrefix::parse(prefix).map_err(|error| PortError::Unknown(error.into()))?;
        let root = Arc::clone(&self.root);
        blocking(move || list_blocking(&root, &prefix)).await
    }
}

impl PictureStore for FsPictureStore {
    async fn put(&self, object: StoredObject) -> Result<(), PortError> {
        let key = ObjectKey::parse(&object.key).map_err(|error| PortError::Unknown(error.into()))?;
        check_content_type(&object.content_type).map_err(|error| PortError::Unknown(error.into()))?;
        let root = Arc::clone(&self.root);
        blocking(move || put_blocking(&root, &key, &object.content_type, &object.bytes)).await
    }

    async fn get(&self, key: String) -> Result<Option<StoredObject>, PortError> {
        let key = ObjectKey::parse(&key).map_err(|error| PortError::Unknown(error.into()))?;
        let root = Arc::clone(&self.root);
        blocking(move || get_blocking(&root, &key)).await
    }

    async fn copy(&self, from: String, to: String) -> Result<bool, PortError> {
        let from = ObjectKey::parse(&from).map_err(|error| PortError::Unknown(error.into()))?;
        let to = ObjectKey::parse(&to).map_err(|error| PortError::Unknown(error.into()))?;
        let root = Arc::clone(&self.root);
        // Read and written again, the way a put writes (temporary files renamed into place): a copy is never seen
        // half-written.
        blocking(move || match get_blocking(&root, &from)? {
            Some(object) => put_blocking(&root, &to, &object.content_type, &object.bytes).map(|()| true),
            None => Ok(false),
        })
        .await
    }

    async fn delete(&self, key: String) -> Result<(), PortError> {
        let key = ObjectKey::parse(&key).map_err(|error| PortError::Unknown(error.into()))?;
        let root = Arc::clone(&self.root);
        blocking(move || delete_blocking(&root, &key)).await
    }

    async fn list(&self, prefix: String) -> Result<Vec<String>, PortError> {
        Self::list(self, &prefix).await
    }

    async fn ping(&self) -> Result<(), PortError> {
        let root = Arc::clone(&self.root);
        blocking(move || ping_blocking(&root)).await
    }
}

/// Runs blocking file-system work on tokio's blocking pool, so it never stalls the request threads.
async fn blocking<T, F>(work: F) -> Result<T, PortError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, PortError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| PortError::Unknown(anyhow::Error::new(error).context("file store task failed")))?
}

/// Where an object's bytes live.
fn object_path(root: &Path, key: &ObjectKey) -> PathBuf {
    root.join(key.as_str())
}

/// Where an object's content type lives: a hidden file beside the object.
fn content_type_path(root: &Path, key: &ObjectKey) -> PathBuf {
    root.join(key.parent()).join(format!(".{}{CONTENT_TYPE_SUFFIX}", key.name()))
}

fn put_blocking(root: &Path, key: &ObjectKey, content_type: &str, bytes: &[u8]) -> Result<(), PortError> {
    // Directories are created below the root only: if the root itself vanished (an unmounted volume), recreating
    // it would write pictures where nobody looks for them.
    require_root(root)?;
    let dir = root.join(key.parent());
    // A delete removes its object's directory once it is empty (see `delete_blocking`), which can happen between
    // creating the directory and the first temporary file landing in it: the directory is then created again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        fs::create_dir_all(&dir).map_err(|error| io_failure(error, "creating the directory of", key))?;
        match write_into(&dir, root, key, content_type, bytes) {
            Err((error, _)) if is_missing(&error) && attempts < 3 => {}
            Err((error, doing)) => return Err(io_failure(error, doing, key)),
            Ok(()) => break,
        }
    }
    // The renames are durable only once the directory is synced. Some file systems cannot sync a directory; the
    // object is already in place then, so a failure here is no reason to report the put as failed.
    if let Ok(dir) = fs::File::open(&dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Writes an object and its content type into `dir` as temporary files and renames them into place; on failure,
/// what it was doing.
fn write_into(
    dir: &Path,
    root: &Path,
    key: &ObjectKey,
    content_type: &str,
    bytes: &[u8],
) -> Result<(), (io::Error, &'static str)> {
    let sidecar = TempFile::write(dir, key.name(), CONTENT_TYPE_SUFFIX, content_type.as_bytes())
        .map_err(|error| (error, "writing the content type of"))?;
    let object = TempFile::write(dir, key.name(), "", bytes).map_err(|error| (error, "writing"))?;
    sidecar.persist(&content_type_path(root, key)).map_err(|error| (error, "storing the content type of"))?;
    object.persist(&object_path(root, key)).map_err(|error| (error, "storing"))
}

fn get_blocking(root: &Path, key: &ObjectKey) -> Result<Option<StoredObject>, PortError> {
    let object = object_path(root, key);
    let bytes = match fs::read(&object) {
        Ok(bytes) => bytes,
        Err(error) if is_missing(&error) => {
            require_root(root)?;
            return Ok(None);
        }
        Err(error) => return Err(io_failure(error, "reading", key)),
    };
    let content_type = match fs::read_to_string(content_type_path(root, key)) {
        Ok(content_type) => content_type,
        // A delete removes the object before its sidecar; if the object is gone by now, it was deleted while we
        // read it, which is a missing object and not a corrupt one.
        Err(error) if is_missing(&error) && !object.is_file() => return Ok(None),
        Err(error) => return Err(io_failure(error, "reading the content type of", key)),
    };
    check_content_type(&content_type).map_err(|error| {
        PortError::Unknown(anyhow::Error::new(error).context(format!("corrupt content type stored for {key}")))
    })?;
    Ok(Some(StoredObject { key: key.as_str().to_owned(), content_type, bytes }))
}

fn delete_blocking(root: &Path, key: &ObjectKey) -> Result<(), PortError> {
    require_root(root)?;
    remove_if_present(&object_path(root, key)).map_err(|error| io_failure(error, "deleting", key))?;
    remove_if_present(&content_type_path(root, key))
        .map_err(|error| io_failure(error, "deleting the content type of", key))?;
    // The object's own directory goes too once empty (`remove_dir` refuses a directory with anything in it), or
    // every picture move would leave one behind. Only that directory: the ones above it are shared by many objects.
    if !key.parent().is_empty() {
        let _ = fs::remove_dir(root.join(key.parent()));
    }
    Ok(())
}

fn ping_blocking(root: &Path) -> Result<(), PortError> {
    require_root(root)?;
    // Permission bits do not tell whether a write will succeed (read-only mounts, full disks, ACLs), so the probe
    // is a real write.
    let probe = TempFile::write(root, "ping", "", b"").map_err(|error| {
        PortError::Unavailable(anyhow::Error::new(error).context(format!("{} is not writable", root.display())))
    })?;
    probe.remove().map_err(|error| {
        PortError::Unavailable(anyhow::Error::new(error).context(format!("cannot delete from {}", root.display())))
    })
}

fn list_blocking(root: &Path, prefix: &KeyPrefix) -> Result<Vec<String>, PortError> {
    require_root(root)?;
    let mut keys = Vec::new();
    // Every match lies under the prefix's complete segments, so the walk starts there rather than at the root.
    let mut pending = vec![(root.join(prefix.directory()), prefix.directory().to_owned())];
    while let Some((dir, dir_key)) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if is_missing(&error) => continue,
            Err(error) => return Err(listing_failure(error, &dir)),
        };
        for entry in entries {
            let entry = entry.map_err(|error| listing_failure(error, &dir))?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            let key = if dir_key.is_empty() { name } else { format!("{dir_key}/{name}") };
            // Symbolic links are not followed: the store never creates them, and following one could leave the root.
            let file_type = entry.file_type().map_err(|error| listing_failure(error, &dir))?;
            if file_type.is_dir() {
                // Only directories that can hold a match: those the prefix runs into, or that lie under it.
                let dir_prefix = format!("{key}/");
                let relevant = dir_prefix.starts_with(prefix.as_str()) || prefix.as_str().starts_with(&dir_prefix);
                if relevant && KeyPrefix::parse(&dir_prefix).is_ok() {
                    pending.push((entry.path(), key));
                }
            } else if file_type.is_file() && key.starts_with(prefix.as_str()) && ObjectKey::parse(&key).is_ok() {
                keys.push(key);
            }
        }
    }
    keys.sort_unstable();
    Ok(keys)
}

/// Fails with [`PortError::Unavailable`] unless the root is an existing directory: a vanished data volume is
/// storage that is down, not a store that is empty.
fn require_root(root: &Path) -> Result<(), PortError> {
    match fs::metadata(root) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(PortError::Unavailable(anyhow::anyhow!("{} is not a directory", root.display()))),
        Err(error) => Err(PortError::Unavailable(
            anyhow::Error::new(error).context(format!("picture directory {} is not accessible", root.display())),
        )),
    }
}

/// Whether an error means that nothing is stored at the path: it does not exist, a parent is a file, or it is a
/// directory (a key whose path other keys live under).
fn is_missing(error: &io::Error) -> bool {
    matches!(error.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if !is_missing(&error) => Err(error),
        _ => Ok(()),
    }
}

/// Translates an I/O error: conditions an operator fixes and a client can retry after (a full or read-only disk,
/// lost permissions, a stale network mount) are [`PortError::Unavailable`]; anything else is a bug or corruption.
fn io_failure(error: io::Error, doing: &str, key: &ObjectKey) -> PortError {
    let unavailable = matches!(
        error.kind(),
        ErrorKind::StorageFull
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::PermissionDenied
            | ErrorKind::StaleNetworkFileHandle
            | ErrorKind::ResourceBusy
            | ErrorKind::TimedOut
            | ErrorKind::Interrupted
    );
    let error = anyhow::Error::new(error).context(format!("{doing} picture {key}"));
    if unavailable { PortError::Unavailable(error) } else { PortError::Unknown(error) }
}

fn listing_failure(error: io::Error, dir: &Path) -> PortError {
    PortError::Unavailable(anyhow::Error::new(error).context(format!("listing {}", dir.display())))
}

/// A hidden temporary file in the directory of its final name, removed again unless it is renamed into place.
struct TempFile {
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    /// Creates `.<name><suffix>.<random>.tmp` in `dir` with `bytes`, synced to disk.
    fn write(dir: &Path, name: &str, suffix: &str, bytes: &[u8]) -> io::Result<Self> {
        let path = dir.join(format!(".{name}{suffix}.{}{TEMP_SUFFIX}", uuid::Uuid::new_v4().simple()));
        let mut file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        // The guard exists before the first byte is written, so a failed write leaves no file behind.
        let temp = Self { path, persisted: false };
        file.write_all(bytes)?;
        file.sync_all()?;
        Ok(temp)
    }

    /// Renames the file to `to`, atomically replacing any file there.
    fn persist(mut self, to: &Path) -> io::Result<()> {
        fs::rename(&self.path, to)?;
        self.persisted = true;
        Ok(())
    }

    /// Removes the file now, reporting failure (dropping removes it too, silently).
    fn remove(mut self) -> io::Result<()> {
        self.persisted = true;
        fs::remove_file(&self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort: the operation already failed with a more useful error than this one could be.
            let _ = fs::remove_file(&self.path);
        }
    }
}
