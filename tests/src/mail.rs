//! Real mail servers for the tests and the lab: Postfix and Dovecot from Debian's packages,
//! configured under a directory of the test's own and run inside a namespace it created.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{Netns, unique};

/// Postfix and Dovecot, configured under `dir`, running in a namespace: Postfix on 25 and on
/// 587 (SASL through Dovecot), Dovecot with IMAP and POP3, mailboxes `alice` and `bob` of
/// example.net (passwords `alicepw`, `bobpw`).
pub struct Servers {
    pub dir: PathBuf,
}

/// Lines added to the servers' configs (a policy service, a milter, Dovecot's auth policy).
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// Added to Postfix's main.cf (later settings win).
    pub postfix: String,
    /// Added to the submission service's `-o` options in master.cf, one per line.
    pub submission: Vec<String>,
    /// Added to dovecot.conf.
    pub dovecot: String,
    /// More services at the end of master.cf.
    pub master: String,
}

pub const MAILBOXES: [(&str, &str); 2] = [("alice", "alicepw"), ("bob", "bobpw")];

impl Servers {
    /// Postfix's files under `dir` (its queue, its config, its log).
    pub fn write_postfix(dir: &Path, extra: &Extra) -> anyhow::Result<()> {
        let d = dir.display();
        for sub in ["pf", "spool", "mail", "dc/run", "dc/state"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // The lab's files are read by unprivileged server processes.
        chmod(dir, 0o755)?;
        chown_nobody(&dir.join("mail"))?;
        std::fs::write(dir.join("mail.log"), "")?;
        std::fs::write(dir.join("dovecot.log"), "")?;
        std::fs::write(
            dir.join("pf/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {d}/spool\n\
                 data_directory = {d}/spool/data\nmail_owner = postfix\nsetgid_group = postdrop\n\
                 myhostname = mx.example.net\nmydomain = example.net\nmydestination =\n\
                 inet_interfaces = all\ninet_protocols = all\nmynetworks = 127.0.0.0/8\n\
                 maillog_file = {d}/mail.log\nmaillog_file_prefixes = {d}\n\
                 alias_maps =\nalias_database =\n\
                 smtpd_peername_lookup = no\nsmtp_dns_support_level = disabled\n\
                 smtpd_error_sleep_time = 0\nsmtpd_soft_error_limit = 100\n\
                 smtpd_hard_error_limit = 100\n\
                 virtual_mailbox_domains = example.net\nvirtual_mailbox_base = {d}/mail\n\
                 virtual_mailbox_maps = texthash:{d}/pf/vmailbox\n\
                 virtual_uid_maps = static:65534\nvirtual_gid_maps = static:65534\n\
                 smtpd_sasl_type = dovecot\nsmtpd_sasl_path = {d}/dc/auth-client\n\
                 smtpd_recipient_restrictions = permit_sasl_authenticated, reject_unauth_destination\n\
                 {}\n",
                extra.postfix
            ),
        )?;
        let submission: String = extra
            .submission
            .iter()
            .map(|o| format!("  -o {o}\n"))
            .collect();
        std::fs::write(
            dir.join("pf/master.cf"),
            POSTFIX_MASTER_CF.replace("%SUBMISSION%\n", &submission) + &extra.master,
        )?;
        let vmailbox: String = MAILBOXES
            .iter()
            .map(|(u, _)| format!("{u}@example.net example.net/{u}/\n"))
            .collect();
        std::fs::write(dir.join("pf/vmailbox"), vmailbox)?;
        Ok(())
    }

    pub fn start(ns: &Netns, dir: &Path, extra: &Extra) -> anyhow::Result<Servers> {
        let servers = Servers {
            dir: dir.to_path_buf(),
        };
        let d = dir.display();
        Servers::write_postfix(dir, extra)?;
        std::fs::write(
            dir.join("dc/dovecot.conf"),
            format!(
                "base_dir = {d}/dc/run\nstate_dir = {d}/dc/state\nlog_path = {d}/dovecot.log\n\
                 info_log_path = {d}/dovecot.log\nprotocols = imap pop3\nlisten = *, ::\n\
                 ssl = no\ndisable_plaintext_auth = no\nauth_mechanisms = plain login\n\
                 auth_failure_delay = 0\ndefault_login_user = dovenull\n\
                 default_internal_user = dovecot\nmail_location = maildir:{d}/mail/%d/%n\n\
                 first_valid_uid = 65534\n\
                 passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {d}/dc/users\n}}\n\
                 userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={d}/mail/%d/%n\n}}\n\
                 service auth {{\n  unix_listener {d}/dc/auth-client {{\n    mode = 0666\n  }}\n}}\n\
                 {}\n",
                extra.dovecot
            ),
        )?;
        let users: String = MAILBOXES
            .iter()
            .map(|(u, p)| format!("{u}@example.net:{{PLAIN}}{p}\n"))
            .collect();
        std::fs::write(dir.join("dc/users"), users)?;
        in_ns(ns, &["postfix", "-c", &format!("{d}/pf"), "start"])
            .context("start Postfix (apt install postfix)")?;
        in_ns(ns, &["dovecot", "-c", &format!("{d}/dc/dovecot.conf")])
            .context("start Dovecot (apt install dovecot-imapd dovecot-pop3d)")?;
        Ok(servers)
    }

    pub fn mail_log(&self) -> PathBuf {
        self.dir.join("mail.log")
    }

    pub fn dovecot_log(&self) -> PathBuf {
        self.dir.join("dovecot.log")
    }

    /// Messages delivered to `user` whose X-Lab-Id starts with `tag`.
    pub fn delivered(&self, user: &str, tag: &str) -> usize {
        let new = self.dir.join(format!("mail/example.net/{user}/new"));
        let needle = format!("X-Lab-Id: {tag}");
        std::fs::read_dir(new)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| {
                        std::fs::read_to_string(e.path())
                            .map(|t| t.contains(&needle))
                            .unwrap_or(false)
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        let _ = Command::new("postfix")
            .args(["-c", &format!("{d}/pf"), "stop"])
            .output();
        let _ = Command::new("doveadm")
            .args(["-c", &format!("{d}/dc/dovecot.conf"), "stop"])
            .output();
        // Whatever did not stop by itself.
        let _ = Command::new("pkill").args(["-f", &d]).output();
    }
}

const POSTFIX_MASTER_CF: &str = "\
smtp      inet  n       -       n       -       -       smtpd
submission inet n       -       n       -       -       smtpd
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
%SUBMISSION%
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// Runs a command in `ns` and waits for it. Its output goes to a file, not a pipe: a server
/// that daemonizes keeps inherited pipes open, and reading them to the end would never return.
pub fn in_ns(ns: &Netns, args: &[&str]) -> anyhow::Result<()> {
    let out_path = std::env::temp_dir().join(unique("lab-cmd"));
    let out = std::fs::File::create(&out_path)?;
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("run {}", args.join(" ")));
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    if !status?.success() {
        bail!("{}: {text}", args.join(" "));
    }
    Ok(())
}

pub fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

pub fn chown_nobody(path: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(65534), Some(65534))?;
    Ok(())
}

