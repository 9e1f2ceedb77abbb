//! Droplet bits: the multipart upload (`POST /v3/droplets/:guid/upload`, streamed to a file
//! in the blob dir and hashed as it arrives, then an upload job that stages the droplet after
//! `--job-delay-ms`), the download redirect (`GET /v3/droplets/:guid/download`) and the
//! blobstore it points at (`GET /_blobstore/droplets/:guid?signature=S`, served from the file
//! in chunks, optionally paced).
//!
//! Owns the blob files and the URL signatures. Must never hold a droplet whole in memory,
//! leave a partial upload's file behind, or serve bits to a request that carries an
//! `Authorization` header or a bad signature.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::Shared;
use crate::error::CcError;
use crate::faults::Fault;
use crate::seed::hex;
use crate::server::{Sh, base_url, json_response};
use crate::store::{DropletState, Job, JobState, Lifecycle, Stamp, new_guid};

/// Removes a file when dropped, unless [`keep`](TempBlob::keep) was called: an upload that
/// fails or is cut off leaves nothing behind.
struct TempBlob(Option<PathBuf>);

impl TempBlob {
    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Read and drop the rest of a request body, so the client reads our answer rather than a
/// reset while it is still sending.
pub(crate) async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = stream.next().await {}
}

fn awaiting(sh: &Shared, guid: &str) -> Result<(), CcError> {
    let store = sh.store.lock();
    let d = store
        .droplet(guid)
        .ok_or_else(|| CcError::not_found("Droplet"))?;
    if d.state != DropletState::AwaitingUpload {
        return Err(CcError::unprocessable(format!(
            "Bits may be uploaded only to a droplet in the AWAITING_UPLOAD state; this one is {}.",
            d.state.as_str()
        )));
    }
    Ok(())
}

pub(crate) async fn upload(
    State(sh): Sh,
    Path(guid): Path<String>,
    req: Request,
) -> Result<Response, CcError> {
    let base = base_url(&sh, req.headers());
    if let Err(e) = awaiting(&sh, &guid) {
        drain(req.into_body()).await;
        return Err(e);
    }
    if sh.faults.lock().take(Fault::Upload500) {
        drain(req.into_body()).await;
        return Err(CcError::server());
    }
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| CcError::parse(format!("not a multipart/form-data body: {e}")))?;
    let mut stored = None;
    let mut complaint = None;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(CcError::parse(format!("bad multipart body: {e}"))),
        };
        if field.name() != Some("bits") || stored.is_some() || complaint.is_some() {
            continue; // the next `next_field` skips what is left of it
        }
        if !field.file_name().is_some_and(|f| f.ends_with(".tgz")) {
            complaint = Some(CcError::unprocessable(
                "The bits part must be a file whose name ends in .tgz",
            ));
            continue;
        }
        stored = Some(store_part(&sh, field).await?);
    }
    if let Some(e) = complaint {
        return Err(e);
    }
    let Some((temp, sha, size)) = stored else {
        return Err(CcError::unprocessable(
            "Upload must include a bits part (a file whose name ends in .tgz)",
        ));
    };
    let fail = sh.faults.lock().take(Fault::JobFailed);
    let job_guid = new_guid();
    let body = {
        let mut store = sh.store.lock();
        let d = store
            .droplet_mut(&guid)
            .ok_or_else(|| CcError::not_found("Droplet"))?;
        if d.state != DropletState::AwaitingUpload {
            return Err(CcError::unprocessable(format!(
                "Bits may be uploaded only to a droplet in the AWAITING_UPLOAD state; this one is {}.",
                d.state.as_str()
            )));
        }
        d.state = DropletState::ProcessingUpload;
        d.blob = Some(temp.keep());
        d.sha256 = Some(sha);
        d.size = Some(size);
        d.stamp.touch();
        store.jobs.push(Job {
            guid: job_guid.clone(),
            droplet: guid.clone(),
            state: JobState::Processing,
            errors: Vec::new(),
            stamp: Stamp::now(),
        });
        let d = store.droplet(&guid).ok_or_else(CcError::server)?;
        store.droplet_json(d, &base)
    };
    let shared = sh.clone();
    let (job, droplet) = (job_guid.clone(), guid);
    tokio::spawn(async move {
        tokio::time::sleep(shared.job_delay).await;
        finish_job(&shared, &job, &droplet, fail);
    });
    let mut response = json_response(StatusCode::ACCEPTED, &body);
    if let Ok(location) = format!("{base}/v3/jobs/{job_guid}").parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Stream one part to a new file in the blob dir, hashing it: (the file, its SHA-256, size).
