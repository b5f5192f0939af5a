//! Picture objects in a map.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use users_domain::ports::{PictureStore, PortError, StoredObject};

/// A [`PictureStore`] in memory; clones share the objects.
#[derive(Debug, Clone, Default)]
pub struct MemoryObjects {
    objects: Arc<Mutex<BTreeMap<String, StoredObject>>>,
    unavailable: Arc<AtomicBool>,
}

impl MemoryObjects {
    /// Makes every call fail with [`PortError::Unavailable`] (`true`) or work again (`false`).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// The keys stored now, in order.
    #[must_use]
    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    fn check(&self) -> Result<(), PortError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(PortError::Unavailable(anyhow::anyhow!("the memory object store is switched off")));
        }
        Ok(())
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredObject>> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PictureStore for MemoryObjects {
    async fn put(&self, object: StoredObject) -> Result<(), PortError> {
        self.check()?;
        self.objects().insert(object.key.clone(), object);
        Ok(())
    }

    async fn get(&self, key: String) -> Result<Option<StoredObject>, PortError> {
        self.check()?;
        Ok(self.objects().get(&key).cloned())
    }

    async fn copy(&self, from: String, to: String) -> Result<bool, PortError> {
        self.check()?;
        let mut objects = self.objects();
        let Some(object) = objects.get(&from).cloned() else { return Ok(false) };
        objects.insert(to.clone(), StoredObject { key: to, ..object });
        Ok(true)
    }

    async fn delete(&self, key: String) -> Result<(), PortError> {
        self.check()?;
        self.objects().remove(&key);
        Ok(())
    }

    async fn list(&self, prefix: String) -> Result<Vec<String>, PortError> {
        self.check()?;
        Ok(self.objects().keys().filter(|key| key.starts_with(&prefix)).cloned().collect())
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.check()
    }
}
