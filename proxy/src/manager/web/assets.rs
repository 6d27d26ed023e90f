//! The interface's files, built into the binary: plain HTML, one script per page and one
//! style sheet, no build step and nothing fetched from elsewhere. No script or style is
//! inline, so that the Content-Security-Policy can forbid inline code altogether.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};

pub const INDEX_HTML: &str = include_str!("assets/index.html");
pub const LOGIN_HTML: &str = include_str!("assets/login.html");
pub const APP_JS: &str = include_str!("assets/app.js");
pub const LOGIN_JS: &str = include_str!("assets/login.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

fn with_type(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub fn page(html: &'static str) -> Response {
    with_type("text/html; charset=utf-8", html)
}

pub fn script(js: &'static str) -> Response {
    with_type("text/javascript; charset=utf-8", js)
}

pub fn style() -> Response {
    with_type("text/css; charset=utf-8", STYLE_CSS)
}

pub fn icon() -> Response {
    with_type("image/svg+xml", FAVICON_SVG)
}