async fn store_part(
    sh: &Shared,
    mut field: axum::extract::multipart::Field<'_>,
) -> Result<(TempBlob, String, u64), CcError> {
    let path = sh.blob_dir.join(format!("upload-{}", new_guid()));
    let file = tokio::fs::File::create(&path)
        .await
        .map_err(|_| CcError::server())?;
    let temp = TempBlob(Some(path));
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                hash.update(&chunk);
                size += chunk.len() as u64;
                out.write_all(&chunk).await.map_err(|_| CcError::server())?;
            }
            Ok(None) => break,
            Err(e) => return Err(CcError::parse(format!("bad multipart body: {e}"))),
        }
    }
    out.flush().await.map_err(|_| CcError::server())?;
    Ok((temp, hex(hash.finish().as_ref()), size))
}

/// The upload job ends: COMPLETE and the droplet STAGED, or (a `job_failed` fault) FAILED.
fn finish_job(sh: &Shared, job: &str, droplet: &str, fail: bool) {
    let mut store = sh.store.lock();
    let mut remove = None;
    if let Some(d) = store.droplet_mut(droplet) {
        if fail {
            d.state = DropletState::Failed;
            d.error = Some("droplet upload failed (injected)".into());
            d.sha256 = None;
            d.size = None;
            remove = d.blob.take();
        } else {
            d.state = DropletState::Staged;
        }
        d.stamp.touch();
    }
    if let Some(j) = store.job_mut(job) {
        if fail {
            j.state = JobState::Failed;
            j.errors = vec![CcError::entry(
                10001,
                "CF-ServerError",
                "droplet upload failed (injected)",
            )];
        } else {
            j.state = JobState::Complete;
        }
        j.stamp.touch();
    }
    drop(store);
    if let Some(p) = remove {
        let _ = std::fs::remove_file(p);
    }
}

/// The signature of a droplet's blobstore URL (HMAC-SHA256 of its GUID, hex).
fn signature(sh: &Shared, guid: &str) -> String {
    hex(ring::hmac::sign(&sh.signing_key, guid.as_bytes()).as_ref())
}

pub(crate) async fn download_redirect(
    State(sh): Sh,
    headers: HeaderMap,
    Path(guid): Path<String>,
) -> Result<Response, CcError> {
    let base = base_url(&sh, &headers);
    {
        let store = sh.store.lock();
        let d = store
            .droplet(&guid)
            .ok_or_else(|| CcError::not_found("Droplet"))?;
        if d.lifecycle == Lifecycle::Docker {
            return Err(CcError::unprocessable(
                "Cannot download droplets with 'docker' lifecycle.",
            ));
        }
        if d.state != DropletState::Staged || d.blob.is_none() {
            return Err(CcError::unprocessable(
                "Only staged droplets can be downloaded.",
            ));
        }
    }
    let location = format!(
        "{base}/_blobstore/droplets/{guid}?signature={}",
        signature(&sh, &guid)
    );
    Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

pub(crate) async fn download(
    State(sh): Sh,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(guid): Path<String>,
) -> Response {
    let auth = headers.contains_key(header::AUTHORIZATION);
    sh.record_request("GET", uri.path(), uri.query(), auth);
    if auth {
        return s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
        );
    }
    let given = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "signature")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if given != signature(&sh, &guid) {
        return s3_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    let blob = {
        let store = sh.store.lock();
        store
            .droplet(&guid)
            .filter(|d| d.state == DropletState::Staged)
            .and_then(|d| d.blob.clone())
    };
    let Some(blob) = blob else {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };
    let file = match tokio::fs::File::open(&blob).await {
        Ok(f) => f,
        Err(_) => {
            return s3_error(
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                "The specified key does not exist.",
            );
        }
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => return CcError::server().into_response(),
    };
    let body = Body::from_stream(paced(sh.clone(), file));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

/// A file's bytes in chunks; when `slow_download_bytes_per_s` is set (read again before every
/// chunk, so a change applies to downloads under way), each chunk waits its share of a second.
fn paced(
    sh: Arc<Shared>,
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(Some((sh, file)), |state| async move {
        let (sh, mut file) = state?;
        let pace = sh.faults.lock().slow_download_bytes_per_s;
        let chunk = match pace {
            // About ten chunks a second, at least 1 KiB, at most 256 KiB.
            Some(rate) => usize::try_from(rate / 10)
                .unwrap_or(usize::MAX)
                .clamp(1024, 256 << 10),
            None => 256 << 10,
        };
        let mut buf = vec![0u8; chunk];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                if let Some(rate) = pace {
                    let wait = Duration::from_secs_f64(n as f64 / rate as f64);
                    tokio::time::sleep(wait).await;
                }
                Some((Ok(Bytes::from(buf)), Some((sh, file))))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}
