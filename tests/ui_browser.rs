//! The support console in a real browser (issue #6): headless Chromium driven through
//! chromedriver (WebDriver, the fantoccini client) against a real daemon and a real
//! PostgreSQL journal of the reference world. Search an item, open it, see the fork
//! highlighted, open the finding, fail to acknowledge without the token, acknowledge
//! with it and see the status change.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assayer::adapters::postgres::{ConnectOptions, Pg};
use assayer::core::finding::Invariant;
use assayer::core::policy::Policy;
use assayer::core::time::Timestamp;
use assayer::sim::{self, Duplication, SimConfig};
use common::{DaemonProc, TestBus, TestDb, free_port, wait_http, write_config};
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOKEN: &str = "s3cret-ack-token";
const TOKEN_ENV: &str = "ASSAYER_TEST_UI_ACK_TOKEN";

/// chromedriver on a port of its own, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing. Install Debian's browser and driver:\n  \
                 apt-get update && apt-get install -y chromium chromium-driver"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }

    async fn browser(&self, profile: &std::path::Path) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_string(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn text(c: &Client, css: &str) -> String {
    let url = c.current_url().await.ok();
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` on {url:?}: {e}"))
        .text()
        .await
        .expect("element text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_search_item_fork_finding_and_token_guarded_ack_in_chromium() {
    // A world with a mail double receive, journaled for the daemon's group.
    let cfg = SimConfig {
        seed: 77,
        events: 1_500,
        players: 20,
        duplications: vec![(Duplication::MailDoubleReceive, 1)],
        inject: vec![(Invariant::ItemDuplicated, 1)],
        ..SimConfig::default()
    };
    let mut lines = Vec::new();
    let key = sim::generate(&cfg, &mut |l: &[u8]| lines.push(l.to_vec()));
    let fault = key
        .faults
        .iter()
        .find(|e| e.invariant == Invariant::ItemPhantomSource)
        .expect("the planted double receive")
        .clone();
    let item = fault.subject.clone().expect("item");
    let fork_tx = fault.tx_id.clone().expect("fork tx");

    let db = TestDb::create().await;
    let bus = TestBus::new();
    bus.declare().await;
    let pg = Pg::connect(
        &ConnectOptions {
            url: &db.url,
            pool_size_max: 2,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(60),
        },
        &bus.queue,
    )
    .await
    .expect("connect");
    pg.migrate().await.expect("migrate");
    let mut input = lines.join(&b'\n');
    input.push(b'\n');
    assayer::daemon::import::import(
        &pg,
        &Policy::builtin(),
        &mut input.as_slice(),
        1_000,
        Timestamp::now(),
    )
    .await
    .expect("journal the world");

    let dir = std::env::temp_dir().join(common::unique("assayer_ui"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = free_port();
    let config = write_config(
        &dir,
        &db,
        &bus,
        port,
        &format!("\n[ui]\nack_token_env = \"{TOKEN_ENV}\"\n"),
    );
    let _daemon =
        DaemonProc::start_with_env(&config, dir.join("daemon.log"), &[(TOKEN_ENV, TOKEN)]);
    wait_http(port, "/ui/findings", Duration::from_secs(30), |code, _| {
        code == 200
    })
    .await;

    let driver = Driver::start();
    let c = driver.browser(&dir.join("chromium-profile")).await;
    let base = format!("http://127.0.0.1:{port}");
    let result = async {
        // 1. Search the item from the findings page.
        c.goto(&format!("{base}/ui/findings")).await?;
        let search = c.find(Locator::Css("#search")).await?;
        search.send_keys(&item).await?;
        c.find(Locator::Css("form.search button"))
            .await?
            .click()
            .await?;
        // 2. The item page: the fork row is highlighted and names the fork tx.
        c.wait().for_element(Locator::Css("#timeline")).await?;
        let h1 = text(&c, "h1").await;
        assert!(h1.contains(&item), "item page title: {h1}");
        let fork_row = c.find(Locator::Css("#timeline tr.fork")).await?;
        assert_eq!(
            fork_row.attr("data-tx").await?.as_deref(),
            Some(fork_tx.as_str())
        );
        assert!(fork_row.text().await?.contains("FORK"), "fork badge");
        let forks = c.find_all(Locator::Css("#timeline tr.fork")).await?;
        assert_eq!(forks.len(), 1, "exactly one highlighted fork");
        assert_eq!(text(&c, "#fork-tx").await, fork_tx);
        // 3. Open the finding that flagged the fork.
        c.find(Locator::Css("a.fork-finding"))
            .await?
            .click()
            .await?;
        c.wait().for_element(Locator::Css("#finding")).await?;
        assert_eq!(text(&c, "#status").await, "open");
        assert!(
            text(&c, "#evidence").await.contains(&item),
            "evidence names the item"
        );
        let finding_url = c.current_url().await?;
        // 4. Without the token the acknowledgement is refused.
        let form = c.form(Locator::Css("#ack")).await?;
        form.set_by_name("by", "alice").await?;
        form.set_by_name("reason", "ticket 4711").await?;
        form.submit().await?;
        c.wait().for_element(Locator::Css("#error")).await?;
        let refused = text(&c, "#error").await;
        assert!(refused.contains("refused"), "refusal page: {refused}");
        c.goto(finding_url.as_str()).await?;
        assert_eq!(
            text(&c, "#status").await,
            "open",
            "still open after a refused ack"
        );
        // 5. With the token it is acknowledged, and the page shows it.
        let form = c.form(Locator::Css("#ack")).await?;
        form.set_by_name("by", "alice").await?;
        form.set_by_name("reason", "ticket 4711").await?;
        form.set_by_name("token", TOKEN).await?;
        form.submit().await?;
        c.wait().for_element(Locator::Css("#status-by")).await?;
        assert_eq!(text(&c, "#status").await, "acknowledged");
        assert_eq!(text(&c, "#status-by").await, "alice");
        assert_eq!(text(&c, "#status-reason").await, "ticket 4711");
        Ok::<_, fantoccini::error::CmdError>(())
    }
    .await;
    let _ = c.close().await;
    result.expect("browser session");
    // The acknowledgement is in PostgreSQL.
    let j = assayer::adapters::journal::Journal::connect(
        &db.url,
        &bus.queue,
        1,
        Duration::from_secs(5),
        Duration::from_secs(30),
    )
    .await
    .expect("journal");
    let acked = j
        .findings(
            &assayer::adapters::journal::FindingFilter {
                status: Some("acknowledged".into()),
                ..Default::default()
            },
            10,
            0,
        )
        .await
        .expect("findings");
    assert_eq!(acked.len(), 1);
    assert_eq!(acked[0].tx_id.as_deref(), Some(fork_tx.as_str()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A raw HTTP/1.0 POST of a urlencoded form: (status, body).
fn http_post_form(port: u16, path: &str, form: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (
        status,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_without_a_token_is_read_only_and_escapes_what_it_echoes() {
    let cfg = SimConfig {
        seed: 78,
        events: 600,
        players: 10,
        inject: vec![(Invariant::ItemDuplicated, 1)],
        ..SimConfig::default()
    };
    let mut lines = Vec::new();
    sim::generate(&cfg, &mut |l: &[u8]| lines.push(l.to_vec()));
    let db = TestDb::create().await;
    let bus = TestBus::new();
    let pg = Pg::connect(
        &ConnectOptions {
            url: &db.url,
            pool_size_max: 2,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(60),
        },
        &bus.queue,
    )
    .await
    .expect("connect");
    pg.migrate().await.expect("migrate");
    let mut input = lines.join(&b'\n');
    input.push(b'\n');
    assayer::daemon::import::import(
        &pg,
        &Policy::builtin(),
        &mut input.as_slice(),
        1_000,
        Timestamp::now(),
    )
    .await
    .expect("journal the world");
    let j = assayer::adapters::journal::Journal::connect(
        &db.url,
        &bus.queue,
        1,
        Duration::from_secs(5),
        Duration::from_secs(30),
    )
    .await
    .expect("journal");
    let f = j
        .findings(&Default::default(), 10, 0)
        .await
        .expect("findings")
        .into_iter()
        .next()
        .expect("the planted finding");

    let dir = std::env::temp_dir().join(common::unique("assayer_ui_ro"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = free_port();
    let config = write_config(&dir, &db, &bus, port, "");
    let _daemon = DaemonProc::start(&config, dir.join("daemon.log"));
    let (code, page) = wait_http(
        port,
        &format!("/ui/findings/{}", f.fingerprint),
        Duration::from_secs(30),
        |c, _| c == 200,
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        page.contains("read-only"),
        "the finding page says the console is read-only"
    );

    let (code, body) = http_post_form(
        port,
        &format!("/ui/findings/{}/ack", f.fingerprint),
        "by=mallory&reason=nothing&token=guess",
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");
    assert_eq!(
        j.finding(&f.fingerprint).await.expect("finding").status,
        "open"
    );

    // What the console echoes is escaped.
    let (code, body) =
        common::http_get(port, "/ui/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E").expect("search");
    assert_eq!(code, 404);
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(!body.contains("<script>alert"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}
