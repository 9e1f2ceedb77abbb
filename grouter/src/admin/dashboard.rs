//! The dashboard's static files, embedded in the binary: `GET /` (the page) and
//! `GET /dashboard/*` (its script, style sheet, and uPlot with its licence, vendored from the
//! npm registry under `dashboard/vendor/`). Everything the page shows it fetches from
//! `/v1/*` with the token the user types; the files themselves need no token.
//!
//! Owns: the file table and the headers that keep the page to itself (a content security
//! policy allowing only this origin, no referrer, no framing).
//!
//! Must never: reach out to another origin (no CDN), or take a token in a URL.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

/// `(path, content type, bytes)` of every file.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("dashboard/index.html"),
    ),
    (
        "/dashboard/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("dashboard/app.js"),
    ),
    (
        "/dashboard/app.css",
        "text/css; charset=utf-8",
        include_bytes!("dashboard/app.css"),
    ),
    (
        "/dashboard/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "/dashboard/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("dashboard/vendor/uPlot.min.css"),
    ),
    (
        "/dashboard/uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("dashboard/vendor/uPlot.LICENSE"),
    ),
];

/// Only this origin, for scripts, styles, images and requests alike.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The file at `path`, if it is one of the dashboard's.
pub(super) fn file(path: &str) -> Option<Response<Full<Bytes>>> {
    let (_, kind, bytes) = FILES.iter().find(|(p, _, _)| *p == path)?;
    Response::builder()
        .header(header::CONTENT_TYPE, *kind)
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(Bytes::from_static(bytes)))
        .ok()
        .or_else(|| {
            let mut r = Response::new(Full::default());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            Some(r)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_page_and_its_files_from_this_origin_only() {
        let page = file("/").unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("connect-src 'self'"));
        for (path, _, bytes) in FILES {
            assert!(file(path).is_some(), "{path}");
            let text = String::from_utf8_lossy(bytes);
            // No file of ours names another origin to load from.
            if !path.contains("uPlot") {
                assert!(
                    !text.contains("http://") && !text.contains("https://"),
                    "{path}"
                );
            }
        }
        assert!(file("/dashboard/../secret").is_none());
        let html = String::from_utf8_lossy(FILES[0].2);
        assert!(html.contains("/dashboard/uPlot.iife.min.js"));
    }
}
