//! The pages under `/ui/`, in a real browser (Debian's Chromium through ChromeDriver) against the real binary, with
//! mail over SMTP to MailDev: a person signs up, confirms by the mailed link, signs in, edits their profile,
//! uploads pictures and changes their password; an administrator finds them in the user table and locks them, and
//! their browser session stops working. Every page visited is checked with axe-core (no serious or critical
//! violation) and photographed at desktop and phone width under `target/screenshots/`. The same sign-in and
//! profile save work with JavaScript turned off. The CSRF and cookie-session rules are checked over plain HTTP.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};
use serde_json::Value;
use users_e2e::browser::Browser;
use users_e2e::maildev::{MailDev, link};
use users_e2e::totp::{base32_decode, totp, unix_now};
use users_e2e::{BinaryApp, STRONG_PASSWORD, WRONG_PASSWORD as WRONG, json_body, login_json, unique_email};

/// The bootstrap administrator's password.
const ADMIN_PASSWORD: &str = "quartz-lantern-meadow-42";

/// The person's password after the change.
const NEW_PASSWORD: &str = "harbor-tangerine-velvet-81";

/// The binary with mail to MailDev and a bootstrap administrator `admin`.
async fn app(admin: &str) -> BinaryApp {
    let mut extra = MailDev::shared().app_env();
    extra.push(("BOOTSTRAP_ADMIN_EMAIL".to_owned(), admin.to_owned()));
    extra.push(("BOOTSTRAP_ADMIN_PASSWORD".to_owned(), ADMIN_PASSWORD.to_owned()));
    BinaryApp::start_with(&extra, |_| {}).await
}

/// A PNG photo of the given shade.
fn png(shade: u8) -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([shade, u8::try_from(x % 256).unwrap(), u8::try_from(y % 256).unwrap()])
    }));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, ImageFormat::Png).unwrap();
    bytes.into_inner()
}

async fn sign_in(browser: &Browser, email: &str, password: &str) {
    browser.goto("/ui/sign-in").await;
    browser.fill("Email", email).await;
    browser.fill("Password", password).await;
    browser.press("Sign in").await;
}

