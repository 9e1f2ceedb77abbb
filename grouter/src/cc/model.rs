//! The Cloud Controller v3 resources the placement reads, and the errors a call can end in.
//!
//! Owns: the shapes GRouter relies on (only the fields it uses; everything else a Cloud
//! Controller sends is ignored) and the error text an operator reads in `gcf placement`.
//!
//! Must never: hold a credential or a token (errors name the client id, never the secret).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// What a call to this site's Cloud Controller, UAA or blobstore ended in.
#[derive(Debug, thiserror::Error)]
pub enum CcError {
    /// UAA refused the client's credentials (or answered something else than a token).
    #[error("UAA at {uaa} refused the client credentials of {client_id}: {detail} (HTTP {status})")]
    Auth {
        /// The UAA's base URL.
        uaa: String,
        /// The client id (never the secret).
        client_id: String,
        /// HTTP status.
        status: u16,
        /// UAA's `error_description`, or what was wrong with its answer.
        detail: String,
    },
    /// The Cloud Controller answered with one of its errors.
    #[error("{method} {path}: HTTP {status} {title}: {detail}")]
    Api {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The first error's title (`CF-ResourceNotFound`), or the status's reason.
        title: String,
        /// The first error's detail.
        detail: String,
    },
    /// The answer was not the Cloud Controller's JSON.
    #[error(
        "{method} {path}: HTTP {status}, but the answer is not the Cloud Controller's JSON: {why}"
    )]
    Garbage {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// HTTP status.
        status: u16,
        /// What was wrong.
        why: String,
    },
    /// The request did not get an answer.
    #[error("{method} {url}: {error}")]
    Transport {
        /// The request's method.
        method: String,
        /// Where it went.
        url: String,
        /// Why it failed (reqwest's error with its sources).
        error: String,
    },
    /// The blobstore refused a droplet download.
    #[error("the blobstore answered HTTP {status} for droplet {droplet}: {detail}")]
    Blobstore {
        /// The droplet.
        droplet: String,
        /// HTTP status.
        status: u16,
        /// The start of its answer.
        detail: String,
    },
    /// An asynchronous job of the Cloud Controller failed or did not finish.
    #[error("job {job} ({operation}) {state}: {detail}")]
    Job {
        /// The job's guid.
        job: String,
        /// What it does (`droplet.upload`).
        operation: String,
        /// `FAILED`, or `still PROCESSING after N s`.
        state: String,
        /// Its errors.
        detail: String,
    },
    /// The client could not be set up (bad URL, unusable CA file).
    #[error("{0}")]
    Setup(String),
}

impl CcError {
    /// HTTP status of a Cloud Controller error answer, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            CcError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `null` read as the type's default (Cloud Controllers send `null` for empty maps).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A guid and a name: organisations, spaces, domains.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Named {
    /// The resource's guid.
    pub guid: String,
    /// Its name.
    pub name: String,
}

/// A lifecycle: `buildpack`, `docker` (or `cnb`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Lifecycle {
    /// The lifecycle's type.
    #[serde(rename = "type")]
    pub kind: String,
}

/// An app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct App {
    /// Its guid.
    pub guid: String,
    /// Its name.
    pub name: String,
    /// `STARTED` or `STOPPED`.
    pub state: String,
    /// When it was created (RFC 3339).
    #[serde(default, deserialize_with = "null_default")]
    pub created_at: String,
    /// Its lifecycle.
    pub lifecycle: Lifecycle,
}

/// A droplet's checksum.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Checksum {
    /// `sha256` (or `sha1` on old Cloud Controllers).
    #[serde(rename = "type")]
    pub kind: String,
    /// Hex digest.
    pub value: String,
}

/// A droplet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Droplet {
    /// Its guid.
    pub guid: String,
    /// `AWAITING_UPLOAD`, `PROCESSING_UPLOAD`, `STAGED`, `COPYING`, `FAILED`, `EXPIRED`.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Its lifecycle.
    pub lifecycle: Lifecycle,
    /// Its checksum, once staged (none for docker droplets).
    #[serde(default)]
    pub checksum: Option<Checksum>,
    /// The processes it defines (`web` → its start command).
    #[serde(default, deserialize_with = "null_default")]
    pub process_types: BTreeMap<String, String>,
}

