//! `slowgate run`: load and attach the program, apply the config, keep the maps tidy, and log
//! sampled drops. Stopping the daemon leaves the pinned program enforcing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

mod fleet;
mod policy;

/// Where the daemon's main task sends requests to the learning loop.
type LearningTx =
    std::sync::mpsc::SyncSender<(learn::Request, tokio::sync::oneshot::Sender<learn::Reply>)>;

use fleet::{FleetApplied, fleet_change, next_fleet_change};

use anyhow::Context;
use sg_common::Attachment;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::Config,
    control,
    enforcer::{self, Decision, Enforcer, Maps, Outcome},
    learn, sources,
    tail::Start,
};

/// Lines waiting for the engine at most; a reader waits when it is full (the log keeps them).
const LINE_QUEUE: usize = 65_536;

/// How long the daemon waits for its log readers to stop.
const READER_JOIN: Duration = Duration::from_secs(5);

/// How often the drop-event ring buffer is drained.
const EVENT_POLL: Duration = Duration::from_millis(200);

/// The learning loop is stalled when its heartbeat is older than this: the daemon stops
/// pinging the watchdog and exits, so that its supervisor restarts it.
const STALLED_AFTER: Duration = Duration::from_secs(30);

/// A panic in any thread or task ends the whole process with a non-zero status, so the
/// supervisor restarts it; a daemon that keeps running without learning protects nobody.
/// The pinned program keeps enforcing meanwhile.
/// The panic is said in one line, without the default hook's backtrace: resolving one in a
/// large binary can take seconds (with RUST_BACKTRACE set), while the daemon should be gone.
fn exit_on_any_panic() {
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("a worker panicked ({info}); exiting so that the supervisor restarts us");
        std::process::exit(70);
    }));
}

pub fn run(config: &Config) -> anyhow::Result<()> {
    exit_on_any_panic();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(run_async(config))
}

/// Attaches the program again to every configured interface whose pinned link lost it (the
/// interface was deleted and made again, as a VPN, a bond or a container restart does).
fn reattach_lost(
    ebpf: &mut enforcer::Ebpf,
    config: &Config,
    missing: &mut std::collections::BTreeSet<String>,
) {
    for iface in &config.interfaces {
        if enforcer::link_is_live(&config.pin_dir, iface) {
            missing.remove(iface);
            continue;
        }
        match enforcer::attach(ebpf, iface, config.attach_mode, &config.pin_dir) {
            Ok(_) => {
                tracing::info!("{iface}: protecting again");
                missing.remove(iface);
            }
            Err(e) => {
                if missing.insert(iface.clone()) {
                    tracing::warn!(
                        "{iface}: not protected: {e:#}; attaching again when it is back"
                    );
                }
            }
        }
    }
}

