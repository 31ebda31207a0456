//! The web console in headless Chromium, against a real parent, real
//! children and the real broker: an operator signs in with the admin token
//! (a wrong one stays on the login with an error), sets the SSL settings
//! through the page, generates certificates (only once old versions are
//! accepted), sends the information, verifies and switches, and the page
//! shows what `status --json` says: counters, summary, each child's row with
//! its step messages, read-only settings, the seed's enable rules. The paged
//! status endpoint is checked directly too (total, limit, offset, filters).
//!
//! The browser is driven over WebDriver (chromedriver, HTTP JSON). Debian's
//! `chromium` and `chromium-driver` are needed; `scripts/test` installs them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetls_tests::{free_port, repo, start_child, test_dir, wait_for, Parent, Proc, Vhost};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The messages of passed steps, as the issue names them.
const CERT_OK: &str = "Certificates generated successfully!";
const SSL_OK: &str = "SSL communication switchover test completed successfully!";

/// WebDriver's key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process of one test.
struct Driver {
    _proc: Proc,
    url: String,
}

impl Driver {
    /// Starts chromedriver on a free port and waits until it is ready.
    fn start(dir: &Path) -> Driver {
        require_browser();
        let port = free_port();
        let proc = Proc::spawn(
            Path::new(CHROMEDRIVER),
            &[format!("--port={port}")],
            dir.join("chromedriver.log"),
        );
        let url = format!("http://127.0.0.1:{port}");
        let http = fleetls_tests::http();
        wait_for("chromedriver to be ready", Duration::from_secs(30), || {
            let status: Value = http.get(format!("{url}/status")).send().ok()?.json().ok()?;
            (status["value"]["ready"] == true).then_some(())
        });
        Driver { _proc: proc, url }
    }
}

/// Fails (never skips) when the browser or its driver is not installed.
fn require_browser() {
    for program in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(program).exists(),
            "{program} is missing: the console test needs Debian's chromium and \
             chromium-driver; run scripts/test (it installs them) or \
             `apt-get install chromium chromium-driver`"
        );
    }
}

