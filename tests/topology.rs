//! The service as it is deployed: several instances of the real binary on one Postgres database behind a real
//! nginx, one MailDev, and pictures on a three-node Garage cluster. A session moves freely between instances, a
//! refresh token is spent once whichever instances race for it, every queued mail goes out exactly once even when
//! an instance dies holding some, only the proxy's forwarding headers are believed, the per-IP limit counts for the
//! instances together, the signing key changes under traffic without a failed request, and a storage node may fail
//! without losing an upload.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used, reason = "test helpers: failing loudly is the point")]

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use users_domain::ports::PictureStore as _;
use users_e2e::garage::{GarageCluster, S3Settings};
use users_e2e::maildev::MailDev;
use users_e2e::topology::{Nginx, Topology};
use users_e2e::{STRONG_PASSWORD, free_port, json_body, login_json, run_cli, str_of, unique_email};

const ADMIN: &str = "topology-root@example.com";

/// Makes [`ADMIN`] with the CLI before the instances start.
fn create_admin(env: &HashMap<String, String>) {
    let output = run_cli(&["create-admin", "--email", ADMIN], env, &format!("{STRONG_PASSWORD}\n"));
    assert!(output.status.success(), "create-admin failed: {}", String::from_utf8_lossy(&output.stderr));
}

fn pairs(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
}

async fn refresh(client: &reqwest::Client, url: String, refresh_token: &str) -> reqwest::Response {
    client.post(url).json(&json!({"refresh_token": refresh_token})).send().await.unwrap()
}

async fn register(topology: &Topology, email: &str) -> reqwest::Response {
    let body = json!({"email": email, "password": STRONG_PASSWORD});
    topology.client.post(topology.url("/register")).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn a_session_started_on_one_instance_is_refreshed_on_another_and_used_on_a_third() {
    let topology = Topology::start(3, &[], |_, _| {}, create_admin).await;

    let login = login_json(&topology.client, &topology.proxy.address, ADMIN, STRONG_PASSWORD).await;
    assert_eq!(login.status(), 200);
    let logged_in_on = topology.answered_by(&login);
    let first = json_body(login).await;

    let refreshed = refresh(&topology.client, topology.url("/token/refresh"), str_of(&first, "refresh_token")).await;
    assert_eq!(refreshed.status(), 200);
    let refreshed_on = topology.answered_by(&refreshed);
    let second = json_body(refreshed).await;

    let me = topology.client.get(topology.url("/me")).bearer_auth(str_of(&second, "access_token")).send().await;
    let me = me.unwrap();
    assert_eq!(me.status(), 200);
    let used_on = topology.answered_by(&me);
    assert_eq!(json_body(me).await["email"], ADMIN);

    let instances: HashSet<usize> = [logged_in_on, refreshed_on, used_on].into();
    assert_eq!(instances.len(), 3, "login, refresh and /me went to {logged_in_on}, {refreshed_on}, {used_on}");

    // The spent refresh token is spent everywhere, not only on the instance that rotated it.
    for instance in &topology.instances {
        let reused = refresh(&topology.client, instance.url("/token/refresh"), str_of(&first, "refresh_token")).await;
        assert_eq!(reused.status(), 401, "reuse on {}", instance.upstream);
    }
}

#[tokio::test]
async fn one_refresh_token_raced_on_two_instances_is_rotated_once() {
    let topology = Topology::start(2, &[], |_, _| {}, create_admin).await;
    for round in 0..5 {
        let login = login_json(&topology.client, &topology.proxy.address, ADMIN, STRONG_PASSWORD).await;
        assert_eq!(login.status(), 200);
        let token = str_of(&json_body(login).await, "refresh_token").to_owned();
        let (a, b) = tokio::join!(
            refresh(&topology.client, topology.instances[0].url("/token/refresh"), &token),
            refresh(&topology.client, topology.instances[1].url("/token/refresh"), &token),
        );
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 401], "round {round}: exactly one instance may rotate the token");
    }
}

