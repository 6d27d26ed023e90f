//! The cluster manager's web interface seen by a browser in the lab: Debian's chromium,
//! headless, started inside a lab namespace (where the manager's address is) and driven
//! over the DevTools protocol, as `proxy/tests/web.rs` drives it on loopback.

use std::{path::Path, time::Duration};

use anyhow::Context as _;

/// What the overview showed when it was taken.
#[derive(Debug, Clone)]
pub struct Overview {
    /// The logged-in operator, as the page names it.
    pub who: String,
    /// The members' rows: name and the version it runs.
    pub members: Vec<(String, String)>,
    /// The back-ends' rows, their cells joined by spaces (`fea be1 be1 down ...`).
    pub backends: Vec<String>,
}

/// Opens `link` (a `cluster web` login link) in a headless chromium running in `ns`, waits
/// until the login's exchange has opened the overview and the overview has drawn its
/// data, and writes a PNG of it to `png`. Fails if the page never gets there (a refused
/// token, a manager not answering) within `patience`.
pub fn screenshot_overview(
    ns: &crate::Netns,
    link: &str,
    png: &Path,
    patience: Duration,
) -> anyhow::Result<Overview> {
    let link = link.to_owned();
    let png = png.to_owned();
    // The browser is spawned, and its DevTools socket opened, from a thread inside `ns`:
    // chromium inherits the namespace and listens on that namespace's loopback.
    ns.enter(move || shoot(&link, &png, patience))?
}

fn shoot(link: &str, png: &Path, patience: Duration) -> anyhow::Result<Overview> {
    use headless_chrome::{
        Browser, LaunchOptions, protocol::cdp::Page::CaptureScreenshotFormatOption,
    };
    let profile = std::env::temp_dir().join(format!("rb-lab-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let browser = Browser::new(LaunchOptions {
        headless: true,
        // Root has no sandbox for chromium without user namespaces.
        sandbox: false,
        path: Some("/usr/bin/chromium".into()),
        // The cluster's own CA, which this throw-away profile does not trust.
        ignore_certificate_errors: true,
        window_size: Some((1400, 1000)),
        user_data_dir: Some(profile.clone()),
        idle_browser_timeout: patience * 2,
        ..LaunchOptions::default()
    })
    .map_err(|e| anyhow::anyhow!("chromium: {e}"))?;
    let result = (|| -> anyhow::Result<Overview> {
        let tab = browser.new_tab().map_err(|e| anyhow::anyhow!("{e}"))?;
        tab.set_default_timeout(patience);
        tab.navigate_to(link)
            .map_err(|e| anyhow::anyhow!("open the login link: {e}"))?;
        if let Err(e) = tab.wait_for_element("#page-overview[data-loaded]") {
            let said =
                eval(&tab, "document.body ? document.body.innerText : ''").unwrap_or_default();
            anyhow::bail!("the overview never loaded ({e}); the page says: {said:?}");
        }
        let who = eval(&tab, "document.getElementById('who').textContent")?;
        let rows = eval(
            &tab,
            "JSON.stringify([...document.querySelectorAll('#members tbody tr')].map(tr => \
             [tr.dataset.member || '', tr.cells[3] ? tr.cells[3].textContent : '']))",
        )?;
        let members: Vec<(String, String)> =
            serde_json::from_str(&rows).with_context(|| format!("the members' rows: {rows}"))?;
        let rows = eval(
            &tab,
            "JSON.stringify([...document.querySelectorAll('#backends tbody tr')].map(tr => \
             [...tr.cells].map(td => td.textContent).join(' ')))",
        )?;
        let backends: Vec<String> =
            serde_json::from_str(&rows).with_context(|| format!("the back-ends' rows: {rows}"))?;
        let shot = tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .map_err(|e| anyhow::anyhow!("screenshot: {e}"))?;
        if let Some(dir) = png.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(png, shot).with_context(|| format!("write {}", png.display()))?;
        Ok(Overview {
            who,
            members,
            backends,
        })
    })();
    drop(browser);
    let _ = std::fs::remove_dir_all(&profile);
    result
}

/// Evaluates `js` in the page: its value as a string.
fn eval(tab: &headless_chrome::Tab, js: &str) -> anyhow::Result<String> {
    let v = tab
        .evaluate(js, true)
        .map_err(|e| anyhow::anyhow!("evaluate {js}: {e}"))?;
    Ok(match v.value {
        Some(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    })
}
