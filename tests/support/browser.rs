//! A real browser for the page tests: Debian's Chromium, headless, driven through the ChromeDriver that
//! `cargo xtask test` starts. Pages are found the way a person finds them: fields by their label's text, buttons by
//! their name. Also the accessibility check (axe-core, run inside the page) and the screenshots.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the page tests with `cargo xtask test`"))
}

/// The two window sizes every screenshot is taken at.
const SIZES: [(&str, u32, u32); 2] = [("desktop", 1280, 900), ("phone", 390, 844)];

/// One browser window (a WebDriver session with a fresh profile), closed by [`Self::close`].
pub struct Browser {
    client: Client,
    base: String,
}

impl Browser {
    /// Opens a headless Chromium for the app at `base` (`http://127.0.0.1:<port>`); with `javascript` false, the
    /// browser runs no script on any page.
    pub async fn open(base: &str, javascript: bool) -> Self {
        let mut options = json!({
            "binary": env("UM_TEST_CHROMIUM_BIN"),
            // As root in a container: no sandbox, no /dev/shm; nothing reaching out to the (closed) network.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1280,900",
            ],
        });
        if !javascript {
            options["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".to_owned(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&env("UM_TEST_WEBDRIVER_URL"))
            .await
            .unwrap_or_else(|error| {
                panic!("no browser session from ChromeDriver ({error}): run with `cargo xtask test`")
            });
        Self { client, base: base.to_owned() }
    }

    /// Loads a path of the app (or a full URL) and waits for it.
    pub async fn goto(&self, path: &str) {
        let url = if path.starts_with("http") || path.starts_with("data:") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        self.client.goto(&url).await.unwrap_or_else(|error| panic!("could not load {url}: {error}"));
    }

    /// The path (and query) of the page shown.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The visible text of the page.
    pub async fn text(&self) -> String {
        self.client.find(Locator::Css("body")).await.unwrap().text().await.unwrap()
    }

    /// The text of the first element matching a CSS selector.
    pub async fn text_of(&self, css: &str) -> String {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|_| panic!("no {css} on the page"));
        element.text().await.unwrap()
    }

    /// How many elements match a CSS selector.
    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    /// The page's `<h1>`.
    pub async fn heading(&self) -> String {
        self.client.find(Locator::Css("h1")).await.expect("the page has an h1").text().await.unwrap()
    }

    /// The field whose `<label>` reads `label`.
    async fn field(&self, label: &str) -> fantoccini::elements::Element {
        let xpath = format!("//label[normalize-space(.)='{label}']");
        let labels = self.client.find_all(Locator::XPath(&xpath)).await.unwrap();
        assert_eq!(labels.len(), 1, "exactly one label {label:?} on {}", self.path().await);
        let id = labels[0].attr("for").await.unwrap().unwrap_or_else(|| panic!("the label {label:?} names no field"));
        self.client.find(Locator::Id(&id)).await.unwrap_or_else(|_| panic!("no field #{id} for the label {label:?}"))
    }

    /// Types `value` into the field labelled `label`, replacing what it held.
    pub async fn fill(&self, label: &str, value: &str) {
        let field = self.field(label).await;
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    /// The value of the field labelled `label`.
    pub async fn value(&self, label: &str) -> String {
        self.field(label).await.prop("value").await.unwrap().unwrap_or_default()
    }

    /// Chooses a file for the file field labelled `label`.
    pub async fn choose_file(&self, label: &str, path: &std::path::Path) {
        self.field(label).await.send_keys(&path.display().to_string()).await.unwrap();
    }

    /// Ticks or unticks the checkbox labelled `label`.
    pub async fn set_checked(&self, label: &str, checked: bool) {
        let field = self.field(label).await;
        let now = field.prop("checked").await.unwrap().as_deref() == Some("true");
        if now != checked {
            field.click().await.unwrap();
        }
    }

    /// Presses the one button named `name` and waits for the next page.
    pub async fn press(&self, name: &str) {
        let xpath = format!("//button[normalize-space(.)='{name}']");
        let buttons = self.client.find_all(Locator::XPath(&xpath)).await.unwrap();
        assert_eq!(buttons.len(), 1, "exactly one button {name:?} on {}", self.path().await);
        let before = self.client.find(Locator::Css("html")).await.unwrap();
        buttons[0].click().await.unwrap();
        // The old document goes stale once the next one has loaded.
        let deadline = Instant::now() + Duration::from_secs(20);
        while before.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "pressing {name:?} loaded no page within 20 s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Follows the link whose text is `text`.
    pub async fn follow(&self, text: &str) {
        let link = self.client.find(Locator::LinkText(text)).await.unwrap_or_else(|_| panic!("no link {text:?}"));
        let href = link.attr("href").await.unwrap().unwrap();
        self.goto(&href).await;
    }

    /// Runs axe-core in the page and fails on any serious or critical violation.
    pub async fn check_accessibility(&self, page: &str) {
        let script = std::fs::read_to_string(env("UM_TEST_AXE_SCRIPT")).expect("axe.min.js is readable");
        self.client.execute(&script, vec![]).await.expect("axe-core loads into the page");
        let run = "const done = arguments[arguments.length - 1];\
                   axe.run(document).then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,\
                   targets: v.nodes.map(n => n.target.join(' '))})))).catch(e => done({error: String(e)}));";
        let violations = self.client.execute_async(run, vec![]).await.expect("axe.run answers");
        let list = violations.as_array().unwrap_or_else(|| panic!("axe failed on {page}: {violations}"));
        let serious: Vec<&Value> = list
            .iter()
            .filter(|violation| matches!(violation["impact"].as_str(), Some("serious" | "critical")))
            .collect();
        assert!(serious.is_empty(), "accessibility violations on {page}: {serious:#?}");
    }

    /// Saves screenshots of the page at desktop and phone width as `<name>-desktop.png` and `<name>-phone.png` in
    /// the run's screenshot directory (under `target/`).
    pub async fn screenshots(&self, name: &str) {
        let dir = PathBuf::from(env("UM_TEST_SCREENSHOTS_DIR"));
        std::fs::create_dir_all(&dir).unwrap();
        for (size, width, height) in SIZES {
            self.client.set_window_size(width, height).await.unwrap();
            let png = self.client.screenshot().await.unwrap();
            assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
            std::fs::write(dir.join(format!("{name}-{size}.png")), png).unwrap();
        }
        self.client.set_window_size(SIZES[0].1, SIZES[0].2).await.unwrap();
    }

    /// Checks and photographs the page shown.
    pub async fn review(&self, name: &str) {
        self.check_accessibility(name).await;
        self.screenshots(name).await;
    }

    /// Ends the session and its browser.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
