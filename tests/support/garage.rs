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

/// One node of a [`GarageCluster`].
struct ClusterNode {
    config: PathBuf,
    s3_port: u16,
    admin_port: u16,
    child: Option<Child>,
}

/// Three Garage nodes of the test's own, one zone each, storing every object on all three (replication factor 3,
/// zone redundancy at its maximum) with quorum reads and writes, so that any one node may be down while reads
/// and writes go on. A node can be stopped and started again; all are stopped on drop.
pub struct GarageCluster {
    /// The bucket and key; the endpoint is the first node's.
    pub settings: S3Settings,
    binary: PathBuf,
    nodes: Vec<ClusterNode>,
    _dir: tempfile::TempDir,
}

impl GarageCluster {
    /// Starts the three nodes, connects them, applies a layout, creates the key and the bucket, and waits until
    /// every node answers S3.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rpc_secret = uuid::Uuid::new_v4().simple().to_string().repeat(2);
        let admin_token = uuid::Uuid::new_v4().simple().to_string();
        let nodes: Vec<ClusterNode> = (0..3)
            .map(|index| {
                let node_dir = dir.path().join(format!("node{index}"));
                std::fs::create_dir_all(&node_dir).unwrap();
                let (s3_port, rpc_port, admin_port) = (crate::free_port(), crate::free_port(), crate::free_port());
                let config = node_dir.join("garage.toml");
                std::fs::write(
                    &config,
                    format!(
                        "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                         replication_factor = 3\nconsistency_mode = \"consistent\"\n\
                         rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                         rpc_secret = \"{rpc_secret}\"\n[s3_api]\ns3_region = \"garage\"\n\
                         api_bind_addr = \"127.0.0.1:{s3_port}\"\nroot_domain = \".s3.garage.localhost\"\n\
                         [admin]\napi_bind_addr = \"127.0.0.1:{admin_port}\"\nadmin_token = \"{admin_token}\"\n",
                        meta = node_dir.join("meta").display(),
                        data = node_dir.join("data").display(),
                    ),
                )
                .unwrap();
                ClusterNode { config, s3_port, admin_port, child: None }
            })
            .collect();
        let settings = S3Settings {
            endpoint: format!("http://127.0.0.1:{}", nodes[0].s3_port),
            region: "garage".to_owned(),
            bucket: "cluster-pictures".to_owned(),
            access_key: format!("GK{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
            secret_key: uuid::Uuid::new_v4().simple().to_string().repeat(2),
        };
        let mut this = Self { settings, binary: PathBuf::from(env("UM_TEST_GARAGE_BIN")), nodes, _dir: dir };
        for index in 0..3 {
            this.spawn(index);
        }
        this.wait_until_listening().await;
        this.form_cluster().await;
        this
    }

    /// The S3 ports of the three nodes.
    pub fn s3_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.s3_port).collect()
    }

    /// The same bucket and key, through node `index`'s own S3 endpoint.
    pub fn node_settings(&self, index: usize) -> S3Settings {
        S3Settings { endpoint: format!("http://127.0.0.1:{}", self.nodes[index].s3_port), ..self.settings.clone() }
    }

    /// Runs the `garage` CLI against node 0 and returns its standard output, failing the test when it fails.
    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(&self.binary).arg("-c").arg(&self.nodes[0].config).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "garage {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `<node id>@<rpc address>` of node `index`, asked of that node's own configuration.
    fn node_id(&self, index: usize) -> String {
        let output = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.nodes[index].config)
            .args(["node", "id", "-q"])
            .output()
            .unwrap();
        assert!(output.status.success(), "garage node id: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Connects the nodes, gives each its own zone and a capacity, asks for the maximum zone redundancy (a copy in
    /// each zone), applies the layout, and creates the key and the bucket.
    async fn form_cluster(&self) {
        let ids: Vec<String> = (0..3).map(|index| self.node_id(index)).collect();
        for id in &ids[1..] {
            self.cli(&["node", "connect", id]);
        }
        for (index, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap();
            self.cli(&["layout", "assign", "-z", &format!("dc{index}"), "-c", "100M", short]);
        }
        self.cli(&["layout", "config", "-r", "max"]);
        self.cli(&["layout", "apply", "--version", "1"]);
        self.wait_until_healthy().await;
        self.cli(&["key", "import", "--yes", "-n", "pictures", &self.settings.access_key, &self.settings.secret_key]);
        self.cli(&["bucket", "create", &self.settings.bucket]);
        self.cli(&["bucket", "allow", "--read", "--write", &self.settings.bucket, "--key", &self.settings.access_key]);
    }

    /// Waits until every node's admin API accepts connections: by then it has made its node key and can be
    /// named and connected to (its health waits for a layout, which needs all three).
    async fn wait_until_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            while TcpStream::connect(("127.0.0.1", node.admin_port)).is_err() {
                assert!(Instant::now() < deadline, "a Garage node did not open its admin API within 30 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Waits until the admin `/health` of every running node answers 200 (quorum available) and its S3 port
    /// accepts connections.
    async fn wait_until_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut all = true;
            for node in self.nodes.iter().filter(|node| node.child.is_some()) {
                let health = format!("http://127.0.0.1:{}/health", node.admin_port);
                let up = reqwest::get(&health).await.is_ok_and(|r| r.status().is_success());
                all &= up && TcpStream::connect(("127.0.0.1", node.s3_port)).is_ok();
            }
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "the Garage cluster did not become healthy within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn(&mut self, index: usize) {
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.nodes[index].config)
            .arg("server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Garage should start (UM_TEST_GARAGE_BIN)");
        self.nodes[index].child = Some(child);
    }

    /// Stops node `index` (SIGKILL: a node that fails, not one that is shut down) and waits until its S3 port
    /// refuses connections.
    pub fn stop(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.nodes[index].s3_port)).is_ok() {
            assert!(Instant::now() < deadline, "Garage node {index} did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts node `index` again with its data and waits until the cluster is healthy again.
    pub async fn resume(&mut self, index: usize) {
        self.spawn(index);
        self.wait_until_healthy().await;
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