/// The addresses of every mail MailDev holds whose recipient contains `tag`, with repeats.
async fn recipients_tagged(maildev: &MailDev, tag: &str) -> Vec<String> {
    let mails: Vec<Value> =
        reqwest::get(format!("{}/email", maildev.web)).await.unwrap().json().await.unwrap_or_default();
    mails
        .iter()
        .flat_map(|mail| mail["to"].as_array().cloned().unwrap_or_default())
        .filter_map(|to| to["address"].as_str().map(str::to_owned))
        .filter(|address| address.contains(tag))
        .collect()
}

/// Waits until every address in `emails` has had a mail and the outbox holds nothing unsent, then checks that each
/// address got exactly one mail and that no other address with `tag` got any.
async fn assert_one_mail_each(topology: &Topology, maildev: &MailDev, tag: &str, emails: &[String]) {
    for email in emails {
        maildev.wait_for(email, 1).await;
    }
    let queued = i64::try_from(emails.len()).unwrap();
    let sent =
        topology.db.count_eventually("SELECT count(*) AS n FROM mail_outbox WHERE status = 'sent'", queued).await;
    assert_eq!(sent, queued, "every queued mail is marked sent");
    let unsent = topology.db.count("SELECT count(*) AS n FROM mail_outbox WHERE status <> 'sent'").await;
    assert_eq!(unsent, 0, "no mail is left pending or dead");
    let mut received = recipients_tagged(maildev, tag).await;
    received.sort();
    let mut expected = emails.to_vec();
    expected.sort();
    assert_eq!(received, expected, "each registration's mail arrives exactly once");
}

#[tokio::test]
async fn thirty_registrations_spread_over_three_instances_send_thirty_mails() {
    let maildev = MailDev::shared();
    let topology = Topology::start(3, &maildev.app_env(), |_, _| {}, |_| {}).await;
    let tag = format!("spread{}", uuid::Uuid::new_v4().simple());
    let emails: Vec<String> = (0..30).map(|n| format!("{tag}-{n}@example.com")).collect();
    let mut answered_by = HashSet::new();
    for email in &emails {
        let response = register(&topology, email).await;
        assert_eq!(response.status(), 202, "{email}");
        answered_by.insert(topology.answered_by(&response));
    }
    assert_eq!(answered_by.len(), 3, "the proxy spread the registrations over every instance");
    assert_one_mail_each(&topology, &maildev, &tag, &emails).await;
}