/// One browser session; closed (browser and all) when dropped.
struct Browser {
    http: reqwest::blocking::Client,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A new headless Chromium session with a profile of its own.
    fn new(driver: &Driver) -> Browser {
        let profile = tempfile::tempdir().expect("a browser profile folder");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .expect("HTTP client builds");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1440,1500",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let answer: Value = http
            .post(format!("{}/session", driver.url))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
                "goog:loggingPrefs": {"browser": "ALL"},
            }}}))
            .send()
            .and_then(|r| r.json())
            .expect("chromedriver answers a new session");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"))
            .to_owned();
        Browser {
            http,
            session: format!("{}/session/{session}", driver.url),
            _profile: profile,
        }
    }

    /// One WebDriver command; its `value`, or the WebDriver error.
    fn try_command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}{path}", self.session);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let response = request.send().map_err(|e| json!(e.to_string()))?;
        let ok = response.status().is_success();
        let answer: Value = response.json().map_err(|e| json!(e.to_string()))?;
        if ok {
            Ok(answer["value"].clone())
        } else {
            Err(answer["value"].clone())
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_command(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let value = self.command(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        value[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {value}"))
            .to_owned()
    }

    /// Clicks an element once it is enabled.
    fn click(&self, css: &str) {
        self.wait_until(
            &format!("{css} to be enabled"),
            Duration::from_secs(20),
            || (!self.disabled(css)).then_some(()),
        );
        let id = self.find(css);
        self.command("POST", &format!("/element/{id}/click"), None);
    }

    /// Replaces an input's value by typing `text`.
    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.command("POST", &format!("/element/{id}/clear"), None);
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The rendered text of an element.
    fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.command("GET", &format!("/element/{id}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs a script in the page (`arguments[0..]` are `args`).
    fn script(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    fn disabled(&self, css: &str) -> bool {
        self.script(
            "return document.querySelector(arguments[0]).disabled",
            json!([css]),
        ) == true
    }

    fn hidden(&self, css: &str) -> bool {
        self.script(
            "const e = document.querySelector(arguments[0]); return e.hidden || e.closest('[hidden]') !== null",
            json!([css]),
        ) == true
    }

    /// Sets a select's or input's value as a user would, firing `change`.
    fn choose(&self, css: &str, value: &str) {
        self.script(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1];
             e.dispatchEvent(new Event('change', {bubbles: true}));",
            json!([css, value]),
        );
    }

    /// The page's console errors, but for failed requests (the API's
    /// refusals, which the page shows): a script error or a blocked load
    /// (content security policy) shows up here.
    fn console_errors(&self) -> Vec<String> {
        let entries = self.command("POST", "/se/log", Some(json!({"type": "browser"})));
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .filter_map(|e| e["message"].as_str())
            .filter(|m| !m.contains("Failed to load resource"))
            .map(str::to_owned)
            .collect()
    }

    /// Saves a PNG of the viewport.
    fn screenshot(&self, path: &Path) {
        use std::io::Write;
        let data = self.command("GET", "/screenshot", None);
        let png = base64_decode(data.as_str().expect("a base64 screenshot"));
        let mut file = std::fs::File::create(path).expect("screenshot file");
        file.write_all(&png).expect("screenshot written");
    }

    /// Polls `check` until it returns `Some`; on timeout saves a screenshot
    /// and fails with what the page says.
    fn wait_until<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(value) = check() {
                return value;
            }
            if Instant::now() > deadline {
                let shot = target().join("console-failure.png");
                self.screenshot(&shot);
                let said = self.script(
                    "return [document.getElementById('notice-text').textContent,
                             document.getElementById('conn').textContent,
                             document.getElementById('login-error').textContent,
                             document.getElementById('settings-error').textContent]",
                    json!([]),
                );
                panic!(
                    "timed out waiting for {what}; the page says {said} (screenshot {})",
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn wait_text(&self, css: &str, expected: &str, within: Duration) {
        self.wait_until(&format!("{css} to show {expected:?}"), within, || {
            (self.text(css) == expected).then_some(())
        });
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.session).send();
    }
}

/// Decodes standard base64 (what WebDriver screenshots are).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | d << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

fn target() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    std::fs::create_dir_all(&dir).expect("target folder");
    dir
}

/// The page's rows of the status list, as the operator reads them.
fn page_rows(browser: &Browser) -> Vec<Value> {
    let rows = browser.script(
        "return [...document.querySelectorAll('#agents-body tr')].map(tr => {
             const t = c => tr.querySelector('.' + c).textContent;
             return {id: tr.dataset.id, name: t('c-name'), online: t('c-online'),
                     kind: t('c-kind'), version: t('c-version'), location: t('c-location'),
                     cert: t('c-cert'), ssl: t('c-ssl'), amqps: t('c-amqps'),
                     result: t('c-result'), step1: t('c-step1'), step2: t('c-step2'),
                     cause: t('c-cause'), time: t('c-time'), refusal: t('c-refusal'),
                     node: t('c-node'),
                     old: tr.querySelector('.c-version').classList.contains('old')};
         })",
        json!([]),
    );
    rows.as_array().cloned().unwrap_or_default()
}

fn yes_no(value: &Value) -> &'static str {
    if value == true {
        "yes"
    } else {
        "no"
    }
}

