//! One fetch of a feed: HTTP(S) with conditional headers, or a local file by its modification
//! time. Every fetch is bounded in time (`timeout`) and size (`max_bytes`); a body cut short
//! (fewer bytes than `Content-Length`, a dropped connection) is an error, never a short copy.

use std::io::Read;

use anyhow::{Context, bail};

use super::{Feed, Origin};

/// What a fetch gave.
#[derive(Debug, PartialEq)]
pub enum Fetched {
    /// The copy held is still current (HTTP 304, or the file did not change).
    Unchanged,
    /// A new body, with the validators to send next time.
    New {
        body: String,
        etag: Option<String>,
        modified: Option<String>,
    },
}

/// Fetches `feed`, sending the validators of the copy held.
pub fn fetch(feed: &Feed, etag: Option<&str>, modified: Option<&str>) -> anyhow::Result<Fetched> {
    match &feed.origin {
        Origin::Url(url) => http(feed, url, etag, modified),
        Origin::Path(path) => file(feed, path, modified),
    }
}

fn http(
    feed: &Feed,
    url: &str,
    etag: Option<&str>,
    modified: Option<&str>,
) -> anyhow::Result<Fetched> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(feed.timeout))
        .http_status_as_error(false)
        .max_redirects(5)
        .user_agent(concat!("slowgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(etag) = etag {
        request = request.header("If-None-Match", etag);
    }
    if let Some(modified) = modified {
        request = request.header("If-Modified-Since", modified);
    }
    let mut response = request.call().with_context(|| format!("fetch {url}"))?;
    let status = response.status().as_u16();
    if status == 304 {
        return Ok(Fetched::Unchanged);
    }
    if status != 200 {
        bail!("fetch {url}: HTTP {status}");
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (etag, modified) = (header("etag"), header("last-modified"));
    let bytes = response
        .body_mut()
        .with_config()
        .limit(feed.max_bytes)
        .read_to_vec()
        .with_context(|| format!("read the body of {url} (at most {} bytes)", feed.max_bytes))?;
    let body = String::from_utf8(bytes).with_context(|| format!("{url}: the body is not text"))?;
    Ok(Fetched::New {
        body,
        etag,
        modified,
    })
}

/// A local file; its modification time (nanoseconds) stands for `Last-Modified`.
fn file(feed: &Feed, path: &std::path::Path, modified: Option<&str>) -> anyhow::Result<Fetched> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let stamp = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string());
    if stamp.is_some() && stamp.as_deref() == modified {
        return Ok(Fetched::Unchanged);
    }
    let mut body = String::new();
    file.take(feed.max_bytes + 1)
        .read_to_string(&mut body)
        .with_context(|| format!("read {}", path.display()))?;
    if body.len() as u64 > feed.max_bytes {
        bail!("{} is larger than {} bytes", path.display(), feed.max_bytes);
    }
    Ok(Fetched::New {
        body,
        etag: None,
        modified: stamp,
    })
}
