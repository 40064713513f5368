//! The web console at `/ui/`: static files built by `scripts/build-ui.sh` and embedded at compile time (see
//! build.rs). They are public, as a login page is; everything the page shows it asks of the API with the
//! user's own bearer token (see `ui/src/app.js`).

use crate::response::{self, Resp};
use http::{header, HeaderValue, StatusCode};

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

pub const PREFIX: &str = "/ui";

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// Whether `path` is the console's.
pub fn owns(path: &str) -> bool {
    path == PREFIX || path.starts_with("/ui/")
}

pub fn serve(path: &str) -> Resp {
    if path == PREFIX {
        return http::Response::builder()
            .status(StatusCode::MOVED_PERMANENTLY)
            .header(header::LOCATION, "/ui/")
            .body(response::full(""))
            .expect("response");
    }
    if ASSETS.is_empty() {
        let why = "the web console was not built into this kumo: run scripts/build-ui.sh, then build kumo again";
        return http::Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(response::full(why))
            .expect("response");
    }
    let rel = path.strip_prefix("/ui/").unwrap_or("");
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let Some((name, body)) = ASSETS.iter().find(|(p, _)| *p == rel) else {
        return http::Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(response::full(format!("no such file in the web console: {rel}")))
            .expect("response");
    };
    let mut r = http::Response::builder()
        .header(header::CONTENT_TYPE, content_type(name))
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .body(response::full(bytes::Bytes::from_static(body)))
        .expect("response");
    // Scripts only from here; xterm.js and noVNC set styles inline.
    r.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_types() {
        assert!(owns("/ui") && owns("/ui/app.js") && !owns("/uix") && !owns("/api"));
        assert_eq!(serve("/ui").status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(content_type("vendor/novnc/core/rfb.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        let missing = serve("/ui/no-such-file.js").status();
        assert!(missing == StatusCode::NOT_FOUND || missing == StatusCode::SERVICE_UNAVAILABLE, "{missing}");
    }
}