#[test]
fn the_console_drives_the_switchover_and_shows_what_the_api_says() {
    require_browser();
    let vhost = Vhost::new();
    let dir = test_dir();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let _till_1 = start_child(
        &vhost,
        dir.path(),
        "till-1",
        &["--kind", "child", "--location", "shop-1"],
    );
    let _till_2 = start_child(
        &vhost,
        dir.path(),
        "till-2",
        &["--kind", "child", "--location", "shop-2"],
    );
    let _old = start_child(
        &vhost,
        dir.path(),
        "bo-old",
        &["--location", "shop-1", "--report-version", "0.9.2"],
    );
    wait_for("three agents online", Duration::from_secs(60), || {
        let status = parent.status_json().ok()?;
        let agents = status["agents"].as_array()?;
        (agents.len() == 3 && agents.iter().all(|a| a["online"] == true)).then_some(())
    });
    let token = std::fs::read_to_string(parent.layout().token()).unwrap();
    let token = token.trim();
    let base = format!("http://{}", parent.admin);

    let driver = Driver::start(dir.path());
    let browser = Browser::new(&driver);
    browser.goto(&format!("{base}/"));

    // A wrong token stays on the login, with an error.
    browser.wait_until("the login", Duration::from_secs(20), || {
        (!browser.hidden("#login-view")).then_some(())
    });
    browser.type_into("#token", "not-the-token");
    browser.click("#login-button");
    browser.wait_until("the login error", Duration::from_secs(20), || {
        let error = browser.text("#login-error");
        (!error.is_empty()).then_some(error)
    });
    assert!(browser.text("#login-error").contains("not the admin token"));
    assert!(browser.hidden("#console-view"));
    browser.screenshot(&target().join("console-login.png"));

    // The right one opens the console.
    browser.type_into("#token", token);
    browser.click("#login-button");
    browser.wait_text("#count-agents", "3", Duration::from_secs(20));
    assert!(browser.hidden("#login-view"));

    // Settings through the page: a bad port is refused with the API's message.
    for (css, readonly) in [("#set-port", false), ("#set-names", false)] {
        let is = browser.script(
            "return document.querySelector(arguments[0]).readOnly",
            json!([css]),
        );
        assert_eq!(is, readonly, "{css} is editable before certificates exist");
    }
    browser.type_into("#set-port", "70000");
    browser.click("#settings-save");
    let error = browser.wait_until("the settings error", Duration::from_secs(20), || {
        let error = browser.text("#settings-error");
        (!error.is_empty()).then_some(error)
    });
    assert!(error.contains("port") && error.contains("70000"), "{error}");
    let ssl_port = free_port();
    browser.type_into("#set-port", &ssl_port.to_string());
    browser.type_into("#set-local-parent-port", &free_port().to_string());
    browser.type_into("#set-names", "localhost");
    browser.type_into("#set-ips", "127.0.0.1");
    browser.click("#settings-save");
    browser.wait_text(
        "#settings-saved",
        "Settings saved.",
        Duration::from_secs(20),
    );
    let (code, shown, _) = parent.cli(&["settings", "show", "--json"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["settings"]["port"], ssl_port);
    assert_eq!(shown["settings"]["names"], json!(["localhost"]));
    assert_eq!(shown["settings"]["ips"], json!(["127.0.0.1"]));

    // Generate waits for "accept old versions" while an old child is registered.
    browser.wait_text("#sum-old", "1", Duration::from_secs(20));
    assert!(browser.disabled("#btn-generate"));
    for css in ["#btn-send", "#btn-verify", "#btn-reverify", "#btn-switch"] {
        assert!(browser.disabled(css), "{css} before generation");
    }
    browser.click("#accept-old");
    assert!(!browser.disabled("#btn-generate"));
    browser.click("#btn-generate");
    browser.wait_until("the generation notice", Duration::from_secs(60), || {
        browser
            .text("#notice-text")
            .contains("Certificates generated")
            .then_some(())
    });
    assert!(browser.text("#notice-text").contains("bo-old"));

    browser.click("#btn-send");
    browser.wait_until("the send notice", Duration::from_secs(30), || {
        browser
            .text("#notice-text")
            .contains("Information queued for 2 children")
            .then_some(())
    });
    browser.wait_text("#count-certs", "2", Duration::from_secs(60));
    assert_eq!(browser.text("#count-eligible"), "2");

    browser.click("#btn-verify");
    browser.wait_text("#sum-passed", "2", Duration::from_secs(120));
    browser.wait_text("#campaign-state", "finished", Duration::from_secs(30));

    // What the page shows is what the API says.
    let status = parent.status_json().unwrap();
    let network = &status["network"];
    let summary = &status["summary"];
    for (css, value) in [
        ("#count-certs", &network["children_with_certificates"]),
        ("#count-eligible", &network["eligible"]),
        ("#count-ssl", &network["switched_to_ssl"]),
        ("#count-amqps", &network["broker_tls"]),
        ("#count-agents", &network["agents"]),
        ("#sum-passed", &summary["passed"]),
        ("#sum-errors", &summary["with_errors"]),
        ("#sum-dnp", &summary["did_not_participate"]),
        ("#sum-old", &summary["version_not_supporting_ssl"]),
        ("#sum-mpos", &summary["mpos"]),
    ] {
        assert_eq!(browser.text(css), value.to_string(), "{css}");
    }
    assert_eq!(summary["passed"], 2);
    assert_eq!(browser.text("#camp-passed"), "2");
    assert_eq!(browser.text("#camp-done"), "2 / 2");
    assert_eq!(
        browser.text("#ca-fingerprint"),
        network["ca_fingerprint"].as_str().unwrap()
    );
    browser.wait_until("every row", Duration::from_secs(20), || {
        (page_rows(&browser).len() == 3).then_some(())
    });
    let rows = page_rows(&browser);
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bo-old", "till-1", "till-2"], "ordered by name");
    for agent in status["agents"].as_array().unwrap() {
        let row = rows
            .iter()
            .find(|r| r["id"] == agent["id"])
            .unwrap_or_else(|| panic!("no row for {}", agent["name"]));
        assert_eq!(row["name"], agent["name"]);
        assert_eq!(row["kind"], agent["kind"]);
        assert_eq!(row["version"], agent["version"]);
        assert_eq!(row["location"], agent["location"]);
        assert_eq!(row["cert"], yes_no(&agent["has_certificate"]));
        assert_eq!(row["ssl"], yes_no(&agent["ssl"]));
        assert_eq!(row["amqps"], yes_no(&agent["broker_tls"]));
        assert_eq!(row["old"], agent["ssl_capable"] == false);
        let last = &agent["last_result"];
        if agent["name"] == "bo-old" {
            assert!(last.is_null());
            assert_eq!(row["result"], "not tested");
            assert_eq!(row["step1"], "—");
        } else {
            assert_eq!(last["state"], "passed");
            assert_eq!(row["result"], "passed");
            assert_eq!(last["cert_test"]["message"], CERT_OK);
            assert_eq!(last["ssl_port"]["message"], SSL_OK);
            assert_eq!(row["step1"], CERT_OK);
            assert_eq!(row["step2"], SSL_OK);
            assert_eq!(row["cause"], "—");
            assert_ne!(row["time"], "—");
        }
    }

    // The broker's nodes (one here) with their health, the queue type and
    // why, and each agent's node: what `cluster` and `status` say.
    let view = wait_for(
        "the parent's view of the broker",
        Duration::from_secs(60),
        || {
            let (code, out, _) = parent.cli(&["cluster", "--json"]);
            (code == 0)
                .then(|| serde_json::from_str::<Value>(&out).ok())
                .flatten()
                .filter(|view| view["agents"].as_object().is_some_and(|a| a.len() == 3))
        },
    );
    let node = view["nodes"][0]["name"]
        .as_str()
        .expect("a node")
        .to_owned();
    browser.wait_until("the broker node table", Duration::from_secs(30), || {
        (!browser.hidden("#nodes") && browser.text("#nodes-body").contains(&node)).then_some(())
    });
    assert!(
        browser.text("#nodes-body").contains("up"),
        "{}",
        browser.text("#nodes-body")
    );
    let choice = &network["queue_type"];
    assert!(
        browser
            .text("#queue-type")
            .starts_with(choice["type"].as_str().expect("a queue type")),
        "{} vs {choice}",
        browser.text("#queue-type")
    );
    browser.wait_until("each agent's node", Duration::from_secs(30), || {
        page_rows(&browser)
            .iter()
            .all(|row| {
                row["id"]
                    .as_str()
                    .is_some_and(|id| view["agents"][id] == row["node"])
            })
            .then_some(())
    });

    // The settings are read-only now.
    let frozen = browser.script(
        "return ['set-port', 'set-local-parent-port', 'set-names', 'set-ips',
                 'set-broker-names', 'set-broker-ips']
            .every(id => document.getElementById(id).readOnly)",
        json!([]),
    );
    assert_eq!(frozen, true, "every settings field is read-only");
    assert!(browser.hidden("#settings-save"));
    assert!(!browser.hidden("#frozen-note"));

    // The seed's enable rules after a passed test.
    assert!(browser.disabled("#btn-generate"));
    for css in ["#btn-send", "#btn-verify", "#btn-reverify", "#btn-switch"] {
        assert!(!browser.disabled(css), "{css} after the test");
    }
    assert!(
        browser.disabled("#btn-switch-broker"),
        "no child on SSL yet"
    );

    // The list's filters.
    browser.choose("#f-filter", "failed");
    browser.wait_text("#page-info", "0–0 of 0 agents", Duration::from_secs(20));
    assert!(!browser.hidden("#agents-empty"));
    browser.choose("#f-filter", "all");
    browser.choose("#f-location", "shop-1");
    browser.wait_text("#page-info", "1–2 of 2 agents", Duration::from_secs(20));
    let names: Vec<String> = page_rows(&browser)
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["bo-old", "till-1"]);
    browser.choose("#f-location", "");
    browser.choose("#f-kind", "local-parent");
    browser.wait_text("#page-info", "0–0 of 0 agents", Duration::from_secs(20));
    browser.choose("#f-kind", "");
    browser.wait_text("#page-info", "1–3 of 3 agents", Duration::from_secs(20));

    // Force SSL Switchover asks first, naming who is at risk: nobody here.
    browser.click("#btn-force");
    browser.wait_until("the force dialog", Duration::from_secs(20), || {
        (browser.script(
            "return document.getElementById('force-dialog').open",
            json!([]),
        ) == true)
            .then_some(())
    });
    assert!(browser
        .text("#force-summary")
        .contains("2 eligible children"));
    assert!(browser.hidden("#force-risk"), "both children passed");
    // Every request the page makes from now on, as "METHOD PATH".
    browser.script(
        "const fetch = window.fetch;
         window.fleetlsRequests = [];
         window.fetch = (path, init) => {
           window.fleetlsRequests.push(((init && init.method) || 'GET') + ' ' + path);
           return fetch(path, init);
         };",
        json!([]),
    );
    browser.click("#force-cancel");
    // The action is over once the dialog is closed and the buttons no longer
    // say "Working…": the page has then made every request the click led
    // to, and polled the summary after it.
    let requests = browser.wait_until("the cancelled action over", Duration::from_secs(20), || {
        let over = browser.script(
            "return !document.getElementById('force-dialog').open
                && document.getElementById('btn-force').title !== 'Working…'",
            json!([]),
        );
        (over == true).then(|| browser.script("return window.fleetlsRequests", json!([])))
    });
    let requests: Vec<&str> = requests
        .as_array()
        .expect("the requests are a list")
        .iter()
        .map(|r| r.as_str().unwrap_or_default())
        .collect();
    assert!(
        requests.iter().all(|r| !r.starts_with("POST ")),
        "cancelling sent {requests:?}"
    );
    assert!(
        requests.contains(&"GET /api/summary"),
        "the page did not poll after the action: {requests:?}"
    );
    assert_eq!(
        parent.status_json().unwrap()["campaign"]["kind"],
        "verify",
        "cancelling starts nothing"
    );

    // Show child agents without SSL.
    browser.click("#btn-without-ssl");
    browser.wait_until("the without-SSL dialog", Duration::from_secs(30), || {
        (browser.script(
            "return document.getElementById('without-dialog').open",
            json!([]),
        ) == true)
            .then_some(())
    });
    let listed = browser.text("#without-ssl");
    for name in ["bo-old", "till-1", "till-2"] {
        assert!(listed.contains(name), "{listed}");
    }
    assert!(listed.contains("does not support SSL"), "{listed}");
    browser.click("#without-close");

    // Use SSL connection: the children that passed switch; then RabbitMQ's turn.
    browser.click("#btn-switch");
    browser.wait_text("#count-ssl", "2", Duration::from_secs(120));
    browser.wait_until("switch-broker enabled", Duration::from_secs(30), || {
        (!browser.disabled("#btn-switch-broker")).then_some(())
    });
    assert_eq!(
        parent.status_json().unwrap()["network"]["switched_to_ssl"],
        2
    );

    let errors = browser.console_errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");

    let shot = target().join("console.png");
    browser.screenshot(&shot);
    eprintln!("screenshot: {}", shot.display());

    // A token that stops working returns to the login.
    browser.script(
        "sessionStorage.setItem('fleetls.adminToken', 'revoked')",
        json!([]),
    );
    browser.wait_until("the login after a 401", Duration::from_secs(20), || {
        (!browser.hidden("#login-view")).then_some(())
    });
    assert!(browser.text("#login-error").contains("refused"));

    check_paged_endpoint(&parent, token);
}