#[tokio::test]
async fn a_person_signs_up_and_manages_their_account_and_an_administrator_locks_them_out() {
    let admin_email = unique_email("pages-admin");
    let app = app(&admin_email).await;
    let maildev = MailDev::shared();
    let person = Browser::open(&app.address, true).await;
    let email = unique_email("pages");

    // `/` leads a stranger to the sign-in page.
    person.goto("/").await;
    assert_eq!(person.path().await, "/ui/sign-in");
    person.review("sign-in").await;
    person.goto("/ui/password/forgot").await;
    person.review("forgot-password").await;

    // Sign up: a weak password is refused beside its field, with the address kept and nothing registered.
    person.goto("/ui/sign-up").await;
    person.review("sign-up").await;
    person.fill("Email", &email).await;
    person.fill("Password", "too short").await;
    person.press("Sign up").await;
    assert_eq!(person.heading().await, "Sign up");
    assert!(person.text().await.contains("Please correct the fields marked below."), "{}", person.text().await);
    assert_eq!(person.value("Email").await, email);
    assert_eq!(person.value("Password").await, "", "a password never comes back into a page");
    person.review("sign-up-errors").await;
    assert!(maildev.mails_to(&email).await.is_empty());
    person.fill("Password", STRONG_PASSWORD).await;
    person.press("Sign up").await;
    assert_eq!(person.heading().await, "Check your inbox");
    person.review("sign-up-done").await;

    // The mailed link, opened in the browser, confirms the address with a page.
    let mails = maildev.wait_for(&email, 1).await;
    person.goto(&link(&mails[0], &format!("{}/verify-email/", app.address))).await;
    assert!(person.text().await.contains("confirmed"), "{}", person.text().await);
    person.review("email-confirmed").await;

    // Sign in and edit the profile; what is saved reads back, escaped.
    sign_in(&person, &email, STRONG_PASSWORD).await;
    assert_eq!(person.path().await, "/ui/account");
    person.fill("First name", "Ada").await;
    person.fill("Bio", "Writes <b>programs</b> & proofs").await;
    person.press("Save").await;
    assert_eq!(person.path().await, "/ui/account?done=profile");
    assert!(person.text().await.contains("Your profile is saved."));
    assert_eq!(person.value("First name").await, "Ada");
    assert_eq!(person.value("Bio").await, "Writes <b>programs</b> & proofs");
    let token = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;
    let me: Value = json_body(
        app.client.get(app.url("/me")).bearer_auth(token["access_token"].as_str().unwrap()).send().await.unwrap(),
    )
    .await;
    assert_eq!(me["first_name"], "Ada");
    assert_eq!(me["bio"], "Writes <b>programs</b> & proofs");

    // Two pictures: the second archives the first, which the page offers to restore.
    let pictures = tempfile::tempdir().unwrap();
    for shade in [40, 200] {
        let path = pictures.path().join(format!("photo-{shade}.png"));
        std::fs::write(&path, png(shade)).unwrap();
        person.choose_file("Picture", &path).await;
        person.press("Upload").await;
        assert_eq!(person.path().await, "/ui/account?done=picture");
    }
    let id = me["id"].as_str().unwrap();
    let served = app.client.get(app.url(&format!("/profiles/{id}/picture"))).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert!(person.text().await.contains("Earlier pictures"));
    person.review("account").await;
    person.press("Restore").await;
    assert_eq!(person.path().await, "/ui/account?done=restored");

    // The other parts of the account.
    for (path, name) in [
        ("/ui/account/email", "account-email"),
        ("/ui/account/mfa", "account-second-factor"),
        ("/ui/account/sessions", "account-sessions"),
        ("/ui/account/delete", "account-delete"),
    ] {
        person.goto(path).await;
        person.review(name).await;
    }

    // Change the password: the old one stops working, the new one works, this browser stays signed in.
    person.goto("/ui/account/password").await;
    person.review("account-password").await;
    person.fill("Current password", STRONG_PASSWORD).await;
    person.fill("New password", NEW_PASSWORD).await;
    person.press("Save").await;
    assert!(person.text().await.contains("Your password is changed."), "{}", person.text().await);
    assert_eq!(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await.status(), 401);
    assert_eq!(login_json(&app.client, &app.address, &email, NEW_PASSWORD).await.status(), 200);

    // An administrator finds the person and locks them.
    let admin = Browser::open(&app.address, true).await;
    sign_in(&admin, &admin_email, ADMIN_PASSWORD).await;
    admin.goto("/ui/users").await;
    admin.review("users").await;
    admin.fill("Email, nickname or name starts with", &email).await;
    admin.press("Search").await;
    let table = admin.text().await;
    assert!(table.contains(&email), "{table}");
    assert!(!table.contains(&admin_email), "the search shows only matching users: {table}");
    admin.follow(&email).await;
    assert_eq!(admin.path().await, format!("/ui/users/{id}"));
    admin.review("user").await;
    admin.set_checked("Locked", true).await;
    admin.press("Save").await;
    assert!(admin.text().await.contains("The changes are saved."), "{}", admin.text().await);
    admin.goto("/ui/audit").await;
    assert!(admin.text().await.contains("user.locked"));
    admin.review("audit").await;

    // The person's browser session is over, and signing in again is refused with the reason.
    person.goto("/ui/account").await;
    assert_eq!(person.path().await, "/ui/sign-in");
    sign_in(&person, &email, NEW_PASSWORD).await;
    assert!(person.text().await.contains("This account is locked."), "{}", person.text().await);
    person.review("sign-in-refused").await;

    person.close().await;
    admin.close().await;
}

