//! The policy service's listeners: Postfix's policy protocol and the milter (unix or TCP), and
//! Dovecot's authentication policy (HTTP). Each connection is a task; each question is answered
//! from memory (the buckets, the users' levels, the kernel's limit of the client address) and
//! never waits on disk or Redis. A malformed request, or a connection silent for `idle`, gets
//! no verdict and a closed connection; everybody else is served on. When we are gone, the MTA
//! falls back to its default action (fail-open): Postfix's `default_action=DUNNO`, the milter's
//! `milter_default_action = accept`, Dovecot's `auth_policy_reject_on_fail = no`.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    convert::Infallible,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode, body::Bytes, body::Incoming};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::{
    domain::Limit,
    enforcer::Maps,
    events::{Event, EventKind},
    fleet::{Fleet, Spent},
    policy::{
        self, Decide, Inspect, Listen, Settings, UserLevels, answered,
        dovecot::{self, Answer, Command, Logins},
        milter,
        postfix::{self, MAX_LINE},
        quota::{Ask, Quotas, Standing, UserBuckets, Verdict},
    },
};

/// Connections served at once per front end, at most (Postfix opens one per smtpd process).
const MAX_CONNECTIONS: usize = 1024;
/// A milter connection lasts one SMTP session; none lasts longer than this.
const MAX_SESSION: Duration = Duration::from_secs(3600);
/// Users' deferred messages remembered as reported (one event per message, not per RCPT).
const REPORTED: usize = 10_000;

/// What every front end asks: the buckets, the users' levels, the kernel's maps.
pub(super) struct Service {
    quotas: Mutex<Quotas>,
    logins: Option<Mutex<Logins>>,
    maps: Arc<Maps>,
    levels: Arc<UserLevels>,
    /// Events for the learning loop (a user's deferrals, Dovecot's reports); never waits.
    report: Box<dyn Fn(Event) + Send + Sync>,
    reported: Mutex<(HashSet<String>, VecDeque<String>)>,
    /// The kernel's limit of each address asked about lately, and when it was read: a
    /// session's questions (and a busy relay's sessions) cost the map lookups once a second.
    /// Forgotten whenever the maps' GENERATION moves (every written change bumps it), read at
    /// most every [`GENERATION_EVERY`]: a new limit is seen within that.
    limits: Mutex<Limits>,
    start: Instant,
}

/// The kernel's limits read lately: per address (when read, the limit), when GENERATION was
/// last read, and its value then.
#[derive(Default)]
struct Limits {
    of: HashMap<IpAddr, (f64, Option<Limit>)>,
    checked: f64,
    generation: u32,
}

/// How often the maps' GENERATION is read, in seconds.
const GENERATION_EVERY: f64 = 0.01;

/// How long a kernel limit read for an address is used again, in seconds.
const LIMIT_FRESH: f64 = 1.0;
/// Addresses whose limit is kept, at most (the table is emptied when full).
const LIMITS_KEPT: usize = 65_536;

impl Service {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn address_limit(&self, address: IpAddr) -> Option<Limit> {
        let now = self.now();
        {
            let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
            if now - limits.checked >= GENERATION_EVERY {
                limits.checked = now;
                if let Ok(g) = self.maps.generation()
                    && g != limits.generation
                {
                    limits.generation = g;
                    limits.of.clear();
                }
            }
            if let Some((at, limit)) = limits.of.get(&address)
                && now - at < LIMIT_FRESH
            {
                return *limit;
            }
        }
        let limit = self.maps.limit_for_address(address).ok().flatten();
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        if limits.of.len() >= LIMITS_KEPT {
            limits.of.clear();
        }
        limits.of.insert(address, (now, limit));
        limit
    }

    /// Whether the deferral of `message` is the first (the event is sent once per message).
    fn first_deferral(&self, message: Option<&str>) -> bool {
        let Some(m) = message else { return true };
        let mut r = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        if r.0.contains(m) {
            return false;
        }
        if r.1.len() >= REPORTED
            && let Some(old) = r.1.pop_front()
        {
            r.0.remove(&old);
        }
        r.0.insert(m.to_string());
        r.1.push_back(m.to_string());
        true
    }
}