/// `GET /api/agents`: behind the token, `total` of the whole filtered list,
/// `limit` and `offset` respected, agents shaped as in `status --json`.
fn check_paged_endpoint(parent: &Parent, token: &str) {
    let http = fleetls_tests::http();
    let base = format!("http://{}", parent.admin);
    let get = |query: &str| -> (u16, Value) {
        let response = http
            .get(format!("{base}/api/agents?{query}"))
            .bearer_auth(token)
            .send()
            .unwrap();
        (response.status().as_u16(), response.json().unwrap())
    };
    let page = |query: &str| -> (u64, Vec<String>) {
        let (code, body) = get(query);
        assert_eq!(code, 200, "{query}: {body}");
        let names = body["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect();
        (body["total"].as_u64().unwrap(), names)
    };
    assert_eq!(
        page(""),
        (3, vec!["bo-old".into(), "till-1".into(), "till-2".into()])
    );
    assert_eq!(page("limit=1"), (3, vec!["bo-old".into()]));
    assert_eq!(page("offset=1&limit=1"), (3, vec!["till-1".into()]));
    assert_eq!(page("offset=2&limit=2"), (3, vec!["till-2".into()]));
    assert_eq!(page("filter=passed").0, 2);
    assert_eq!(page("filter=failed"), (0, vec![]));
    assert_eq!(page("filter=offline"), (0, vec![]));
    assert_eq!(page("filter=not-tested"), (1, vec!["bo-old".into()]));
    assert_eq!(page("filter=not-ssl"), (1, vec!["bo-old".into()]));
    assert_eq!(page("kind=child").0, 3);
    assert_eq!(page("kind=local-parent").0, 0);
    assert_eq!(page("location=shop-2"), (1, vec!["till-2".into()]));
    assert_eq!(
        page("q=TILL&filter=passed&limit=1"),
        (2, vec!["till-1".into()])
    );

    // The same agents as `status --json` (but for the clock-driven fields).
    let (_, body) = get("limit=1000");
    let status = parent.status_json().unwrap();
    let strip = |agents: &Value| -> Vec<Value> {
        agents
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let mut a = a.clone();
                a.as_object_mut().unwrap().remove("last_seen");
                a.as_object_mut().unwrap().remove("online");
                a
            })
            .collect()
    };
    assert_eq!(strip(&body["agents"]), strip(&status["agents"]));

    for (query, word) in [
        ("filter=broken", "filter"),
        ("limit=0", "limit"),
        ("offset=x", "offset"),
        ("kind=till", "kind"),
    ] {
        let (code, body) = get(query);
        assert_eq!(code, 400, "{query}");
        assert!(body["error"].as_str().unwrap().contains(word), "{body}");
    }
    let without = http.get(format!("{base}/api/agents")).send().unwrap();
    assert_eq!(without.status().as_u16(), 401);
    let locations: Value = http
        .get(format!("{base}/api/locations"))
        .bearer_auth(token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(locations, json!(["shop-1", "shop-2"]));

    // The page itself is open, and confined by its security policy.
    let page = http.get(format!("{base}/")).send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(page.text().unwrap().contains("SSL configuration"));
}