impl Droplet {
    /// Its SHA-256 (hex), when the Cloud Controller gives one.
    pub fn sha256(&self) -> Option<&str> {
        self.checksum
            .as_ref()
            .filter(|c| c.kind.eq_ignore_ascii_case("sha256"))
            .map(|c| c.value.as_str())
    }

    /// Staged: can be set current and run.
    pub fn is_staged(&self) -> bool {
        self.state == "STAGED"
    }

    /// A buildpack droplet: the only kind the Cloud Controller lets anyone download.
    pub fn is_buildpack(&self) -> bool {
        self.lifecycle.kind == "buildpack"
    }
}

/// A process (only `web` is read).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Process {
    /// Its instances.
    pub instances: u32,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    /// Its guid.
    pub guid: String,
    /// The host label (empty for a route on the domain itself).
    #[serde(default, deserialize_with = "null_default")]
    pub host: String,
    /// The path (empty for none).
    #[serde(default, deserialize_with = "null_default")]
    pub path: String,
    /// `host.domain/path`.
    pub url: String,
}

/// One error of a Cloud Controller's error answer or job.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct ErrorItem {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub detail: String,
}

/// `{"errors": [...]}`.
#[derive(Debug, Deserialize)]
pub(super) struct Errors {
    pub errors: Vec<ErrorItem>,
}

/// An asynchronous job.
#[derive(Debug, Deserialize)]
pub(super) struct Job {
    pub guid: String,
    #[serde(default)]
    pub operation: String,
    pub state: String,
    #[serde(default, deserialize_with = "null_default")]
    pub errors: Vec<ErrorItem>,
}

/// A page of a list.
#[derive(Debug, Deserialize)]
pub(super) struct Page<T> {
    pub resources: Vec<T>,
    #[serde(default)]
    pub pagination: Option<Pagination>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Pagination {
    #[serde(default)]
    pub next: Option<Href>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Href {
    pub href: String,
}

/// UAA's token answer.
#[derive(Debug, Deserialize)]
pub(super) struct Token {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// UAA's error answer.
#[derive(Debug, Deserialize)]
pub(super) struct UaaError {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_droplet_reads_with_nulls_and_unknown_fields() {
        let d: Droplet = serde_json::from_str(
            r#"{"guid":"d1","state":"STAGED","error":null,"lifecycle":{"type":"buildpack","data":{}},
            "checksum":{"type":"sha256","value":"ab12"},"process_types":null,"stack":"cflinuxfs4",
            "links":{"self":{"href":"x"}}}"#,
        )
        .unwrap();
        assert_eq!(d.sha256(), Some("ab12"));
        assert!(d.is_staged() && d.is_buildpack());
        assert!(d.process_types.is_empty());
        let docker: Droplet = serde_json::from_str(
            r#"{"guid":"d2","state":"STAGED","lifecycle":{"type":"docker","data":{}},"checksum":null,"image":"x"}"#,
        )
        .unwrap();
        assert_eq!(docker.sha256(), None);
        assert!(!docker.is_buildpack());
        let sha1: Droplet = serde_json::from_str(
            r#"{"guid":"d3","state":"STAGED","lifecycle":{"type":"buildpack"},"checksum":{"type":"sha1","value":"x"}}"#,
        )
        .unwrap();
        assert_eq!(sha1.sha256(), None, "only a SHA-256 is compared");
    }

    #[test]
    fn errors_name_the_client_but_never_hold_a_secret() {
        let e = CcError::Auth {
            uaa: "https://uaa.lon".into(),
            client_id: "grouter-lon".into(),
            status: 401,
            detail: "Bad credentials".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("grouter-lon") && text.contains("credentials") && text.contains("401"),
            "{text}"
        );
    }
}
