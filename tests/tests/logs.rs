//! The daemon's log as journald gets it, and its bound under attack (root: the daemon loads
//! its XDP program).

use std::{io::Write, time::Duration};

use sg_tests::*;

/// One policy request that the 1-an-hour bucket defers after the first message.
fn ask(s: &mut std::net::TcpStream, n: usize) -> String {
    use std::io::Read;
    let request = format!(
        "request=smtpd_access_policy\nprotocol_state=DATA\nsasl_username=flood@example.net\n\
         client_address=203.0.113.7\ninstance=m{n}\nrecipient_count=1\n\n"
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\n\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        answer.push(byte[0]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn under_systemd_lines_carry_their_priority_and_a_flood_of_verdicts_is_bounded() {
    require_root();
    let server = Netns::new("logs").unwrap();
    let client = Netns::new("logc").unwrap();
    veth(&server, "sg0", &client, "cl0").unwrap();
    server.addr("sg0", "198.51.100.1/24").unwrap();
    let pins = PinDir::new();
    let config = "interfaces = [\"sg0\"]\nattach_mode = \"native\"\n\
                  [policy]\nlisten = \"127.0.0.1:10040\"\n[users]\nmessages = \"1/h\"\n\
                  [log]\nfilter = \"info\"\n";
    let daemon =
        Daemon::start_with_env(&server, config, &pins.path, &[("JOURNAL_STREAM", "8:1234")])
            .unwrap();
    let mut s = tcp_connect(
        &server,
        "127.0.0.1".parse().unwrap(),
        "127.0.0.1:10040".parse().unwrap(),
        Duration::from_secs(3),
    )
    .unwrap();
    s.set_nodelay(true).unwrap();
    // 2000 deferrals as fast as they go: every one is answered, few are written.
    let began = std::time::Instant::now();
    let mut deferred = 0;
    for n in 0..2001 {
        if ask(&mut s, n).starts_with("action=451") {
            deferred += 1;
        }
    }
    let seconds = began.elapsed().as_secs() + 2;
    assert_eq!(deferred, 2000);
    // One more, a second later, says how many lines were held back.
    std::thread::sleep(Duration::from_millis(1100));
    ask(&mut s, 5000);
    std::thread::sleep(Duration::from_millis(300));
    let log = daemon.log_text();
    let written = log.lines().filter(|l| l.contains("policy: defer")).count() as u64;
    assert!(
        written <= 50 * seconds && written < 2000,
        "{written} deferral lines in {seconds} s"
    );
    assert!(
        log.contains("more lines like the next were not written"),
        "{log}"
    );
    // Every line starts with its syslog priority: info <6>, and the daemon's start lines.
    assert!(log.lines().all(|l| l.starts_with('<')), "{log}");
    assert!(
        log.contains("<6>slowgate: policy: defer flood@example.net"),
        "{log}"
    );
}

#[test]
fn a_bad_log_filter_is_a_clear_config_error() {
    let dir = TempDir::new("logcfg");
    let path = dir.path.join("slowgate.toml");
    std::fs::write(
        &path,
        "interfaces = [\"eth0\"]\n[log]\nfilter = \"info,[\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["--config"])
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("log.filter"), "{text}");
}

#[test]
fn kernel_diagnostics_reach_the_log_when_switched_on_and_stop_when_switched_off() {
    require_root();
    let server = Netns::new("klog").unwrap();
    let client = Netns::new("klogc").unwrap();
    veth(&server, "sg0", &client, "cl0").unwrap();
    server.addr("sg0", "198.51.100.1/24").unwrap();
    client.addr("cl0", "198.51.100.66/24").unwrap();
    let _listeners = Listeners::start(&server, &[25]).unwrap();
    let pins = PinDir::new();
    let config = "interfaces = [\"sg0\"]\nattach_mode = \"native\"\n\
                  [lists]\ndeny = [\"198.51.100.66\"]\n[log]\nkernel = true\n";
    let daemon = Daemon::start(&server, config, &pins.path).unwrap();
    let knock = || {
        connect(
            &client,
            "198.51.100.66".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap(),
            Duration::from_millis(200),
        )
    };
    // Each refused SYN is traced by the program, read and written by the daemon.
    assert!(!knock());
    let traced = until(Duration::from_secs(5), || {
        daemon
            .log_text()
            .contains("kernel: refused a new connection to port 25")
    });
    assert!(traced, "no kernel trace:\n{}", daemon.log_text());
    // Switched off by a reload: the program traces nothing more.
    let path = daemon.log.parent().unwrap().join("slowgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("kernel = true", "kernel = false")).unwrap();
    let (ok, out) = daemon.control(&["reload"], false);
    assert!(ok, "{out}");
    let before = daemon.log_text().matches("kernel: ").count();
    for _ in 0..3 {
        assert!(!knock());
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(daemon.log_text().matches("kernel: ").count(), before);
}
