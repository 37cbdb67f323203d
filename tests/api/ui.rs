//! The inspection page in a real headless Chromium (Debian's `chromium`):
//! load it, see the saga appear, open it and see the compensation timeline.

use reqwest::StatusCode;

use crate::helpers::{Broker, Options, spawn_app, token};

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_owned)
}

/// The DOM of `url` after its scripts ran. Headless Chromium can hang for
/// good now and then (a virtual-time budget that never runs out): a run
/// that takes more than a minute is killed and tried again.
async fn dump_dom(browser: String, url: String) -> String {
    tokio::task::spawn_blocking(move || {
        for attempt in 1..=3 {
            use std::os::unix::process::CommandExt as _;
            let profile = tempfile::tempdir().expect("profile dir");
            let mut child = std::process::Command::new(&browser)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--virtual-time-budget=5000",
                    "--dump-dom",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(&url)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                // Its own process group: a hung browser is killed with all
                // of its helper processes (which hold its output open).
                .process_group(0)
                .spawn()
                .expect("run chromium");
            // Read its output as it comes (a full pipe would block it).
            let mut stdout = child.stdout.take().expect("stdout");
            let mut stderr = child.stderr.take().expect("stderr");
            let out = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
                s
            });
            let err = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
                s
            });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait().expect("wait for chromium") {
                    break Some(status);
                }
                if std::time::Instant::now() > deadline {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", "--", &format!("-{}", child.id())])
                        .status();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            };
            let (out, err) = (
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            );
            match status {
                Some(status) => {
                    assert!(status.success(), "chromium failed: {err}");
                    return out;
                }
                None => eprintln!("chromium hung (attempt {attempt} of 3); killed, trying again"),
            }
        }
        panic!("chromium hung three times on {url}");
    })
    .await
    .expect("chromium task")
}

#[actix_web::test]
async fn the_inspection_page_shows_a_cancelled_sagas_compensation_timeline() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required in CI"
        );
        eprintln!(
            "\n!!! SKIPPED: no chromium on this machine (apt-get install chromium). In CI this is a failure.\n"
        );
        return;
    };
    let app = spawn_app(Broker::InProcess, Options::default())
        .await
        .expect("app");
    // The page asks the browser for credentials (Basic, the manager's token
    // as the password): given them in the address, it shows the sagas.
    let signed_in = app
        .base
        .replacen("http://", &format!("http://manager:{}@", token()), 1);
    // Without them: 401 and a Basic challenge, no page.
    let res = app
        .anonymous
        .get(format!("{}/ui", app.base))
        .send()
        .await
        .expect("GET /ui");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .is_ok_and(|c| c.starts_with("Basic ")),
        "{:?}",
        res.headers()
    );
    // An empty list first.
    let dom = dump_dom(browser.clone(), format!("{signed_in}/ui")).await;
    assert!(dom.contains("id=\"no-sagas\""), "{dom}");

    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (s, order) = app.order(customer, food, 10).await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    let id = order["id"].as_i64().expect("id");
    app.wait_state(id, "Completed").await;
    let (s, _) = app
        .delete_as(&format!("/kitchens/{id}"), Some(token()))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    app.wait_state(id, "Compensated").await;

    // The saga appears in the list...
    let dom = dump_dom(browser.clone(), format!("{signed_in}/ui")).await;
    assert!(
        dom.contains(&format!("data-saga=\"{id}\" data-state=\"Compensated\"")),
        "{dom}"
    );
    assert!(dom.contains(&format!("href=\"#/sagas/{id}\"")), "{dom}");
    // ...and opens on its steps and compensation timeline.
    let dom = dump_dom(browser, format!("{signed_in}/ui#/sagas/{id}")).await;
    assert!(
        dom.contains(&format!(
            "id=\"saga\" data-saga=\"{id}\" data-state=\"Compensated\""
        )),
        "{dom}"
    );
    for step in ["pay", "kitchen", "delivery", "coupon"] {
        assert!(
            dom.contains(&format!("data-step=\"{step}\" data-status=\"Compensated\"")),
            "step {step}: {dom}"
        );
        assert!(
            dom.contains(&format!(
                "compensation\" data-step=\"{step}\" data-step-status=\"Compensated\""
            )),
            "timeline entry for {step}'s compensation: {dom}"
        );
        // The kitchen is partitioned by food, the others by order (of 8).
        let key = if step == "kitchen" { food } else { id };
        let queue = format!("{}.{step}.commands.p{}", app.namespace, key % 8);
        assert!(
            dom.contains(&format!("#/queues/%2F/{queue}")),
            "link to {queue}: {dom}"
        );
    }
    assert!(dom.contains("cancelled by the kitchen manager"), "{dom}");
    app.stop().await;
}
