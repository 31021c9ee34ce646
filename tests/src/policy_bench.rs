//! `cargo xtask bench policy`: the Postfix policy service's requests per second and answer
//! times over 8 concurrent connections on its unix socket, against policyd-rate-limit (PyPI, a
//! per-user limiter many Postfix operators run) configured with the same limit (100 messages
//! an hour per SASL user, counted at DATA), in the same run, on the same requests.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::*;

/// Concurrent connections, as Postfix's smtpd processes would hold them.
const CONNECTIONS: usize = 8;
/// Distinct SASL users the requests cycle through.
const USERS: usize = 50_000;

/// One request as Postfix sends it at DATA.
fn request(i: usize) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state=DATA\nprotocol_name=ESMTP\n\
         client_address=203.0.113.{}\nclient_name=unknown\nhelo_name=client.example.org\n\
         sender=sender@example.org\nrecipient=\nrecipient_count=1\nqueue_id=\n\
         instance={i:x}.{:x}.1\nsize=0\nsasl_method=PLAIN\nsasl_username=user{}@example.org\n\
         sasl_sender=\nccert_subject=\nencryption_protocol=\n\n",
        i % 250 + 1,
        i / 7,
        i % USERS
    )
}

/// What one run measured: requests per second (all connections), answer times in ms.
struct Measured {
    rate: f64,
    latencies_ms: Vec<f64>,
    deferred: usize,
}

/// `total` requests over [`CONNECTIONS`] connections to `socket`, each waiting for its answer.
fn load(socket: &Path, total: usize) -> anyhow::Result<Measured> {
    let per = total / CONNECTIONS;
    let began = Instant::now();
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let socket = socket.to_path_buf();
            std::thread::spawn(move || -> anyhow::Result<(Vec<f64>, usize)> {
                let stream = UnixStream::connect(&socket)
                    .with_context(|| format!("connect to {}", socket.display()))?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut writer = stream.try_clone()?;
                let mut reader = BufReader::new(stream);
                let mut latencies = Vec::with_capacity(per);
                let mut deferred = 0;
                for n in 0..per {
                    let text = request(c * per + n);
                    let sent = Instant::now();
                    writer.write_all(text.as_bytes())?;
                    let mut answer = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line)? == 0 {
                            bail!("the policy server closed the connection");
                        }
                        if line == "\n" {
                            break;
                        }
                        answer.push_str(&line);
                    }
                    latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    if !answer.to_ascii_lowercase().contains("dunno") {
                        deferred += 1;
                    }
                }
                Ok((latencies, deferred))
            })
        })
        .collect();
    let mut latencies_ms = Vec::with_capacity(total);
    let mut deferred = 0;
    for t in threads {
        let (l, d) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        latencies_ms.extend(l);
        deferred += d;
    }
    let rate = latencies_ms.len() as f64 / began.elapsed().as_secs_f64();
    Ok(Measured {
        rate,
        latencies_ms,
        deferred,
    })
}

/// policyd-rate-limit, run as nobody with its socket and SQLite database under `dir`.
struct Peer {
    child: Child,
    socket: PathBuf,
}

