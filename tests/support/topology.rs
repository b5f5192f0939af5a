//! The service as it is deployed: several instances of the real binary on one database, behind a real nginx.
//!
//! [`Nginx`] is a reverse proxy of the test's own (a generated configuration in a temporary directory, on a free
//! port, round-robin over its upstreams, killed on drop) that tells which upstream answered in `X-Upstream`.
//! [`Topology`] starts several instances that share one database, one signing key and one public address, and puts
//! an [`Nginx`] in front of them; each instance keeps a data directory of its own, as separate machines would.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use users_testkit::TestDatabase;

use crate::{base_env, client, free_port, spawn_serve, wait_until_healthy};

/// The header the test proxy adds to every answer: the `host:port` of the upstream that produced it.
pub const UPSTREAM_HEADER: &str = "x-upstream";

/// The networks the instances trust for `X-Forwarded-For`: the proxy connects from 127.0.0.1 (the tests' clients
/// bind other loopback addresses when they must look different from the proxy).
pub const TRUSTED_PROXIES: &str = "127.0.0.1/32";

/// The path of nginx: `UM_TEST_NGINX_BIN`, set by `cargo xtask test` (which installs nginx when it is missing).
pub fn nginx_binary() -> PathBuf {
    let path = std::env::var("UM_TEST_NGINX_BIN")
        .map(PathBuf::from)
        .expect("UM_TEST_NGINX_BIN is not set: run the tests with `cargo xtask test`, which installs nginx");
    assert!(path.exists(), "{} does not exist: run the tests with `cargo xtask test`", path.display());
    path
}

/// A running nginx proxying to a set of local upstreams; killed when dropped.
pub struct Nginx {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The port it listens on.
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts one on `port` (from [`free_port`]) in front of `upstreams` (local ports), round-robin, and waits
    /// until it accepts connections.
    pub async fn start(port: u16, upstreams: &[u16]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, config_text(dir.path(), port, upstreams)).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(&config)
            // The log of start-up errors, before the configuration is read, would otherwise be /var/log/nginx.
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx should start (UM_TEST_NGINX_BIN)");
        let mut this = Self { address: format!("http://127.0.0.1:{port}"), port, child, dir };
        this.wait_until_listening().await;
        this
    }

    async fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nginx exited with {status} before listening; its log:\n{}", self.error_log());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "nginx did not listen within 10 s; its log:\n{}", self.error_log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What nginx logged (warnings and errors), for failure messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration of a test proxy: one process in the foreground (`daemon off`, `master_process off`, so killing
/// the child stops all of it), every path it writes inside `dir`, and the proxying a production nginx does: the
/// client's `Host`, `X-Forwarded-For` with the peer appended, and the next upstream tried when one refuses the
/// connection. Bodies up to 50 MB pass, so the app's own upload limit is the one that answers.
fn config_text(dir: &std::path::Path, port: u16, upstreams: &[u16]) -> String {
    let dir = dir.display();
    let servers: String = upstreams.iter().map(|port| format!("        server 127.0.0.1:{port};\n")).collect();
    format!(
        "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n    access_log off;\n\
         \x20   client_body_temp_path {dir}/client_body;\n    proxy_temp_path {dir}/proxy;\n\
         \x20   fastcgi_temp_path {dir}/fastcgi;\n    uwsgi_temp_path {dir}/uwsgi;\n    scgi_temp_path {dir}/scgi;\n\
         \x20   client_max_body_size 50m;\n\
         \x20   upstream backends {{\n{servers}    }}\n\
         \x20   server {{\n        listen 127.0.0.1:{port};\n        location / {{\n\
         \x20           proxy_pass http://backends;\n            proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n            proxy_set_header Host $http_host;\n\
         \x20           proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20           proxy_set_header X-Forwarded-Proto $scheme;\n\
         \x20           proxy_next_upstream error timeout;\n\
         \x20           proxy_request_buffering off;\n\
         \x20           add_header X-Upstream $upstream_addr always;\n        }}\n    }}\n}}\n"
    )
}

/// One instance of the binary in a [`Topology`].
pub struct Instance {
    /// `http://127.0.0.1:<port>`, to reach this instance directly, past the proxy.
    pub address: String,
    /// `127.0.0.1:<port>`, as the proxy's `X-Upstream` names it.
    pub upstream: String,
    /// The environment it runs with.
    pub env: HashMap<String, String>,
    child: Option<Child>,
    _data_dir: tempfile::TempDir,
}