#[tokio::test]
async fn the_second_factor_is_set_up_and_asked_for_and_a_forgotten_password_is_reset_in_the_browser() {
    let admin_email = unique_email("pages-mfa");
    let app = app(&admin_email).await;
    let maildev = MailDev::shared();
    // The second factor is turned on from the account page: the key and its QR code, a code, the recovery codes.
    let browser = Browser::open(&app.address, true).await;
    sign_in(&browser, &admin_email, ADMIN_PASSWORD).await;
    browser.goto("/ui/account/mfa").await;
    browser.fill("Current password", ADMIN_PASSWORD).await;
    browser.press("Set up").await;
    assert!(browser.text_of("svg.qr").await.is_empty(), "the QR code is drawn, not written");
    browser.review("account-second-factor-setup").await;
    let secret = base32_decode(&browser.text_of("code.secret").await);
    let step = unix_now() / 30;
    browser.fill("Code", &totp(&secret, step, 6)).await;
    browser.press("Turn on").await;
    assert!(browser.text().await.contains("The second factor is on."), "{}", browser.text().await);
    assert_eq!(browser.count("ul.codes li").await, 10, "ten recovery codes, shown once");
    browser.review("account-recovery-codes").await;
    browser.close().await;

    // The right password leads to the code page; a wrong code is refused there; the next step's code signs in.
    let browser = Browser::open(&app.address, true).await;
    sign_in(&browser, &admin_email, ADMIN_PASSWORD).await;
    assert_eq!(browser.heading().await, "Enter your code");
    browser.review("sign-in-code").await;
    browser.fill("Code", "000000").await;
    browser.press("Sign in").await;
    assert!(browser.text().await.contains("The code is wrong"), "{}", browser.text().await);
    browser.fill("Code", &totp(&secret, step + 1, 6)).await;
    browser.press("Sign in").await;
    assert_eq!(browser.path().await, "/ui/account");
    browser.goto("/ui/account/mfa").await;
    assert!(browser.text().await.contains("The second factor is on"));
    browser.close().await;

    // A forgotten password: the page asks for the address, the mailed link's page sets a new one.
    let stranger = Browser::open(&app.address, true).await;
    stranger.goto("/ui/password/forgot").await;
    stranger.fill("Email", &admin_email).await;
    stranger.press("Send the link").await;
    assert_eq!(stranger.heading().await, "Check your inbox");
    let mail = maildev.wait_for_subject(&admin_email, "Reset your password").await;
    stranger.goto(&link(&mail, &format!("{}/password/reset?token=", app.address))).await;
    stranger.check_accessibility("password-reset").await;
    stranger.screenshots("password-reset").await;
    stranger.fill("New password", NEW_PASSWORD).await;
    stranger.press("Save").await;
    assert!(stranger.text().await.contains("You can log in with your new password."), "{}", stranger.text().await);
    assert_eq!(login_json(&app.client, &app.address, &admin_email, ADMIN_PASSWORD).await.status(), 401);
    sign_in(&stranger, &admin_email, NEW_PASSWORD).await;
    assert_eq!(stranger.heading().await, "Enter your code", "the second factor still guards the account");
    stranger.close().await;
}

#[tokio::test]
async fn signing_in_and_saving_the_profile_work_with_javascript_turned_off() {
    let admin_email = unique_email("pages-noscript");
    let app = app(&admin_email).await;
    let browser = Browser::open(&app.address, false).await;
    // The browser really runs no script: a <noscript> shows, and a script's output does not.
    browser
        .goto("data:text/html,<noscript>scripts are off</noscript><script>document.write('a script ran')</script>")
        .await;
    let text = browser.text().await;
    assert!(text.contains("scripts are off") && !text.contains("a script ran"), "{text}");

    sign_in(&browser, &admin_email, ADMIN_PASSWORD).await;
    assert_eq!(browser.path().await, "/ui/account");
    browser.fill("Last name", "Hopper").await;
    browser.press("Save").await;
    assert!(browser.text().await.contains("Your profile is saved."));
    assert_eq!(browser.value("Last name").await, "Hopper");
    browser.close().await;
}

/// The `Set-Cookie` values of a response, as `name=value` pairs.
fn cookies(response: &reqwest::Response) -> Vec<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| {
            value.to_str().ok()?.split(';').next()?.split_once('=').map(|(n, v)| (n.to_owned(), v.to_owned()))
        })
        .collect()
}

