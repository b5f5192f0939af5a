//! The picture store chosen by `STORAGE_BACKEND`.

use std::future::Future;

use anyhow::Context as _;
use users_domain::ports::{PictureStore, PortError, StoredObject};
use users_s3::{FsPictureStore, S3PictureStore};

use crate::config::{Config, StorageBackend};

/// One of the two stores, picked at start-up.
#[derive(Debug, Clone)]
pub enum AppStore {
    /// Files under `DATA_DIR/pictures`.
    Fs(FsPictureStore),
    /// An S3-compatible server (boxed: much larger than the file store).
    S3(Box<S3PictureStore>),
}

impl AppStore {
    /// Builds the store `STORAGE_BACKEND` asks for. The S3 bucket is created when missing; an unreachable S3
    /// server does not stop start-up (pictures answer 503 and `/readyz` reports it until it is back).
    ///
    /// # Errors
    /// When the picture directory cannot be created or the S3 settings are unusable.
    pub async fn from_config(config: &Config) -> anyhow::Result<Self> {
        match &config.storage {
            StorageBackend::Fs => {
                let root = config.data_dir.join("pictures");
                let store = FsPictureStore::new(root.clone())
                    .with_context(|| format!("STORAGE_BACKEND=fs: creating {}", root.display()))?;
                Ok(Self::Fs(store))
            }
            StorageBackend::S3(s3) => {
                let settings = s3.clone();
                let store = match S3PictureStore::connect(settings.clone()).await {
                    Ok(store) => store,
                    Err(users_s3::S3SetupError::Unavailable(error)) => {
                        tracing::warn!(error = %format!("{error:#}"), "S3 is unreachable at start-up; pictures answer 503 until it is back");
                        S3PictureStore::new(settings).context("S3_* settings")?
                    }
                    Err(error) => return Err(anyhow::Error::new(error).context("STORAGE_BACKEND=s3: S3_* settings")),
                };
                Ok(Self::S3(Box::new(store)))
            }
        }
    }
}

impl PictureStore for AppStore {
    fn put(&self, object: StoredObject) -> impl Future<Output = Result<(), PortError>> + Send {
        let store = self.clone();
        async move {
            match store {
                Self::Fs(fs) => fs.put(object).await,
                Self::S3(s3) => s3.put(object).await,
            }
        }
    }

    fn get(&self, key: String) -> impl Future<Output = Result<Option<StoredObject>, PortError>> + Send {
        let store = self.clone();
        async move {
            match store {
                Self::Fs(fs) => fs.get(key).await,
                Self::S3(s3) => s3.get(key).await,
            }
        }
    }

    fn copy(&self, from: String, to: String) -> impl Future<Output = Result<bool, PortError>> + Send {
        let store = self.clone();
        async move {
            match store {
                Self::Fs(fs) => fs.copy(from, to).await,
                Self::S3(s3) => s3.copy(from, to).await,
            }
        }
    }

    fn delete(&self, key: String) -> impl Future<Output = Result<(), PortError>> + Send {
        let store = self.clone();
        async move {
            match store {
                Self::Fs(fs) => fs.delete(key).await,
                Self::S3(s3) => s3.delete(key).await,
            }
        }
    }

    fn list(&self, prefix: String) -> impl Future<Output = Result<Vec<String>, PortError>> + Send {
        let store = self.clone();
        async move {
            match store {
                Self::Fs(fs) => fs.list(&prefix).await,
                Self::S3(s3) => s3.list(&prefix).await,
            }
        }
    }

    fn ping(&self) -> impl Future<Output = Result<(), PortError>> + Send {
        let store = self.clone();
        async move {
            match store {
                Self::Fs(fs) => fs.ping().await,
                Self::S3(s3) => s3.ping().await,
            }
        }
    }
}