/// Base64 of `bytes` (for SASL PLAIN).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An SMTP client session for the tests: every reply's code and text, nothing hidden.
pub struct Smtp {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl Smtp {
    /// Connects from `src` (inside `ns`), reads the greeting and says EHLO.
    pub fn open(ns: &Netns, src: IpAddr, dst: SocketAddr) -> anyhow::Result<Smtp> {
        let stream = crate::tcp_connect(ns, src, dst, Duration::from_secs(5))
            .with_context(|| format!("connect to {dst} from {src}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        let mut s = Smtp {
            writer: stream.try_clone()?,
            reader: std::io::BufReader::new(stream),
        };
        let (code, text) = s.reply()?;
        if code != 220 {
            bail!("greeting {code} {text}");
        }
        let (code, text) = s.say("EHLO client.example.org")?;
        if code != 250 {
            bail!("EHLO: {code} {text}");
        }
        Ok(s)
    }

    /// A reply: the code and the text of its last line.
    pub fn reply(&mut self) -> anyhow::Result<(u16, String)> {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the server closed the connection");
            }
            if line.len() >= 4 && line.as_bytes()[3] != b'-' {
                let code = line[..3].parse().context("a reply code")?;
                return Ok((code, line[4..].trim_end().to_string()));
            }
        }
    }

    pub fn say(&mut self, text: &str) -> anyhow::Result<(u16, String)> {
        use std::io::Write;
        self.writer.write_all(format!("{text}\r\n").as_bytes())?;
        self.reply()
    }

    /// AUTH PLAIN; the reply's code (235 when it worked).
    pub fn login(&mut self, user: &str, pass: &str) -> anyhow::Result<u16> {
        let token = base64(format!("\0{user}\0{pass}").as_bytes());
        Ok(self.say(&format!("AUTH PLAIN {token}"))?.0)
    }

    /// One message to `rcpts`, tagged `X-Lab-Id: id`: 250 when queued, else the first reply
    /// that refused it (the transaction is then reset, so the session can go on).
    pub fn send(&mut self, rcpts: &[&str], id: &str) -> anyhow::Result<(u16, String)> {
        let (code, text) = self.say("MAIL FROM:<sender@example.net>")?;
        if code != 250 {
            return Ok((code, text));
        }
        for rcpt in rcpts {
            let (code, text) = self.say(&format!("RCPT TO:<{rcpt}>"))?;
            if code != 250 {
                self.say("RSET")?;
                return Ok((code, text));
            }
        }
        let (code, text) = self.say("DATA")?;
        if code != 354 {
            self.say("RSET")?;
            return Ok((code, text));
        }
        self.say(&format!(
            "Subject: test\r\nX-Lab-Id: {id}\r\n\r\nslowgate test message\r\n."
        ))
    }
}

/// An IMAP login from `src`: whether it worked, and how long the answer took.
pub fn imap_login(
    ns: &Netns,
    src: IpAddr,
    dst: SocketAddr,
    user: &str,
    pass: &str,
) -> anyhow::Result<(bool, Duration)> {
    use std::io::{BufRead, Write};
    let stream = crate::tcp_connect(ns, src, dst, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let began = std::time::Instant::now();
    writer.write_all(format!("a1 LOGIN {user} {pass}\r\n").as_bytes())?;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("IMAP: closed before an answer");
        }
        if line.starts_with("a1 ") {
            let took = began.elapsed();
            let _ = writer.write_all(b"a2 LOGOUT\r\n");
            return Ok((line.starts_with("a1 OK"), took));
        }
    }
}