/// An SMTP server that accepts connections and never says a word: a dispatcher delivering to it holds its claimed
/// mails until it gives up or dies. Counts the connections it accepted.
fn silent_smtp_server() -> (u16, Arc<AtomicUsize>) {
    let port = free_port();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn mail_claimed_by_an_instance_killed_mid_burst_is_delivered_once_by_the_others() {
    let maildev = MailDev::shared();
    let (silent_port, victim_connections) = silent_smtp_server();
    const VICTIM: usize = 2;
    // A short lease, so that the test need not wait the default two minutes for the killed instance's claims to
    // run out; long enough that a live instance always finishes its batch within it.
    let mut shared = maildev.app_env();
    shared.extend(pairs(&[("MAIL_LEASE", "10s")]));
    let topology = Topology::start(
        3,
        &shared,
        |index, env| {
            if index == VICTIM {
                // The victim's deliveries hang, so whatever it claims stays claimed until it is killed.
                env.insert("SMTP_PORT".to_owned(), silent_port.to_string());
            }
        },
        |_| {},
    )
    .await;
    let mut topology = topology;
    let tag = format!("killed{}", uuid::Uuid::new_v4().simple());
    let mut emails = Vec::new();

    // Register in rounds until the victim has claimed mail (it is talking to the silent server), then kill it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while victim_connections.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the victim never claimed a mail");
        for _ in 0..3 {
            let email = format!("{tag}-{}@example.com", emails.len());
            assert_eq!(register(&topology, &email).await.status(), 202, "{email}");
            emails.push(email);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leased = topology
        .db
        .count("SELECT count(*) AS n FROM mail_outbox WHERE status = 'pending' AND next_attempt_at > now()")
        .await;
    assert!(leased >= 1, "the victim holds a lease on at least the mail it is sending");
    topology.instances[VICTIM].kill();

    // The burst goes on; the proxy routes around the dead instance.
    for _ in 0..12 {
        let email = format!("{tag}-{}@example.com", emails.len());
        let response = register(&topology, &email).await;
        assert_eq!(response.status(), 202, "{email} after the kill: {}", topology.proxy.error_log());
        assert_ne!(topology.answered_by(&response), VICTIM);
        emails.push(email);
    }
    assert_one_mail_each(&topology, &maildev, &tag, &emails).await;
}

/// A client whose connections come from `local`, a loopback address other than the proxy's 127.0.0.1.
fn client_from(local: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::V4(local)).pool_max_idle_per_host(0).build().unwrap()
}

/// Logs in as [`ADMIN`] at `base` with a forged `X-Forwarded-For` and returns the address the new session records.
async fn session_address(client: &reqwest::Client, base: &str) -> Value {
    let login = client
        .post(format!("{base}/login"))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({"email": ADMIN, "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let token = str_of(&json_body(login).await, "access_token").to_owned();
    let sessions = client.get(format!("{base}/me/sessions")).bearer_auth(&token).send().await.unwrap();
    let sessions = json_body(sessions).await;
    let current = sessions["items"].as_array().unwrap().iter().find(|session| session["current"] == true).cloned();
    current.unwrap()["ip"].clone()
}

#[tokio::test]
async fn forwarding_headers_count_only_when_the_proxy_sets_them() {
    let topology = Topology::start(2, &[], |_, _| {}, create_admin).await;
    let direct = client_from(Ipv4Addr::new(127, 0, 0, 3));
    let proxied = client_from(Ipv4Addr::new(127, 0, 0, 2));

    // Straight to an instance, the peer is not a trusted proxy: its header is ignored.
    assert_eq!(session_address(&direct, &topology.instances[0].address).await, "127.0.0.3");
    // Through the proxy, the address nginx appended is used; what the client forged to its left is not, and
    // neither is the proxy's own address (127.0.0.1, the peer the instance sees).
    assert_eq!(session_address(&proxied, &topology.proxy.address).await, "127.0.0.2");
}

/// Asks for a password reset of an unknown address (cheap, no hash) from `client` through the proxy.
async fn forgot(topology: &Topology, client: &reqwest::Client) -> reqwest::Response {
    let body = json!({"email": unique_email("nobody")});
    client.post(topology.url("/password/forgot")).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn the_per_ip_limit_holds_for_all_instances_together_and_tells_clients_apart_by_forwarded_address() {
    const LIMIT: usize = 6;
    let limit = LIMIT.to_string();
    let settings = pairs(&[("RATE_LIMITS", "on"), ("RATE_LIMIT_PER_MINUTE", &limit)]);
    let topology = Topology::start(3, &settings, |_, _| {}, |_| {}).await;
    let first = client_from(Ipv4Addr::new(127, 0, 0, 2));
    let second = client_from(Ipv4Addr::new(127, 0, 0, 3));

    // The first client's whole minute, spread by the proxy over the three instances.
    let mut answered_by = HashSet::new();
    for n in 0..LIMIT {
        let response = forgot(&topology, &first).await;
        assert_eq!(response.status(), 202, "request {n} of {LIMIT} is within the limit");
        answered_by.insert(topology.answered_by(&response));
    }
    assert_eq!(answered_by.len(), 3, "the proxy spread the requests over every instance");
    // One more is refused whichever instance gets it: with per-process counting each would still allow LIMIT.
    for instance in 0..3 {
        let refused = forgot(&topology, &first).await;
        assert_eq!(refused.status(), 429, "request beyond the limit, try {instance}");
        assert!(refused.headers().contains_key("retry-after"), "a 429 says when to come back");
    }
    // Another client behind the same proxy (one TCP peer for the instances) has its own budget.
    for n in 0..LIMIT {
        assert_eq!(forgot(&topology, &second).await.status(), 202, "the second client's request {n}");
    }
    assert_eq!(forgot(&topology, &second).await.status(), 429);
}

/// The `kid` in the header of a JWT.
fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
    let header: Value = serde_json::from_slice(&header).unwrap();
    str_of(&header, "kid").to_owned()
}

#[tokio::test]
async fn rotating_the_signing_key_during_traffic_breaks_no_request() {
    let topology = Arc::new(Topology::start(3, &[], |_, _| {}, create_admin).await);
    let login = login_json(&topology.client, &topology.proxy.address, ADMIN, STRONG_PASSWORD).await;
    assert_eq!(login.status(), 200);
    let before = json_body(login).await;
    let old_token = str_of(&before, "access_token").to_owned();
    let old_kid = kid_of(&old_token);

    // Traffic through the proxy while the key changes: reads with the old token, and refreshes that mint new ones,
    // each new token used at once (on whichever instance the proxy picks next).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (topology, stop, old_token) = (topology.clone(), stop.clone(), old_token.clone());
        let mut refresh_token = str_of(&before, "refresh_token").to_owned();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut requests = 0_usize;
            while !stop.load(Ordering::Relaxed) {
                let me = topology.client.get(topology.url("/me")).bearer_auth(&old_token).send().await.unwrap();
                if me.status() != 200 {
                    failures.push(format!("/me with the old token: {}", me.status()));
                }
                let refreshed = refresh(&topology.client, topology.url("/token/refresh"), &refresh_token).await;
                if refreshed.status() != 200 {
                    failures.push(format!("refresh: {}", refreshed.status()));
                    break;
                }
                let pair = json_body(refreshed).await;
                refresh_token = str_of(&pair, "refresh_token").to_owned();
                let fresh = str_of(&pair, "access_token");
                let me = topology.client.get(topology.url("/me")).bearer_auth(fresh).send().await.unwrap();
                if me.status() != 200 {
                    failures.push(format!("/me with a token of kid {}: {}", kid_of(fresh), me.status()));
                }
                requests += 3;
            }
            (requests, failures)
        })
    };

    let output = run_cli(&["keys", "rotate"], &topology.instances[0].env, "");
    assert!(output.status.success(), "keys rotate failed: {}", String::from_utf8_lossy(&output.stderr));

    // Every instance moves to the new key (activation after 15 s, reloads every 10 s): wait until logins on each
    // instance, asked directly, are signed with a kid other than the old one.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut new_kids = HashSet::new();
    for instance in &topology.instances {
        loop {
            let login = login_json(&topology.client, &instance.address, ADMIN, STRONG_PASSWORD).await;
            assert_eq!(login.status(), 200);
            let kid = kid_of(str_of(&json_body(login).await, "access_token"));
            if kid != old_kid {
                new_kids.insert(kid);
                break;
            }
            assert!(Instant::now() < deadline, "{} still signs with the old key after 60 s", instance.upstream);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert_eq!(new_kids.len(), 1, "every instance signs with the same new key: {new_kids:?}");

    stop.store(true, Ordering::Relaxed);
    let (requests, failures) = traffic.await.unwrap();
    assert!(failures.is_empty(), "requests failed during the rotation: {failures:?}");
    assert!(requests > 30, "the traffic ran through the rotation ({requests} requests)");
    // The token signed before the rotation still verifies on every instance, and JWKS publishes both keys.
    for instance in &topology.instances {
        let me = topology.client.get(instance.url("/me")).bearer_auth(&old_token).send().await.unwrap();
        assert_eq!(me.status(), 200, "the old token on {}", instance.upstream);
        let jwks = json_body(topology.client.get(instance.url("/.well-known/jwks.json")).send().await.unwrap()).await;
        let kids: HashSet<&str> =
            jwks["keys"].as_array().unwrap().iter().filter_map(|key| key["kid"].as_str()).collect();
        assert!(kids.contains(old_kid.as_str()) && new_kids.iter().all(|kid| kids.contains(kid.as_str())), "{kids:?}");
    }
}

fn picture(seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(320, 240, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, seed]));
    let mut bytes = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image).write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// A user created verified by the admin, and their access token.
