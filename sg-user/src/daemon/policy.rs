//! The Postfix policy service's listener (`[policy] listen`): one task per connection, each
//! request answered from memory (the buckets, and the kernel's limit of the client address)
//! and never waiting on disk or Redis. A malformed request, or a connection silent for
//! `idle`, gets no verdict and a closed connection; everybody else is served on. Postfix falls
//! back to `default_action=DUNNO` when we are gone (fail-open at the MTA).

use std::{sync::Arc, time::Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::{
    enforcer::Maps,
    policy::{
        Listen, MALFORMED, Settings, answered,
        postfix::{self, MAX_LINE},
        quota::{Quotas, Verdict},
    },
};

/// Connections served at once, at most (Postfix opens one per smtpd process).
const MAX_CONNECTIONS: usize = 1024;

/// Binds and serves until the daemon stops.
pub(super) async fn serve(settings: Settings, maps: Arc<Maps>) -> anyhow::Result<()> {
    use anyhow::Context;
    let quotas = Arc::new(std::sync::Mutex::new(Quotas::new(settings.quotas.clone())));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let start = Instant::now();
    macro_rules! accept_loop {
        ($listener:expr) => {
            loop {
                let (stream, _) = match $listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("policy: accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // too many at once: closed, Postfix's default action applies
                };
                let (quotas, maps, idle) = (quotas.clone(), maps.clone(), settings.idle);
                tokio::spawn(async move {
                    connection(stream, &quotas, &maps, idle, start).await;
                    drop(slot);
                });
            }
        };
    }
    match &settings.listen {
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("policy: listen on {}", path.display()))?;
            // Postfix's smtpd (user postfix) connects; the directory is what protects it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
            tracing::info!("policy service on unix:{}", path.display());
            accept_loop!(listener)
        }
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("policy: listen on {addr}"))?;
            tracing::info!("policy service on {addr}");
            accept_loop!(listener)
        }
    }
}

/// One connection: requests answered in turn until it closes, errs, idles or misbehaves.
async fn connection(
    stream: impl AsyncRead + AsyncWrite + Unpin,
    quotas: &std::sync::Mutex<Quotas>,
    maps: &Maps,
    idle: std::time::Duration,
    start: Instant,
) {
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    loop {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        // One request: lines up to the empty one, each bounded, the whole within `idle`.
        let read = tokio::time::timeout(idle, async {
            loop {
                let mut line = Vec::new();
                let n = (&mut reader)
                    .take(MAX_LINE as u64 + 2)
                    .read_until(b'\n', &mut line)
                    .await?;
                if n == 0 {
                    return Ok::<bool, std::io::Error>(false);
                }
                if line.last() != Some(&b'\n') {
                    return Err(std::io::Error::other("a line too long"));
                }
                line.pop();
                let end = line.is_empty() || line == b"\r";
                lines.push(line);
                if end || lines.len() > postfix::MAX_ATTRIBUTES + 1 {
                    return Ok(true);
                }
            }
        })
        .await;
        match read {
            Ok(Ok(true)) => {}
            // Closed, or silent, between requests: nothing more to say.
            Ok(Ok(false)) | Err(_) if lines.is_empty() => return,
            _ => {
                MALFORMED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        }
        let began = Instant::now();
        let request = match postfix::parse(lines.iter().map(Vec::as_slice)) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                MALFORMED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!("policy: a malformed request ({e}); connection closed");
                return;
            }
        };
        let address_limit = request
            .client_address()
            .and_then(|a| maps.limit_for_address(a).ok().flatten());
        let now = start.elapsed().as_secs_f64();
        let (verdict, action) = {
            let mut q = quotas.lock().unwrap_or_else(|e| e.into_inner());
            let verdict = q.decide(&request, address_limit, now);
            let action = match verdict {
                Verdict::Dunno => "DUNNO".to_string(),
                Verdict::Defer(_) => q.settings().defer.clone(),
            };
            (verdict, action)
        };
        if let Verdict::Defer(why) = &verdict {
            tracing::info!(
                "policy: deferred {} from {} ({why})",
                request.user().unwrap_or_else(|| "-".into()),
                request.get("client_address").unwrap_or("-")
            );
        }
        answered(
            matches!(verdict, Verdict::Defer(_)),
            began.elapsed().as_nanos() as u64,
        );
        if write
            .write_all(postfix::answer(&action).as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}
