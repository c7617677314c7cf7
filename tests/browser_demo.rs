//! The demo console in a real browser: herald runs in process on a loopback port and a
//! headless Chromium ([`support::browser`]) opens its page at `/`. The page must connect,
//! refuse a bad publish with herald's JSON error, publish through its form and show the
//! event with its ID and type (as text, never markup), then show an event the test
//! publishes over HTTP, newest first.

mod common;
mod support;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use support::browser::{screenshot_path, Browser, Tab};

const STEP: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_shows_published_events_in_chromium() {
    let server = TestServer::start(test_config()).await;
    let scratch = tempfile::tempdir().expect("temp dir");
    let mut browser = Browser::launch().await;
    let page = browser.open(&server.url("/")).await;

    assert_eq!(browser.eval(page, "document.title").await, "herald demo");
    wait_connected(&mut browser, page, 1).await;
    assert_eq!(
        browser
            .eval(page, "document.querySelector('#channels').value")
            .await,
        "demo"
    );

    // Reconnect, also listening for the type this test publishes below.
    browser.fill(page, "#types", "server-note").await;
    browser.click(page, "#connect").await;
    wait_connected(&mut browser, page, 2).await;

    // A refused publish shows herald's JSON error.
    browser
        .fill(page, "#pub-channel", "no spaces allowed")
        .await;
    browser.fill(page, "#pub-event", "").await;
    let (ok, text) = publish_with_form(&mut browser, page).await;
    assert!(
        !ok && text.starts_with("400") && text.contains("\"invalid_channel\""),
        "refused publish shows the error: {text}"
    );

    // Publish through the form; the answer carries the ID and the event shows under it.
    let data = "hello <b>browser</b> & \"friends\"";
    browser.fill(page, "#pub-channel", "demo").await;
    browser.fill(page, "#pub-event", "greeting").await;
    browser.fill(page, "#pub-data", data).await;
    let (ok, text) = publish_with_form(&mut browser, page).await;
    assert!(ok && text.starts_with("200"), "publish answer: {text}");
    let answer: Value = serde_json::from_str(&text[text.find('\n').unwrap() + 1..])
        .unwrap_or_else(|e| panic!("the answer is JSON ({e}): {text}"));
    let id = answer["id"].as_str().expect("an id").to_string();
    assert_eq!(answer["channel"], "demo");
    let mine = row(&mut browser, page, &id).await;
    assert_eq!(
        mine,
        json!({ "id": id, "type": "greeting", "data": data, "markup": 0, "newest": true }),
        "the form's event, its data shown as text"
    );

    // An event published by the test shows up too, newest first.
    let published: Value = reqwest::Client::new()
        .post(server.admin_url("/publish"))
        .json(&json!({ "channel": "demo", "event": "server-note", "data": "{\"from\":\"rust\"}" }))
        .send()
        .await
        .expect("publish")
        .error_for_status()
        .expect("publish accepted")
        .json()
        .await
        .expect("publish answer");
    let theirs_id = published["id"].as_str().expect("an id").to_string();
    let theirs = row(&mut browser, page, &theirs_id).await;
    assert_eq!(
        theirs,
        json!({ "id": theirs_id, "type": "server-note", "data": "{\"from\":\"rust\"}",
                "markup": 0, "newest": true })
    );
    let count = browser
        .eval(page, "document.querySelector('#event-count').textContent")
        .await;
    assert!(count.as_str().unwrap().starts_with("2 received"), "{count}");

    let shot = screenshot_path(scratch.path(), "demo-console");
    browser.screenshot(page, &shot).await;
    eprintln!("screenshot: {}", shot.display());
    let outlived = browser.quit();
    assert!(
        outlived.is_empty(),
        "chromium outlived its driver: {outlived:?}"
    );
    server.stop().await;
}

/// Wait until stream number `n` (not an earlier one) of the page is connected.
async fn wait_connected(browser: &mut Browser, page: Tab, n: u32) {
    let expr = format!(
        "document.querySelector('#state[data-state=\"connected\"][data-connection=\"{n}\"]')"
    );
    let what = format!("connection {n} open");
    browser.wait(page, &format!("!!{expr}"), STEP, &what).await;
}

/// Click Publish and return the answer to *this* publish: the page numbers its publishes,
/// and the result element names the one whose answer it shows.
async fn publish_with_form(browser: &mut Browser, page: Tab) -> (bool, String) {
    let sent = browser
        .eval(
            page,
            "Number(document.querySelector('#publish-result').dataset.sent ?? 0)",
        )
        .await
        .as_u64()
        .unwrap()
        + 1;
    browser.click(page, "#publish").await;
    let selector = format!("#publish-result[data-answered=\"{sent}\"]");
    let expr = format!(
        "(() => {{ const r = document.querySelector('{selector}'); \
         return r && [r.classList.contains('ok'), r.textContent]; }})()"
    );
    let answer = browser.wait(page, &expr, STEP, "the publish answer").await;
    (
        answer[0].as_bool().unwrap(),
        answer[1].as_str().unwrap().to_string(),
    )
}

/// The page's row for event `id`, once it shows.
async fn row(browser: &mut Browser, page: Tab, id: &str) -> Value {
    let expr = format!(
        "(() => {{ const tr = document.querySelector('#events tr[data-id=\"{id}\"]'); \
         if (!tr) return null; const data = tr.querySelector('td.data'); \
         return {{ id: tr.querySelector('td.id').textContent, \
                  type: tr.querySelector('td.type').textContent, \
                  data: data.textContent, markup: data.children.length, \
                  newest: tr.parentElement.firstElementChild === tr }}; }})()"
    );
    browser
        .wait(page, &expr, STEP, &format!("the row of event {id}"))
        .await
}