async fn picture_owner(topology: &Topology, admin: &str) -> (String, String) {
    let email = unique_email("cluster");
    let body = json!({"email": email, "password": STRONG_PASSWORD, "email_verified": true});
    let created = topology.client.post(topology.url("/users")).bearer_auth(admin).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let id = str_of(&json_body(created).await, "id").to_owned();
    let login = login_json(&topology.client, &topology.proxy.address, &email, STRONG_PASSWORD).await;
    (id, str_of(&json_body(login).await, "access_token").to_owned())
}

async fn upload(topology: &Topology, token: &str, id: &str, seed: u8) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(picture(seed)).file_name("p.png").mime_str("image/png").unwrap();
    let form = reqwest::multipart::Form::new().part("file", part);
    let url = topology.url(&format!("/users/{id}/profile-picture"));
    topology.client.post(url).bearer_auth(token).multipart(form).send().await.unwrap()
}

/// Every size of every user's picture is served, as a decodable image.
async fn assert_all_served(topology: &Topology, ids: &[String], when: &str) {
    for id in ids {
        for size in ["original", "medium", "thumb"] {
            let url = topology.url(&format!("/profiles/{id}/picture?size={size}"));
            let served = topology.client.get(url).send().await.unwrap();
            assert_eq!(served.status(), 200, "{when}: {id} {size}");
            image::load_from_memory(&served.bytes().await.unwrap()).unwrap();
        }
    }
}