/// Takes the exclusive lock at `path` (created if needed) for the life of the process, or
/// says which process holds it. A second `slowgate run` stops here, before it touches the
/// pins, the state directory or the control socket of the first.
fn lock(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open the lock {}", path.display()))?;
    if !try_lock(&file) {
        let holder = std::fs::read_to_string(path).unwrap_or_default();
        anyhow::bail!(
            "another slowgate run (pid {}) holds {}: stop it first",
            holder.trim(),
            path.display()
        );
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// The same for a directory (the pins' directory on bpffs holds no other files).
fn lock_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let file = std::fs::File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    if !try_lock(&file) {
        anyhow::bail!(
            "another slowgate run uses the pins under {}: stop it first",
            dir.display()
        );
    }
    Ok(file)
}

/// An exclusive `flock` on `file`, without waiting; false when another process holds it.
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

async fn run_async(config: &Config) -> anyhow::Result<()> {
    // One daemon per state directory and per control socket.
    let _state_lock = lock(&config.state_dir.join("slowgate.lock"))?;
    let _socket_lock = lock(&config.control_socket.with_extension("lock"))?;
    let pin_dir = &config.pin_dir;
    enforcer::ensure_bpffs(pin_dir)?;
    std::fs::create_dir_all(pin_dir).with_context(|| format!("create {}", pin_dir.display()))?;
    // And one per pin directory (flock works on the bpffs directory itself).
    let _pins_lock = lock_dir(pin_dir)?;

    let mut ebpf = enforcer::load(&config.capacity, Some(pin_dir))?;
    let mut maps = Maps::from_ebpf(&mut ebpf)?;
    let mut events = enforcer::drop_events(&mut ebpf)?;
    let tick_ns = enforcer::tick_ns(&mut ebpf)?;
    let mut boot_offset = enforcer::boot_offset_ns(&mut ebpf, tick_ns)?;
    maps.write_config(&config.kernel_config(), tick_ns, boot_offset)?;
    maps.write_ports(&config.ports)?;

    let previous = maps.attachments().unwrap_or_default();
    let mut attached = Vec::new();
    for iface in &config.interfaces {
        let ifindex = enforcer::ifindex(iface)?;
        let mode = match enforcer::attach(&mut ebpf, iface, config.attach_mode, pin_dir)? {
            Some(mode) => mode,
            None => {
                tracing::info!("{iface}: re-using the program already attached");
                previous
                    .iter()
                    .find(|a| a.ifindex == ifindex)
                    .map_or(sg_common::mode::NONE, |a| a.mode)
            }
        };
        let mut name = [0u8; 16];
        name[..iface.len()].copy_from_slice(iface.as_bytes());
        attached.push(Attachment {
            ifindex,
            mode,
            name,
        });
        tracing::info!(
            "protecting {iface} ({} XDP)",
            sg_common::mode::NAMES[mode as usize]
        );
    }
    maps.record_attachments(&attached)?;
    // The program's diagnostics (`[log] kernel`), read whether or not they are on: the
    // program writes none until the flag is set, and a reload can set it.
    enforcer::forward_kernel_log(pin_dir, &config.interfaces);
    // The concurrent caps' connection counter, pinned like the XDP links.
    match &config.concurrent {
        Some(caps) => {
            match enforcer::attach_counting(&mut ebpf, pin_dir, caps.cgroup.as_deref())? {
                Some(dir) => tracing::info!(
                    "counting established connections for the concurrent caps (cgroup {})",
                    dir.display()
                ),
                None => tracing::info!("re-using the connection counter already attached"),
            }
        }
        None => {
            if enforcer::detach_counting(pin_dir)? {
                tracing::info!("no concurrent caps: the connection counter is removed");
            }
        }
    }
    // The one writer of lists and limits from here on: it takes the operators' entries now,
    // then moves into the learning loop, where every later decision goes.
    let mut enforcer = Enforcer::new(config.limit_ttl);
    apply_lists(&mut maps, &mut enforcer, config)?;
    apply_stored_lists(&mut maps, &mut enforcer, config);
    // The learning loop: sources -> parsers -> engine -> limits, in threads of their own.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::sync_channel(LINE_QUEUE);
    // Sources resume where the saved points stopped: lines written while the daemon was down
    // are learned from too, none twice.
    let read = crate::store::Store::open(&config.state_dir)
        .and_then(|store| store.load_read())
        .unwrap_or_else(|e| {
            tracing::warn!("{e:#}; reading the logs from their end");
            Default::default()
        });
    // Fleet mode: a task of its own talks to Redis; what it reads wakes the learning loop.
    let (fleet_learning, fleet, mut fleet_lists, fleet_spent) = match config.fleet.clone() {
        Some(settings) => {
            tracing::info!(
                "fleet: {} as {} (working alone until it answers)",
                settings.shown(),
                settings.name
            );
            let wake = tx.clone();
            let started = crate::fleet::start(settings, move || {
                let _ = wake.try_send(sources::Reading::Wake);
            });
            (
                Some(started.learning),
                Some(started.fleet),
                Some(started.lists),
                Some(started.spent),
            )
        }
        None => (None, None, None, None),
    };
    let policy_events = tx.clone();
    let readers = sources::spawn(
        &config.sources,
        Start::End,
        &read,
        config.catch_up,
        tx,
        stop.clone(),
    );
    let stats = learn::SharedStats::default();
    let (learning_tx, learning_rx) = std::sync::mpsc::sync_channel(64);
    // Reputation feeds, fetched on a thread of their own; their sets go to the learning loop.
    let (feeds, feed_control) = match config.feeds.is_empty() {
        true => (None, None),
        false => {
            // In a fleet one host fetches each feed and the others take its copy.
            let share = match &config.fleet {
                Some(settings) => match crate::fleet::FeedStore::new(settings) {
                    Ok(store) => Some(Box::new(store) as Box<dyn crate::feeds::share::Share>),
                    Err(e) => {
                        tracing::warn!("feeds: {e:#}; each feed fetched here");
                        None
                    }
                },
                None => None,
            };
            let (feeds, control) =
                crate::feeds::Feeds::start(config.feeds.clone(), config.state_dir.clone(), share)
                    .context("start the feeds thread")?;
            (Some(feeds), Some(control))
        }
    };
    // The policy service (Postfix, milter, Dovecot), answering from memory and the kernel's
    // maps; its events go to the learning loop, which tells it the users' levels.
    let policy = match config.policy.clone() {
        Some(settings) => {
            let levels = Arc::new(crate::policy::UserLevels::default());
            let events = policy_events.clone();
            let report = Box::new(move |event| {
                if events.try_send(sources::Reading::Event(event)).is_err() {
                    crate::policy::EVENTS_DROPPED
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let maps = Arc::new(Maps::open_pinned(pin_dir)?);
            let shared = fleet.clone().zip(fleet_spent);
            let service = policy::start(settings, maps, levels.clone(), report, shared).await?;
            Some(learn::PolicyLink {
                levels,
                inspect: service,
            })
        }
        None => None,
    };
    drop(policy_events);
    let learning = {
        let (config, stop, stats) = (config.clone(), stop.clone(), stats.clone());
        let learning_maps = Maps::open_pinned(pin_dir)?;
        std::thread::spawn(move || {
            learn::run(
                &config,
                learning_maps,
                enforcer,
                learn::Inputs {
                    lines: rx,
                    requests: learning_rx,
                    feeds,
                    fleet: fleet_learning,
                    policy,
                },
                stop,
                stats,
            )
        })
    };
    let (ops_tx, mut ops_rx) = tokio::sync::mpsc::channel(16);
    let group = config
        .control_group
        .as_deref()
        .map(control::group_id)
        .transpose()?;
    let listener = control::bind(&config.control_socket, group)?;
    let handles = Arc::new(control::Handles {
        learning: learning_tx.clone(),
        ops: ops_tx,
        engine: config.engine.clone(),
        group,
        feeds: feed_control,
    });
    tokio::spawn(control::serve(listener, handles));
    tracing::info!("control socket {}", config.control_socket.display());
    if let Some(addr) = config.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen for metrics on {addr} (key `metrics.listen`)"))?;
        let metrics_maps = std::sync::Arc::new(Maps::open_pinned(pin_dir)?);
        tokio::spawn(serve_metrics(listener, metrics_maps, stats.clone()));
        tracing::info!("metrics on http://{addr}/metrics");
    }
    tracing::info!("learning from {} source(s)", config.sources.len());
    tracing::info!(
        "ready; {} allow, {} deny, {} limit entries from {}; pins under {}",
        config.allow.len(),
        config.deny.len(),
        config.limits.len(),
        config.path.display(),
        pin_dir.display()
    );

    notify("READY=1");
    // Every second at least, so that a stalled or ended learning loop is noticed soon.
    let mut watchdog = tokio::time::interval(watchdog_interval().min(Duration::from_secs(1)));

    let mut current = config.clone();
    let mut fleet_applied = FleetApplied::new();
    // Interfaces found gone, so that it is said once, not every second.
    let mut missing = std::collections::BTreeSet::new();
    let mut hangup = signal(SignalKind::hangup()).context("handle SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handle SIGINT")?;
    let mut sweep = tokio::time::interval(config.sweep_interval);
    let mut poll = tokio::time::interval(EVENT_POLL);
    // Drops are reported in aggregate, a few lines a minute, however many there are.
    let mut drop_log =
        crate::drops::DropLog::new(config.drop_event_sample, std::time::Instant::now());
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = sweep.tick() => {
                // (The learning loop's enforcer sweeps expired entries.)
                // Keep the program's boot clock in step (a suspend moves CLOCK_BOOTTIME).
                if let Ok(offset) = enforcer::boot_offset_ns(&mut ebpf, tick_ns)
                    && offset.abs_diff(boot_offset) > 2 * tick_ns
                {
                    boot_offset = offset;
                    if let Err(e) = maps.write_config(&current.kernel_config(), tick_ns, offset) {
                        tracing::warn!("updating the program's clock failed: {e:#}");
                    }
                }
            }
            _ = watchdog.tick() => {
                let heartbeat = stats.lock().map_or(0, |s| s.heartbeat_ns);
                let age = crate::domain::boot_time_ns().saturating_sub(heartbeat);
                if learning.is_finished() {
                    anyhow::bail!("the learning loop ended; exiting so that the supervisor restarts us");
                }
                if heartbeat != 0 && age > STALLED_AFTER.as_nanos() as u64 {
                    anyhow::bail!(
                        "the learning loop made no progress for {} s; exiting so that the supervisor restarts us",
                        age / 1_000_000_000
                    );
                }
                reattach_lost(&mut ebpf, &current, &mut missing);
                notify("WATCHDOG=1");
            }
            Some(change) = next_fleet_change(&mut fleet_lists) => {
                fleet_change(&current, &maps, &learning_tx, &mut fleet_applied, change).await;
            }
            _ = hangup.recv() => {
                let _ = reload(&mut current, &mut maps, (tick_ns, boot_offset), &learning_tx).await;
            }
            Some((op, reply)) = ops_rx.recv() => {
                let answer = match op {
                    control::Op::Reload => reload(&mut current, &mut maps, (tick_ns, boot_offset), &learning_tx).await,
                    control::Op::Lists(change) => {
                        let answer = operator_change(&current, &maps, &learning_tx, change.clone()).await;
                        // Made here: every host of the fleet makes it too.
                        if let (Ok(_), Some(fleet)) = (&answer, &fleet) {
                            fleet.list(change);
                        }
                        answer
                    }
                    control::Op::Import(import) => operator_import(&current, &learning_tx, import).await,
                    control::Op::Rows(list) => crate::store::Store::open(&current.state_dir)
                        .and_then(|store| crate::lists::rows(&maps, &store, &list))
                        .map_err(|e| format!("{e:#}"))
                        .and_then(|rows| control::protocol::reply(&rows)),
                };
                let _ = reply.send(answer);
            }
            _ = poll.tick() => {
                while let Some(item) = events.next() {
                    if let Some(e) = enforcer::parse_drop_event(&item) {
                        drop_log.record(&e);
                    }
                }
                for line in drop_log.due(std::time::Instant::now()) {
                    tracing::info!("{}", line.strip_prefix("slowgate: ").unwrap_or(&line));
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    if learning.join().is_err() {
        anyhow::bail!("the learning loop panicked");
    }
    // The readers see `stop` within their poll interval (a file's inotify wait, journalctl's
    // output wait), and a send to the learning loop, now gone, fails at once: join them, for
    // READER_JOIN at most so that a stuck one cannot hold the exit.
    let deadline = std::time::Instant::now() + READER_JOIN;
    while readers.iter().any(|r| !r.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for reader in readers {
        if !reader.is_finished() {
            tracing::warn!("a log reader did not stop in {} s", READER_JOIN.as_secs());
        } else if reader.join().is_err() {
            anyhow::bail!("a log reader panicked");
        }
    }
    tracing::info!("stopping; the pinned program keeps enforcing (`slowgate detach` removes it)");
    Ok(())
}

/// Re-reads the config file. A bad one is refused with the reason and the running config stays;
/// a good one is applied to the kernel (ceilings, ports, lists) and to the engine (weights,
/// levels, half-life: every sender keeps its points). Interfaces, pins, capacities, sources,
/// feeds, DNSBL zones, the fleet and switching the concurrent caps on or off need a restart,
/// and the answer says so.
async fn reload(
    current: &mut Config,
    maps: &mut Maps,
    clock: (u64, u64),
    learning: &LearningTx,
) -> learn::Reply {
    notify("RELOADING=1");
    let result = async {
        let new = Config::load(&current.path).map_err(|e| format!("{e:#}"))?;
        let mut restart = Vec::new();
        if new.interfaces != current.interfaces || new.attach_mode != current.attach_mode {
            restart.push("interfaces");
        }
        if new.capacity != current.capacity || new.pin_dir != current.pin_dir {
            restart.push("capacity and pins");
        }
        if new.sources != current.sources {
            restart.push("sources");
        }
        if new.metrics != current.metrics || new.control_socket != current.control_socket {
            restart.push("metrics and control addresses");
        }
        if new.feeds != current.feeds || new.dnsbl != current.dnsbl {
            restart.push("feeds and DNSBL zones");
        }
        if new.fleet != current.fleet {
            restart.push("fleet");
        }
        let counting = |c: &Config| c.concurrent.as_ref().map(|c| c.cgroup.clone());
        if counting(&new) != counting(current) {
            restart.push("concurrent caps on or off, or their cgroup");
        }
        // The pin directory may come from the command line (`run --pin-dir`): it stays.
        let new = Config {
            pin_dir: current.pin_dir.clone(),
            ..new
        };
        maps.write_config(&new.kernel_config(), clock.0, clock.1)
            .map_err(|e| format!("{e:#}"))?;
        crate::logging::configure(new.log_filter.as_deref()).map_err(|e| format!("{e:#}"))?;
        maps.write_ports(&new.ports).map_err(|e| format!("{e:#}"))?;
        // The learning loop's enforcer writes the new config's lists.
        control::ask_learning_loop(learning, learn::Request::Reload(Box::new(new.clone()))).await?;
        *current = new;
        control::protocol::reply(&control::protocol::Reloaded {
            reloaded: current.path.display().to_string(),
            needs_restart: restart.iter().map(|s| s.to_string()).collect(),
        })
    }
    .await;
    match &result {
        Ok(v) => tracing::info!(
            "reloaded {} ({})",
            current.path.display(),
            v["needs_restart"]
        ),
        Err(e) => tracing::warn!("reload refused, the running config stays: {e}"),
    }
    notify("READY=1");
    result
}

/// Tells systemd (Type=notify) about the daemon's state, when it runs under systemd: one
/// datagram to $NOTIFY_SOCKET (sd_notify(3)). Elsewhere it does nothing.
fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}

/// Half of systemd's WatchdogSec ($WATCHDOG_USEC), or a minute when there is none.
fn watchdog_interval() -> Duration {
    std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(60), |us| Duration::from_micros(us / 2))
        .max(Duration::from_millis(100))
}

/// Answers `GET /metrics` (anything else: 404). One short request per connection.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    maps: Arc<Maps>,
    stats: learn::SharedStats,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A scraper needs one connection; anyone on the host may connect, so connections are
    // capped (an excess one is closed at once), slow ones time out, and the page is rendered
    // at most once a second, whatever the scrape rate.
    let permits = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    let page = Arc::new(tokio::sync::Mutex::new(crate::metrics::Page::default()));
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait instead of spinning.
                tracing::warn!("metrics: accept failed: {e}; pausing 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (maps, stats, page) = (maps.clone(), stats.clone(), page.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; 2048];
            let read = tokio::time::timeout(METRICS_READ_TIMEOUT, stream.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let response = if request.starts_with("GET /metrics ") {
                let body = page.lock().await.get(&maps, &stats);
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
            };
            let _ =
                tokio::time::timeout(METRICS_READ_TIMEOUT, stream.write_all(response.as_bytes()))
                    .await;
        });
    }
}

/// Metrics connections served at once; more are closed at once.
const METRICS_CONNECTIONS: usize = 8;
/// A metrics client that sends no request (or reads no answer) in this time is dropped.
const METRICS_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Puts back what operators added with the CLI, from the store (after a reboot the pinned maps
/// are gone; after a restart this re-writes what is already there). Expired entries stay out.
fn apply_stored_lists(maps: &mut Maps, enforcer: &mut Enforcer, config: &Config) {
    let entries = match crate::store::Store::open(&config.state_dir).and_then(|s| s.list_entries())
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("cannot read CLI-added entries: {e:#}");
            return;
        }
    };
    let mut decisions = Vec::new();
    for op in &entries {
        match crate::lists::Change::from_op(op) {
            Ok(change) => decisions.push((op, Decision::Operator(change))),
            Err(e) => tracing::warn!("stored {} entry {}: {e:#}", op.list, op.network),
        }
    }
    let (ops, decisions): (Vec<_>, Vec<_>) = decisions.into_iter().unzip();
    let mut restored = 0;
    for (op, outcome) in ops.iter().zip(enforcer.apply(maps, &decisions)) {
        match outcome {
            Outcome::Failed(e) => {
                tracing::warn!("stored {} entry {}: {e:#}", op.list, op.network)
            }
            _ => restored += 1,
        }
    }
    if restored > 0 {
        tracing::info!("restored {restored} entries added with the CLI");
    }
}

/// An operator's change from the control socket: journaled here, made by the learning loop's
/// enforcer (the one writer of lists and limits).
async fn operator_change(
    current: &Config,
    maps: &Maps,
    learning: &LearningTx,
    change: crate::lists::Change,
) -> Result<serde_json::Value, String> {
    crate::store::Store::open(&current.state_dir)
        .and_then(|store| crate::lists::journal(maps, &store, &change))
        .map_err(|e| format!("{e:#}"))?;
    let answer = control::ask_learning_loop(learning, learn::Request::Operator(change)).await?;
    if let Some(said) = answer["said"].as_str() {
        tracing::info!("control: {said}");
    }
    Ok(answer)
}

/// Journals an operator's import, then has the learning loop's enforcer make it.
async fn operator_import(
    current: &Config,
    learning: &LearningTx,
    import: crate::lists::Import,
) -> Result<serde_json::Value, String> {
    crate::store::Store::open(&current.state_dir)
        .and_then(|store| crate::lists::journal_import(&store, &import))
        .map_err(|e| format!("{e:#}"))?;
    let answer = control::ask_learning_loop(learning, learn::Request::Import(import)).await?;
    if let Some(said) = answer["said"].as_str() {
        tracing::info!("control: {said}");
    }
    Ok(answer)
}

/// Puts the config's lists into the kernel. Entries added with the CLI stay.
fn apply_lists(maps: &mut Maps, enforcer: &mut Enforcer, config: &Config) -> anyhow::Result<()> {
    let outcomes = enforcer.apply(maps, &learn::config_lists(config));
    for outcome in outcomes {
        if let Outcome::Failed(e) = outcome {
            return Err(e.context(format!("{}: `[lists]`", config.path.display())));
        }
    }
    Ok(())
}
