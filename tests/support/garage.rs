//! Garage, the S3 server of the tests: the shared instance's settings, and a private instance a fault test may
//! stop and start again without disturbing other tests.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with `cargo xtask test`"))
}

/// S3 connection settings.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The region Garage signs with.
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
}

impl S3Settings {
    /// The shared Garage started by `cargo xtask test`.
    pub fn shared() -> Self {
        Self {
            endpoint: env("UM_TEST_S3_ENDPOINT"),
            region: env("UM_TEST_S3_REGION"),
            bucket: env("UM_TEST_S3_BUCKET"),
            access_key: env("UM_TEST_S3_ACCESS_KEY"),
            secret_key: env("UM_TEST_S3_SECRET_KEY"),
        }
    }

    /// The app settings that store pictures here.
    pub fn app_env(&self) -> Vec<(String, String)> {
        vec![
            ("STORAGE_BACKEND".to_owned(), "s3".to_owned()),
            ("S3_ENDPOINT".to_owned(), self.endpoint.clone()),
            ("S3_REGION".to_owned(), self.region.clone()),
            ("S3_BUCKET".to_owned(), self.bucket.clone()),
            ("S3_ACCESS_KEY".to_owned(), self.access_key.clone()),
            ("S3_SECRET_KEY".to_owned(), self.secret_key.clone()),
        ]
    }

    /// A client on the bucket, to look at what the app stored.
    pub fn store(&self) -> users_s3::S3PictureStore {
        users_s3::S3PictureStore::new(users_s3::S3Config {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        })
        .expect("valid S3 settings")
    }
}

/// A Garage of the test's own, on free ports, with its own data, so the test can take it down and bring it back.
pub struct PrivateGarage {
    /// Its settings.
    pub settings: S3Settings,
    binary: PathBuf,
    config: PathBuf,
    admin_port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl PrivateGarage {
    /// Starts one with a bucket and waits until it answers.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (s3_port, rpc_port, admin_port) = (crate::free_port(), crate::free_port(), crate::free_port());
        let config = dir.path().join("garage.toml");
        let secret: String = uuid::Uuid::new_v4().simple().to_string().repeat(2);
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_secret = \"{secret}\"\n[s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                 root_domain = \".s3.garage.localhost\"\n[admin]\napi_bind_addr = \"127.0.0.1:{admin_port}\"\n\
                 admin_token = \"{secret}\"\n",
                meta = dir.path().join("meta").display(),
                data = dir.path().join("data").display(),
            ),
        )
        .unwrap();
        let settings = S3Settings {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            region: "garage".to_owned(),
            bucket: "private-pictures".to_owned(),
            access_key: format!("GK{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
            secret_key: uuid::Uuid::new_v4().simple().to_string().repeat(2),
        };
        let mut this = Self {
            settings,
            binary: PathBuf::from(env("UM_TEST_GARAGE_BIN")),
            config,
            admin_port,
            child: None,
            _dir: dir,
        };
        this.resume().await;
        this
    }

    /// Stops it (SIGTERM, then waits); its S3 port refuses connections until [`Self::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// Starts it again with the same data and waits until it answers.
    pub async fn resume(&mut self) {
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.settings.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.settings.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.settings.bucket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Garage should start (UM_TEST_GARAGE_BIN)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let health = format!("http://127.0.0.1:{}/health", self.admin_port);
        loop {
            let up = reqwest::get(&health).await.is_ok_and(|r| r.status().is_success());
            let s3_port = self.settings.endpoint.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
            if up && TcpStream::connect(("127.0.0.1", s3_port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "Garage did not come up within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivateGarage {
    fn drop(&mut self) {
        self.stop();
    }
}