#[tokio::test]
async fn pictures_survive_a_storage_node_failure_on_a_three_node_garage_cluster() {
    let mut cluster = GarageCluster::start().await;
    // The app reaches Garage through nginx over all three nodes: every node serves the whole S3 API, and a proxy
    // that skips a node refusing connections keeps a single failed node from failing uploads.
    let s3_proxy = Nginx::start(free_port(), &cluster.s3_ports()).await;
    let s3 = S3Settings { endpoint: s3_proxy.address.clone(), ..cluster.settings.clone() };
    let mut shared = s3.app_env();
    shared.extend(pairs(&[("BOOTSTRAP_ADMIN_EMAIL", ADMIN), ("BOOTSTRAP_ADMIN_PASSWORD", STRONG_PASSWORD)]));
    let topology = Topology::start(2, &shared, |_, _| {}, |_| {}).await;
    let admin = login_json(&topology.client, &topology.proxy.address, ADMIN, STRONG_PASSWORD).await;
    let admin = str_of(&json_body(admin).await, "access_token").to_owned();

    let mut ids = Vec::new();
    let (id, token) = picture_owner(&topology, &admin).await;
    assert_eq!(upload(&topology, &token, &id, 1).await.status(), 200, "with all nodes up");
    ids.push(id);

    cluster.stop(1);
    for seed in 2..5 {
        let (id, token) = picture_owner(&topology, &admin).await;
        let uploaded = upload(&topology, &token, &id, seed).await;
        assert_eq!(uploaded.status(), 200, "with node 1 down: {}", s3_proxy.error_log());
        ids.push(id);
    }
    assert_all_served(&topology, &ids, "node 1 down").await;

    cluster.resume(1).await;
    // The returned node answers for every object, including those written while it was down...
    let returned = cluster.node_settings(1).store();
    for id in &ids {
        let keys = returned.list(&format!("profile_pictures/{id}/")).await.unwrap();
        assert_eq!(keys.len(), 3, "three sizes of {id}'s picture through the returned node");
        for key in keys {
            let object = returned.get(key.clone()).await.unwrap();
            assert!(object.is_some_and(|object| !object.bytes.is_empty()), "{key} through the returned node");
        }
    }
    // ...and it now stands in for another node: with node 2 down, quorum needs node 1.
    cluster.stop(2);
    assert_all_served(&topology, &ids, "node 1 back, node 2 down").await;
}