/// Starts `fleetls-child swarm`: `count` children named `PREFIX-i` over 40 locations.
fn start_swarm(vhost: &Vhost, dir: &Path, prefix: &str, count: usize) -> Proc {
    let data = dir.join(format!("{prefix}-swarm"));
    let args: Vec<String> = [
        "swarm",
        "--broker",
        &vhost.url(),
        "--data-dir",
        data.to_str().unwrap(),
        "--count",
        &count.to_string(),
        "--prefix",
        prefix,
        "--locations",
        "40",
        "--heartbeat",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Proc::spawn(
        &fleetls_tests::program("fleetls-child"),
        &args,
        dir.join(format!("{prefix}-swarm.log")),
    )
}

#[test]
fn the_status_list_pages_through_a_big_network() {
    require_browser();
    const COUNT: usize = 1200;
    let vhost = Vhost::new();
    let dir = test_dir();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let _swarm = start_swarm(&vhost, dir.path(), "s", COUNT);
    wait_for("the swarm registered", Duration::from_secs(180), || {
        let status = parent.status_json().ok()?;
        (status["network"]["agents"] == COUNT).then_some(())
    });
    let token = std::fs::read_to_string(parent.layout().token()).unwrap();
    let token = token.trim();
    let http = fleetls_tests::http();
    let api_names = |query: &str| -> (u64, Vec<String>) {
        let body: Value = http
            .get(format!("http://{}/api/agents?{query}", parent.admin))
            .bearer_auth(token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let names = body["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect();
        (body["total"].as_u64().unwrap(), names)
    };

    let driver = Driver::start(dir.path());
    let browser = Browser::new(&driver);
    browser.goto(&format!("http://{}/", parent.admin));
    browser.type_into("#token", token);
    browser.click("#login-button");
    browser.wait_text("#count-agents", "1200", Duration::from_secs(20));
    browser.wait_text(
        "#page-info",
        "1–100 of 1,200 agents",
        Duration::from_secs(20),
    );
    let first_names = |browser: &Browser| -> Vec<String> {
        page_rows(browser)
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(first_names(&browser), api_names("limit=100").1);
    assert!(browser.disabled("#page-prev"));

    // Next and Previous move by a page (how fast is `scripts/bench`'s and
    // `status_timing`'s to say).
    browser.click("#page-next");
    browser.wait_text(
        "#page-info",
        "101–200 of 1,200 agents",
        Duration::from_secs(10),
    );
    assert_eq!(first_names(&browser), api_names("offset=100&limit=100").1);
    browser.click("#page-prev");
    browser.wait_text(
        "#page-info",
        "1–100 of 1,200 agents",
        Duration::from_secs(10),
    );

    // A bigger page, up to the last one.
    browser.choose("#page-size", "500");
    browser.wait_text(
        "#page-info",
        "1–500 of 1,200 agents",
        Duration::from_secs(10),
    );
    browser.click("#page-next");
    browser.wait_text(
        "#page-info",
        "501–1,000 of 1,200 agents",
        Duration::from_secs(10),
    );
    browser.click("#page-next");
    browser.wait_text(
        "#page-info",
        "1,001–1,200 of 1,200 agents",
        Duration::from_secs(10),
    );
    assert!(browser.disabled("#page-next"));
    assert_eq!(page_rows(&browser).len(), 200);

    // Filters start again from the first page.
    browser.choose("#f-location", "site-7");
    browser.wait_text("#page-info", "1–30 of 30 agents", Duration::from_secs(10));
    assert_eq!(first_names(&browser), api_names("location=site-7").1);
    browser.choose("#f-location", "");
    browser.type_into("#f-q", "s-11");
    let (total, names) = api_names("q=s-11&limit=500");
    browser.wait_text(
        "#page-info",
        &format!("1–{total} of {total} agents"),
        Duration::from_secs(10),
    );
    assert_eq!(first_names(&browser), names);
}

#[test]
fn the_console_shows_trust_and_accepts_a_pending_local_parent() {
    require_browser();
    let vhost = Vhost::new();
    let dir = test_dir();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let _till = start_child(&vhost, dir.path(), "till-1", &[]);
    let _lp = start_child(
        &vhost,
        dir.path(),
        "lp-1",
        &["--kind", "local-parent", "--location", "shop-1"],
    );
    let lp_id = wait_for(
        "the local parent registered",
        Duration::from_secs(60),
        || parent.agent("lp-1")?["id"].as_str().map(str::to_owned),
    );
    wait_for("till-1 registered", Duration::from_secs(60), || {
        parent.agent("till-1")
    });
    // A forged message to the parent: a security event.
    let forged = std::process::Command::new("python3")
        .arg(repo().join("tests/attacks/fleetls_attack.py"))
        .args([
            "send",
            "--broker",
            &vhost.url(),
            "--exchange",
            "fleetls.parent",
        ])
        .args(["--routing-key", "fleetls.parent", "--kind", "Heartbeat"])
        .args([
            "--fields",
            r#"{"state": {"has_certificate": false, "ssl": false, "broker_tls": false}}"#,
        ])
        .args(["--from", &lp_id])
        .output()
        .expect("python3 runs");
    assert!(forged.status.success(), "{forged:?}");
    let network = wait_for("the event counted", Duration::from_secs(60), || {
        let n = parent.status_json().ok()?["network"].clone();
        (n["security_events"] == 1).then_some(n)
    });
    let token = std::fs::read_to_string(parent.layout().token()).unwrap();
    let driver = Driver::start(dir.path());
    let browser = Browser::new(&driver);
    browser.goto(&format!("http://{}/", parent.admin));
    browser.wait_until("the login", Duration::from_secs(20), || {
        (!browser.hidden("#login-view")).then_some(())
    });
    browser.type_into("#token", token.trim());
    browser.click("#login-button");
    browser.wait_text("#trust-pending", "1", Duration::from_secs(20));
    assert_eq!(browser.text("#trust-events"), "1");
    // No certificate yet: nothing expires, nothing revoked.
    assert_eq!(browser.text("#soonest-expiry"), "none");
    assert_eq!(browser.text("#count-revoked"), "0");
    assert_eq!(browser.text("#trust-compromised"), "0");
    assert_eq!(
        browser.text("#signing-key"),
        network["signing_key"].as_str().unwrap()
    );
    // The security events, as the API lists them.
    browser.click("#btn-security");
    let listed = browser.wait_until("the events listed", Duration::from_secs(20), || {
        let text = browser.text("#security-list");
        (!text.is_empty()).then_some(text)
    });
    assert!(
        listed.contains("unsigned") && listed.contains("lp-1"),
        "{listed}"
    );
    browser.click("#security-close");
    // The pending local parent is accepted from its row.
    let accept = format!("tr[data-id='{lp_id}'] button[data-action='accept']");
    browser.wait_until("the Accept button", Duration::from_secs(20), || {
        let there = browser.script(
            "return !!document.querySelector(arguments[0])",
            json!([accept]),
        );
        (there == true).then_some(())
    });
    browser.click(&accept);
    wait_for("lp-1 accepted", Duration::from_secs(20), || {
        (parent.agent("lp-1")?["admission"] == "accepted").then_some(())
    });
    browser.wait_text("#trust-pending", "0", Duration::from_secs(20));
    assert!(
        browser.console_errors().is_empty(),
        "{:?}",
        browser.console_errors()
    );
}