impl Decide for Service {
    fn decide(&self, front: &'static str, ask: &Ask) -> Option<String> {
        let began = Instant::now();
        let (user_level, user_blocked) = ask.user.map_or((0, false), |u| self.levels.get(u));
        let standing = Standing {
            address: ask.client.and_then(|a| self.address_limit(a)),
            user_level,
            user_blocked,
        };
        let now = self.now();
        let (verdict, reply) = {
            let mut q = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
            let verdict = q.decide(ask, standing, now);
            (verdict, q.reply(verdict).map(str::to_string))
        };
        let ns = began.elapsed().as_nanos() as u64;
        let (name, reason) = match verdict {
            Verdict::Dunno => {
                answered(front, "dunno", "", ns);
                return None;
            }
            Verdict::Defer(r) => ("defer", r),
            Verdict::Reject(r) => ("reject", r),
        };
        answered(front, name, reason.name(), ns);
        let client = ask.client.map_or("-".into(), |a| a.to_string());
        tracing::info!(
            front,
            user = ask.user.unwrap_or("-"),
            client,
            reason = reason.name(),
            "policy: {name} {} from {client} ({})",
            ask.user.unwrap_or("-"),
            reason.name()
        );
        if reason.is_the_users()
            && let Some(source) = ask.client
            && self.first_deferral(ask.message)
        {
            (self.report)(Event::new(EventKind::PolicyDeferred, source).with_user(ask.user));
        }
        reply
    }
}

impl Inspect for Service {
    fn buckets(&self, user: &str) -> UserBuckets {
        let (level, _) = self.levels.get(user);
        let q = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        q.buckets_of(user, level, self.now())
    }
}

/// Binds every front end `settings` asks for (an error stops the daemon's start) and serves
/// them in tasks of their own.
pub(super) async fn start(
    settings: Settings,
    maps: Arc<Maps>,
    levels: Arc<UserLevels>,
    report: Box<dyn Fn(Event) + Send + Sync>,
    fleet: Option<(Fleet, tokio::sync::mpsc::Receiver<Spent>)>,
) -> anyhow::Result<Arc<Service>> {
    let max_keys = settings.quotas.max_keys;
    let service = Arc::new(Service {
        quotas: Mutex::new(Quotas::new(settings.quotas.clone())),
        logins: settings
            .dovecot
            .clone()
            .map(|d| Mutex::new(Logins::new(d, max_keys))),
        maps,
        levels,
        report,
        reported: Default::default(),
        limits: Default::default(),
        start: Instant::now(),
    });
    if let Some((fleet, spent)) = fleet {
        tokio::spawn(share_buckets(service.clone(), fleet, spent));
    }
    let idle = settings.idle;
    if let Some(listen) = &settings.listen {
        let listener = Listener::bind(listen, "policy.listen").await?;
        tracing::info!("Postfix policy service on {}", listener.name);
        let service = service.clone();
        tokio::spawn(listener.serve(move |stream| {
            let service = service.clone();
            async move { postfix_connection(stream, &service, idle).await }
        }));
    }
    if let Some(listen) = &settings.milter {
        let listener = Listener::bind(listen, "policy.milter").await?;
        tracing::info!("milter on {}", listener.name);
        let service = service.clone();
        let sessions = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(listener.serve(move |stream| {
            let id = sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let decide: Arc<dyn Decide> = service.clone();
            async move { milter_connection(stream, decide, id).await }
        }));
    }
    if let Some(d) = &settings.dovecot {
        let listener = tokio::net::TcpListener::bind(d.listen)
            .await
            .with_context(|| format!("policy.dovecot: listen on {}", d.listen))?;
        tracing::info!("Dovecot authentication policy on http://{}", d.listen);
        let listener = Listener {
            name: d.listen.to_string(),
            inner: Inner::Tcp(listener),
        };
        let service = service.clone();
        tokio::spawn(listener.serve(move |stream| {
            let service = service.clone();
            async move { dovecot_connection(stream, service, idle).await }
        }));
    }
    Ok(service)
}

/// How often the tokens taken here are told to the fleet.
const SHARE_EVERY: Duration = Duration::from_millis(200);

/// In a fleet, users' buckets are fleet-wide: what this host takes is published (through the
/// fleet's link task, which never makes anyone wait), and what other hosts took is taken here.
async fn share_buckets(
    service: Arc<Service>,
    fleet: Fleet,
    mut spent: tokio::sync::mpsc::Receiver<Spent>,
) {
    let mut tick = tokio::time::interval(SHARE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let taken = service
                    .quotas
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take_spent();
                for (user, messages, recipients) in taken {
                    fleet.spent(Spent { user, messages, recipients });
                }
            }
            s = spent.recv() => {
                let Some(s) = s else { return };
                let (level, _) = service.levels.get(&s.user);
                let now = service.now();
                service
                    .quotas
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .spent_elsewhere(&s.user, s.messages, s.recipients, level, now);
            }
        }
    }
}

/// A stream of either kind of listener.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