impl Peer {
    fn start(dir: &Path) -> anyhow::Result<Peer> {
        let program = std::env::var_os("SG_PEER_POLICYD")
            .map(PathBuf::from)
            .context("SG_PEER_POLICYD: the policyd-rate-limit to compare with (`cargo xtask bench policy` installs it)")?;
        let python = program.with_file_name("python3");
        let d = dir.display();
        let config = dir.join("policyd-rate-limit.yaml");
        std::fs::write(
            &config,
            format!(
                "debug: False\npidfile: \"{d}/prl.pid\"\nbackend: 0\n\
                 sqlite_config:\n  database: \"{d}/prl.sqlite3\"\n\
                 SOCKET: \"{d}/prl.sock\"\nsocket_permission: 0666\n\
                 limits:\n  - [100, 3600]\nlimits_by_id: {{}}\nsql_limits_by_id: \"\"\n\
                 limit_by_sasl: True\nlimit_by_sender: False\nlimit_by_ip: False\n\
                 limited_networks: []\nsuccess_action: \"dunno\"\n\
                 fail_action: \"defer_if_permit Rate limit reach, retry later\"\n\
                 db_error_action: \"dunno\"\nreport: False\ndelay_to_close: 300\ncount_mode: 2\n"
            ),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
        let socket = dir.join("prl.sock");
        let child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&python)
            .arg(&program)
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start policyd-rate-limit")?;
        let mut peer = Peer { child, socket };
        if !until(Duration::from_secs(20), || peer.socket.exists()) {
            let _ = peer.child.kill();
            bail!("policyd-rate-limit never opened {}", peer.socket.display());
        }
        Ok(peer)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn bench(args: &[String]) -> anyhow::Result<()> {
    require_root();
    let quick = args.iter().any(|a| a == "--quick");
    let (ours_total, peer_total, runs) = if quick {
        (4_000, 400, 1)
    } else {
        (200_000, 8_000, 5)
    };
    let server = Netns::new("pbs")?;
    let other = Netns::new("pbc")?;
    veth(&server, "pb0", &other, "pb1")?;
    server.addr("pb0", "198.51.100.1/24")?;
    let dir = TempDir::new("policy-bench");
    let socket = dir.path.join("policy.sock");
    let pins = PinDir::new();
    let config = format!(
        "interfaces = [\"pb0\"]\nattach_mode = \"native\"\n\
         [policy]\nlisten = \"unix:{}\"\n[users]\nmessages = \"100/h\"\nrecipients = \"100000/h\"\n",
        socket.display()
    );
    let daemon = Daemon::start(&server, &config, &pins.path)?;
    let peer_dir = TempDir::new("policy-peer");
    let peer = Peer::start(&peer_dir.path)?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    // Alternating, so both see the same state of the machine.
    for _ in 0..runs {
        ours.push(load(&socket, ours_total)?);
        theirs.push(load(&peer.socket, peer_total)?);
    }
    let _ = daemon;
    let summary = |m: &[Measured]| {
        let rate = crate::bench::median(m.iter().map(|x| x.rate).collect());
        let q: Vec<[f64; 4]> = m
            .iter()
            .map(|x| crate::bench::quantiles(x.latencies_ms.clone()))
            .collect();
        let p = |i: usize| crate::bench::median(q.iter().map(|x| x[i]).collect());
        (rate, p(0), p(2), p(3))
    };
    let (our_rate, our_p50, our_p99, our_max) = summary(&ours);
    let (peer_rate, peer_p50, peer_p99, peer_max) = summary(&theirs);
    println!(
        "Policy service: {CONNECTIONS} connections on a unix socket, DATA requests of \
         {USERS} SASL users (100 messages an hour each, counted at DATA: none is over it), median of {runs} \
         alternating run(s); {ours_total} requests per run for slowgate, {peer_total} for \
         policyd-rate-limit 1.2.0 (SQLite)."
    );
    println!();
    println!("| server | requests/s | p50 | p99 | max | deferred |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| slowgate | {our_rate:.0} | {our_p50:.3} ms | {our_p99:.3} ms | {our_max:.3} ms | {} |",
        ours[0].deferred
    );
    println!(
        "| policyd-rate-limit | {peer_rate:.0} | {peer_p50:.3} ms | {peer_p99:.3} ms | {peer_max:.3} ms | {} |",
        theirs[0].deferred
    );
    println!();
    println!(
        "slowgate answers {:.1}x the requests per second of policyd-rate-limit.",
        our_rate / peer_rate
    );
    if ours
        .iter()
        .chain(&theirs)
        .any(|m| m.latencies_ms.is_empty())
    {
        bail!("a run answered nothing");
    }
    Ok(())
}