/// An HTTP client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs in over plain HTTP as a browser would: returns the `Cookie` header value and the CSRF secret.
async fn cookie_session(app: &BinaryApp, email: &str, password: &str) -> (String, String) {
    let client = no_redirects();
    let page = client.get(app.url("/ui/sign-in")).send().await.unwrap();
    let csrf = cookies(&page).into_iter().find(|(name, _)| name == "um_csrf").unwrap().1;
    let form = [("csrf", csrf.as_str()), ("email", email), ("password", password)];
    let response = client
        .post(app.url("/ui/sign-in"))
        .header("cookie", format!("um_csrf={csrf}"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let set = cookies(&response);
    let session = set.iter().find(|(name, _)| name == "um_session").unwrap().1.clone();
    let csrf = set.iter().find(|(name, _)| name == "um_csrf").unwrap().1.clone();
    (format!("um_session={session}; um_csrf={csrf}"), csrf)
}

#[tokio::test]
async fn forms_without_the_csrf_secret_or_from_another_site_change_nothing_and_logout_all_ends_the_page_session() {
    let admin_email = unique_email("pages-csrf");
    let app = app(&admin_email).await;
    let (cookie, csrf) = cookie_session(&app, &admin_email, ADMIN_PASSWORD).await;
    let client = no_redirects();
    let account = client.get(app.url("/ui/account")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(account.status(), 200);
    let headers = account.headers().clone();
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!policy.contains("script-src"), "no script is allowed: {policy}");
    assert_eq!(headers["cache-control"], "no-store");

    let save = |form: Vec<(&'static str, String)>, origin: Option<String>| {
        let mut request = client.post(app.url("/ui/account")).header("cookie", &cookie).form(&form);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let profile = |csrf: &str| vec![("csrf", csrf.to_owned()), ("nickname", "mallory_was_here".to_owned())];
    // No secret, a wrong one, and the right one from another site's page: 403, nothing saved.
    for (form, origin) in [
        (vec![("nickname", "mallory_was_here".to_owned())], None),
        (profile("x".repeat(43).as_str()), None),
        (profile(&csrf), Some("https://evil.example".to_owned())),
    ] {
        let response = save(form, origin).await.unwrap();
        assert_eq!(response.status(), 403);
        assert!(response.text().await.unwrap().contains("This form has expired"));
    }
    let token = json_body(login_json(&app.client, &app.address, &admin_email, ADMIN_PASSWORD).await).await;
    let bearer = token["access_token"].as_str().unwrap().to_owned();
    let me: Value = json_body(app.client.get(app.url("/me")).bearer_auth(&bearer).send().await.unwrap()).await;
    assert_ne!(me["nickname"], "mallory_was_here");
    // The same form with the secret and our own origin is saved, and written to the trail once: saving it again
    // unchanged records nothing.
    let updates = || async {
        let page = app.client.get(app.url("/audit?type=user.updated")).bearer_auth(&bearer).send().await.unwrap();
        json_body(page).await["items"].as_array().unwrap().len()
    };
    let before = updates().await;
    for _ in 0..2 {
        let response = save(profile(&csrf), Some(app.address.clone())).await.unwrap();
        assert_eq!(response.status(), 303);
    }
    assert_eq!(updates().await, before + 1, "an unchanged profile saved again is not an update");

    // A parameter the user table does not know is dropped, never shown: a link cannot write into a staff page.
    let planted = "/ui/users?Call%20IT%20and%20read%20them%20your%20password=1";
    let page = client.get(app.url(planted)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(!page.text().await.unwrap().contains("Call IT"));

    // A refused sign-in on the per-account backoff says when to come back, in the header too.
    let mut last = None;
    for _ in 0..7 {
        let form = [("csrf", csrf.as_str()), ("email", "nobody@example.com"), ("password", "wrong-wrong-wrong-1")];
        last = Some(client.post(app.url("/ui/sign-in")).header("cookie", &cookie).form(&form).send().await.unwrap());
    }
    let refused = last.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));

    // Signing in again in the same browser ends the session it was signed in with.
    let form = [("csrf", csrf.as_str()), ("email", admin_email.as_str()), ("password", ADMIN_PASSWORD)];
    let again = client.post(app.url("/ui/sign-in")).header("cookie", &cookie).form(&form).send().await.unwrap();
    assert_eq!(again.status(), 303);
    let old = client.get(app.url("/ui/account")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(old.status(), 303, "the session replaced by the new sign-in is over");
    let (cookie, _) = cookie_session(&app, &admin_email, ADMIN_PASSWORD).await;

    // Logging out everywhere through the API ends the cookie session too: it is a row of the same table.
    let out = app.client.post(app.url("/logout/all")).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(out.status(), 204);
    let after = client.get(app.url("/ui/account")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(after.status(), 303);
    assert_eq!(after.headers()["location"], "/ui/sign-in");
    assert!(
        cookies(&after).iter().any(|(name, value)| name == "um_session" && value.is_empty()),
        "the cookie is dropped"
    );
}

#[tokio::test]
async fn the_account_forms_change_email_end_a_session_and_delete_the_account_and_a_wrong_password_changes_nothing() {
    let admin_email = unique_email("pages-forms-admin");
    let app = app(&admin_email).await;
    let admin = json_body(login_json(&app.client, &app.address, &admin_email, ADMIN_PASSWORD).await).await;
    let email = unique_email("pages-forms");
    let body = serde_json::json!({"email": email, "password": STRONG_PASSWORD, "email_verified": true});
    let created = app.client.post(app.url("/users")).bearer_auth(admin["access_token"].as_str().unwrap());
    assert_eq!(created.json(&body).send().await.unwrap().status(), 201);

    let (cookie, csrf) = cookie_session(&app, &email, STRONG_PASSWORD).await;
    let client = no_redirects();
    let post = |path: &'static str, form: Vec<(&'static str, String)>| {
        let mut form = form;
        form.push(("csrf", csrf.clone()));
        client.post(app.url(path)).header("cookie", &cookie).header("origin", &app.address).form(&form).send()
    };
    let api = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;
    let bearer = api["access_token"].as_str().unwrap().to_owned();
    let me = || async { json_body(app.client.get(app.url("/me")).bearer_auth(&bearer).send().await.unwrap()).await };

    // Email change: a wrong current password is 403 and nothing is pending; the right one makes it pending.
    let new_email = unique_email("pages-forms-new");
    let wrong = vec![("email", new_email.clone()), ("current_password", WRONG.to_owned())];
    assert_eq!(post("/ui/account/email", wrong).await.unwrap().status(), 403);
    assert!(me().await["pending_email"].is_null());
    let right = vec![("email", new_email.clone()), ("current_password", STRONG_PASSWORD.to_owned())];
    assert_eq!(post("/ui/account/email", right).await.unwrap().status(), 303);
    assert_eq!(me().await["pending_email"], new_email.as_str());

    // Ending the API session from the sessions page: its bearer stops working at once.
    let sessions = json_body(app.client.get(app.url("/me/sessions")).bearer_auth(&bearer).send().await.unwrap()).await;
    let api_session = sessions["items"].as_array().unwrap().iter().find(|s| s["current"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(post("/ui/account/sessions/revoke", vec![("session", api_session)]).await.unwrap().status(), 303);
    assert_eq!(app.client.get(app.url("/me")).bearer_auth(&bearer).send().await.unwrap().status(), 401);

    // Delete: a wrong password is 403 and the account stays; the right one deletes it and its sessions.
    assert_eq!(post("/ui/account/delete", vec![("current_password", WRONG.to_owned())]).await.unwrap().status(), 403);
    assert_eq!(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await.status(), 200);
    let deleted = post("/ui/account/delete", vec![("current_password", STRONG_PASSWORD.to_owned())]).await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert!(deleted.text().await.unwrap().contains("Your account is deleted"));
    assert_eq!(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await.status(), 401);
    let after = client.get(app.url("/ui/account")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(after.status(), 303, "the deleted account's browser session is over");
}