enum Inner {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

struct Listener {
    name: String,
    inner: Inner,
}

impl Listener {
    async fn bind(listen: &Listen, key: &str) -> anyhow::Result<Listener> {
        Ok(match listen {
            Listen::Unix(path) => {
                // A socket left by an earlier run goes; anything else at the path is an error.
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    let _ = std::fs::remove_file(path);
                }
                let listener = tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("{key}: listen on {}", path.display()))?;
                // The MTA (user postfix, smmsp) connects; the directory is what protects it.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
                Listener {
                    name: format!("unix:{}", path.display()),
                    inner: Inner::Unix(listener),
                }
            }
            Listen::Tcp(addr) => Listener {
                name: addr.to_string(),
                inner: Inner::Tcp(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("{key}: listen on {addr}"))?,
                ),
            },
        })
    }

    async fn accept(&self) -> std::io::Result<Box<dyn Io>> {
        Ok(match &self.inner {
            Inner::Unix(l) => Box::new(l.accept().await?.0),
            Inner::Tcp(l) => Box::new(l.accept().await?.0),
        })
    }

    /// Accepts until the daemon stops, each connection in a task, at most
    /// [`MAX_CONNECTIONS`] at once (more are closed: the MTA's default action applies).
    async fn serve<F, Fut>(self, mut connection: F)
    where
        F: FnMut(Box<dyn Io>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match self.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("{}: accept: {e}", self.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let task = connection(stream);
            tokio::spawn(async move {
                task.await;
                drop(slot);
            });
        }
    }
}

/// One Postfix policy connection: requests answered in turn until it closes, errs, idles or
/// misbehaves.
async fn postfix_connection(stream: Box<dyn Io>, service: &Service, idle: Duration) {
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
                policy::malformed(postfix::FRONT);
                return;
            }
        }
        let request = match postfix::parse(lines.iter().map(Vec::as_slice)) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                policy::malformed(postfix::FRONT);
                tracing::debug!("policy: a malformed request ({e}); connection closed");
                return;
            }
        };
        let user = request.user();
        let action = service
            .decide(postfix::FRONT, &request.ask(user.as_deref()))
            .unwrap_or_else(|| "DUNNO".into());
        if write
            .write_all(postfix::answer(&action).as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// One milter connection (one SMTP session), bounded in time and in frame size.
async fn milter_connection(stream: Box<dyn Io>, decide: Arc<dyn Decide>, id: u64) {
    use tokio_util::compat::TokioAsyncReadCompatExt;
    let mut session = milter::Session::new(decide, id);
    let mut server = miltr_server::Server::new(&mut session, false, milter::MAX_FRAME);
    match tokio::time::timeout(MAX_SESSION, server.handle_connection(stream.compat())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            policy::malformed(milter::FRONT);
            tracing::debug!("milter: connection closed: {e}");
        }
        Err(_) => tracing::debug!("milter: a session longer than {MAX_SESSION:?} closed"),
    }
}

/// One HTTP connection from Dovecot (keep-alive: many requests).
async fn dovecot_connection(stream: Box<dyn Io>, service: Arc<Service>, idle: Duration) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let handle = hyper::service::service_fn(move |req| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(dovecot_request(req, &service).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle.min(Duration::from_secs(30)))
        .max_buf_size(dovecot::MAX_BODY.max(8192))
        .serve_connection(TokioIo::new(stream), handle);
    let _ = tokio::time::timeout(MAX_SESSION, connection).await;
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// One request from Dovecot: checked (method, API header, command, body), then answered.
async fn dovecot_request(req: Request<Incoming>, service: &Service) -> Response<Full<Bytes>> {
    let refuse = |status: StatusCode, why: &str| {
        policy::malformed(dovecot::FRONT);
        tracing::debug!("dovecot policy: {why}");
        respond(status, serde_json::json!({ "error": why }).to_string())
    };
    let Some(logins) = &service.logins else {
        return refuse(StatusCode::NOT_FOUND, "not offered");
    };
    if req.method() != hyper::Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    let api_header = logins
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .settings()
        .api_header
        .clone();
    if let Some((name, value)) = &api_header
        && req.headers().get(name.as_str()).map(|v| v.as_bytes()) != Some(value.as_bytes())
    {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "the API header is missing or wrong",
        );
    }
    let Some(command) = dovecot::command(req.uri().query()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "no command=allow or command=report",
        );
    };
    let body = match Limited::new(req.into_body(), dovecot::MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "a body too large or cut"),
    };
    let began = Instant::now();
    let request = match dovecot::parse(&body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let now = service.now();
    let answer = match command {
        Command::Allow => {
            let limit = request.remote.and_then(|a| service.address_limit(a));
            logins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .check(&request, limit, now)
        }
        Command::Report => {
            let event = logins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .report(&request, now);
            if let Some(event) = event {
                (service.report)(event);
            }
            Answer::Allow
        }
    };
    let (verdict, reason) = answer.verdict();
    let verdict = if command == Command::Report {
        "report"
    } else {
        verdict
    };
    answered(
        dovecot::FRONT,
        verdict,
        reason,
        began.elapsed().as_nanos() as u64,
    );
    if !matches!(answer, Answer::Allow) {
        tracing::info!(
            "dovecot policy: {verdict} {} from {} ({reason})",
            request.login.as_deref().unwrap_or("-"),
            request.remote.map_or("-".into(), |a| a.to_string())
        );
    }
    respond(StatusCode::OK, answer.body())
}