impl Instance {
    /// The URL of a path on this instance.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Kills it with SIGKILL (no shutdown, no draining of anything it holds) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Several instances on one database behind one nginx.
pub struct Topology {
    /// The proxy in front of every instance; the address clients use.
    pub proxy: Nginx,
    /// The instances, in the order they were started.
    pub instances: Vec<Instance>,
    /// The database they share.
    pub db: TestDatabase,
    /// A plain HTTP client.
    pub client: reqwest::Client,
}

impl Topology {
    /// Starts `count` instances with the base test settings plus `shared` (every instance) and whatever `each`
    /// sets for instance `i`; `before_start` runs CLI commands against the database first (with the first
    /// instance's settings). Every instance has `PUBLIC_BASE_URL` on the proxy, `TRUSTED_PROXIES` set to
    /// [`TRUSTED_PROXIES`], and no `JWT_PRIVATE_KEY_FILE`: the signing keys are the database's, so a token issued by
    /// one is accepted by all (and the first key is settled among instances starting together).
    pub async fn start(
        count: usize,
        shared: &[(String, String)],
        each: impl Fn(usize, &mut HashMap<String, String>),
        before_start: impl FnOnce(&HashMap<String, String>),
    ) -> Self {
        let db = TestDatabase::create().await;
        let proxy_port = free_port();
        let public_base_url = format!("http://127.0.0.1:{proxy_port}");

        let mut envs = Vec::with_capacity(count);
        let mut data_dirs = Vec::with_capacity(count);
        for index in 0..count {
            let data_dir = tempfile::tempdir().unwrap();
            let mut env = base_env(&db, &data_dir);
            env.insert("RUST_LOG".to_owned(), "warn".to_owned());
            env.insert("METRICS_BIND_ADDR".to_owned(), format!("127.0.0.1:{}", free_port()));
            env.insert("BIND_ADDR".to_owned(), format!("127.0.0.1:{}", free_port()));
            env.insert("PUBLIC_BASE_URL".to_owned(), public_base_url.clone());
            env.insert("TRUSTED_PROXIES".to_owned(), TRUSTED_PROXIES.to_owned());
            env.extend(shared.iter().cloned());
            each(index, &mut env);
            envs.push(env);
            data_dirs.push(data_dir);
        }
        before_start(&envs[0]);

        // All start at once, as a rolling deployment's replicas would; each then has to answer on its own.
        let client = client();
        let mut instances: Vec<Instance> = envs
            .into_iter()
            .zip(data_dirs)
            .map(|(env, data_dir)| {
                let upstream = env["BIND_ADDR"].clone();
                let child = spawn_serve(&env);
                Instance {
                    address: format!("http://{upstream}"),
                    upstream,
                    env,
                    child: Some(child),
                    _data_dir: data_dir,
                }
            })
            .collect();
        for instance in &mut instances {
            let address = instance.address.clone();
            wait_until_healthy(instance.child.as_mut().unwrap(), &client, &address).await;
        }
        let ports: Vec<u16> =
            instances.iter().map(|instance| instance.upstream.rsplit(':').next().unwrap().parse().unwrap()).collect();
        let proxy = Nginx::start(proxy_port, &ports).await;
        Self { proxy, instances, db, client }
    }

    /// The URL of a path through the proxy.
    pub fn url(&self, path: &str) -> String {
        self.proxy.url(path)
    }

    /// The index of the instance a proxied answer came from (read from `X-Upstream`).
    ///
    /// # Panics
    /// When the header is missing or names no instance of this topology.
    pub fn answered_by(&self, response: &reqwest::Response) -> usize {
        let upstream = response
            .headers()
            .get(UPSTREAM_HEADER)
            .unwrap_or_else(|| panic!("no {UPSTREAM_HEADER} header: the answer did not come through the proxy"))
            .to_str()
            .unwrap();
        // After a refused connection nginx lists every upstream it tried ("a, b"); the last one answered.
        let last = upstream.rsplit(", ").next().unwrap_or(upstream);
        self.instances
            .iter()
            .position(|instance| instance.upstream == last)
            .unwrap_or_else(|| panic!("{UPSTREAM_HEADER}: {upstream} is none of the instances"))
    }
}
