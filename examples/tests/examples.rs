//! Runs both examples and checks what they report, so the embedding they show keeps working.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

#[allow(dead_code)]
#[path = "../embed_domain.rs"]
mod embed_domain;

#[allow(dead_code)]
#[path = "../host_app.rs"]
mod host_app;

use users_domain::Role;

#[tokio::test]
async fn the_domain_runs_a_whole_account_life_on_the_memory_adapters() {
    let summary = embed_domain::walk_through().await.unwrap();
    assert_eq!(summary.registered_role, Role::Anonymous);
    assert_eq!(summary.verified_role, Role::Authenticated);
    assert!(summary.refreshed);
    assert!(summary.professional);
    assert_eq!(summary.mails, ["Verify your email address", "You now have professional status"]);
}

#[actix_web::test]
async fn the_routes_serve_under_a_prefix_of_a_host_application() {
    let summary = host_app::serve_and_call().await.unwrap();
    assert_eq!(summary.hello, 200);
    assert_eq!(summary.register, 202);
    assert_eq!(summary.verify, 200);
    assert_eq!(summary.login, 200);
    assert_eq!(summary.me, (200, "ada@example.com".to_owned()));
}
