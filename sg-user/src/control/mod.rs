//! The control socket: a Unix socket speaking one JSON object per line, versioned; the
//! messages are [`protocol`]'s types, shared by this server and the CLI's [`call`].
//!
//! Only root and members of the configured group may talk to it: the socket file is mode 0660
//! with that group, and the daemon checks the peer's credentials (SO_PEERCRED) as well.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    sync::mpsc::SyncSender,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

pub mod protocol;

use protocol::Request as Control;
pub use protocol::VERSION;

use crate::{domain::Sender, engine::EngineConfig};

/// What the control socket asks of the learning loop (which answers on the oneshot).
pub enum ToLearning {
    Top {
        n: usize,
    },
    Show {
        who: Sender,
    },
    Release {
        who: Sender,
    },
    /// A new config, already validated; its lists go to the kernel through the enforcer.
    Reload(Box<crate::config::Config>),
    /// An operator's change to a list or a limit, already journaled by the daemon.
    Operator(crate::decisions::ListChange),
    /// An operator's bulk import, already journaled by the daemon.
    Import(crate::decisions::Import),
}

pub type Reply = Result<serde_json::Value, String>;
pub type Requests = std::sync::mpsc::Receiver<(ToLearning, tokio::sync::oneshot::Sender<Reply>)>;

use ToLearning as Request;

/// Requests the daemon's main task answers.
pub enum Op {
    Reload,
    Lists(crate::decisions::ListChange),
    Import(crate::decisions::Import),
    Rows(String),
}
/// How long `slowgate feed update` waits for the fetch (a feed's timeout is at most its refresh
/// interval; past this the fetch goes on and the command says so).
const FEED_UPDATE_WAIT: u64 = 120;

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// Longest import body accepted (about 3 million IPv6 prefixes).
pub const MAX_IMPORT: usize = 128 << 20;

/// What the daemon gives the server to work with.
pub struct Handles {
    pub learning: SyncSender<(Request, tokio::sync::oneshot::Sender<Reply>)>,
    /// What the daemon's main task does itself (it owns the maps).
    pub ops: tokio::sync::mpsc::Sender<(Op, tokio::sync::oneshot::Sender<Reply>)>,
    pub engine: EngineConfig,
    /// The group allowed besides root.
    pub group: Option<u32>,
    /// `slowgate feed update`; None without `[[feeds]]`.
    pub feeds: Option<crate::feeds::Control>,
}

/// Binds the socket (replacing a stale one), mode 0660, owned by root and `group`.
pub fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove stale {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("bind the control socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    std::os::unix::fs::chown(path, Some(0), Some(group.unwrap_or(0)))?;
    Ok(listener)
}

/// The gid of a group name (getgrnam_r: no static storage another thread could overwrite).
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all zeros is a valid `group` (null pointers, zero gid).
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is the buffer's size; on
    // success `found` points to `group`, whose strings live in `buf`.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        bail!(
            "key `control.group`: looking up {name:?}: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    if found.is_null() {
        bail!("key `control.group`: no group {name:?}");
    }
    Ok(group.gr_gid)
}

/// Whether the peer process is root or in `group` (primary or supplementary).
fn allowed(uid: u32, gid: u32, pid: Option<i32>, group: Option<u32>) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(group) = group else { return false };
    if gid == group {
        return true;
    }
    let Some(pid) = pid else { return false };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().any(|x| x == group.to_string()))
        })
        .unwrap_or(false)
}

pub async fn serve(listener: tokio::net::UnixListener, handles: std::sync::Arc<Handles>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handles = handles.clone();
        tokio::spawn(async move {
            let cred = stream.peer_cred().ok();
            let permitted = cred.is_some_and(|c| allowed(c.uid(), c.gid(), c.pid(), handles.group));
            let (read, mut write) = stream.into_split();
            let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST as u64);
            let mut line = String::new();
            let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line));
            let answer = match read.await {
                _ if !permitted => Err("permission denied: root and the control group only".into()),
                Ok(Ok(_)) => {
                    // An import's entries follow its request line.
                    let mut body = reader.into_inner();
                    answer(&line, &mut body, &handles).await
                }
                _ => Err("no request".into()),
            };
            let body = protocol::answer_line(&answer);
            let _ = write.write_all(format!("{body}\n").as_bytes()).await;
        });
    }
}

use tokio::io::AsyncReadExt as _;

async fn answer(
    line: &str,
    body: &mut (impl tokio::io::AsyncRead + Unpin),
    handles: &Handles,
) -> Reply {
    let request = protocol::parse_request(line)?;
    let who = |text: &str| -> Result<Sender, String> {
        Sender::parse(text, handles.engine.lengths()).map_err(|e| e.to_string())
    };
    let learning = |request| ask_learning_loop(&handles.learning, request);
    let (reply, wait) = tokio::sync::oneshot::channel();
    match request {
        Control::Top { n } => return learning(Request::Top { n: n.min(10_000) }).await,
        Control::Show { who: text } => return learning(Request::Show { who: who(&text)? }).await,
        Control::Release { who: text } => {
            return learning(Request::Release { who: who(&text)? }).await;
        }
        Control::Reload => to_main(handles, Op::Reload, reply).await?,
        Control::Lists { change } => to_main(handles, Op::Lists(change), reply).await?,
        Control::Import {
            list,
            replace,
            comment,
            bytes,
        } => {
            let import = read_import(body, &list, replace, comment, bytes).await?;
            to_main(handles, Op::Import(import), reply).await?;
            // Journaling and applying a million entries takes seconds, not ten.
            return match tokio::time::timeout(Duration::from_secs(120), wait).await {
                Ok(Ok(answer)) => answer,
                _ => Err("no answer from the daemon".into()),
            };
        }
        Control::Feeds => {
            let all = crate::feeds::STATUS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            return protocol::reply(&all);
        }
        Control::Fleet => return protocol::reply(&crate::fleet::current_status()),
        Control::FeedUpdate { name } => {
            let Some(feeds) = handles.feeds.clone() else {
                return Err("no feeds are configured (`[[feeds]]`)".into());
            };
            // A fetch may take the feed's timeout: off the async threads.
            let said = tokio::task::spawn_blocking(move || {
                feeds.update(&name, Duration::from_secs(FEED_UPDATE_WAIT))
            })
            .await
            .map_err(|e| e.to_string())??;
            return protocol::reply(&protocol::Said { said });
        }
        Control::Rows { list } => {
            if !["allow", "deny", "limit"].contains(&list.as_str()) {
                return Err(format!("unknown list {list:?}"));
            }
            to_main(handles, Op::Rows(list), reply).await?
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), wait).await {
        Ok(Ok(answer)) => answer,
        _ => Err("no answer from the daemon".into()),
    }
}

/// An import's entries, `bytes` of them after the request line, read and checked like a file.
async fn read_import(
    body: &mut (impl tokio::io::AsyncRead + Unpin),
    list: &str,
    replace: bool,
    comment: Option<String>,
    bytes: usize,
) -> Result<crate::decisions::Import, String> {
    let Some(kind) = crate::decisions::ListKind::from_name(list) else {
        return Err(format!("cannot import into the {list:?} list"));
    };
    if bytes > MAX_IMPORT {
        return Err(format!("an import holds {MAX_IMPORT} bytes at most"));
    }
    let mut text = Vec::with_capacity(bytes);
    let mut limited = body.take(bytes as u64);
    let read = limited.read_to_end(&mut text);
    match tokio::time::timeout(Duration::from_secs(60), read).await {
        Ok(Ok(n)) if n == bytes => {}
        _ => return Err(format!("the import's {bytes} bytes did not arrive")),
    }
    let text = String::from_utf8(text).map_err(|_| "the import is not UTF-8".to_string())?;
    let networks = crate::lists::parse_import(&text).map_err(|e| format!("{e:#}"))?;
    Ok(crate::decisions::Import {
        kind,
        networks,
        replace,
        comment,
    })
}

async fn to_main(
    handles: &Handles,
    op: Op,
    reply: tokio::sync::oneshot::Sender<Reply>,
) -> Result<(), String> {
    handles
        .ops
        .send((op, reply))
        .await
        .map_err(|_| "the daemon is stopping".to_string())
}

/// Sends a request to the learning loop and waits for its answer (10 s at most); the control
/// socket and the daemon's own reloads and list changes ask it this way.
pub async fn ask_learning_loop(
    learning: &SyncSender<(Request, tokio::sync::oneshot::Sender<Reply>)>,
    request: Request,
) -> Reply {
    let (reply, wait) = tokio::sync::oneshot::channel();
    learning
        .try_send((request, reply))
        .map_err(|_| "the learning loop is busy; try again".to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), wait).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err("the learning loop is gone".into()),
        Err(_) => Err("the learning loop did not answer in 10 s".into()),
    }
}

/// The client side: one request, one answer, read as the request's reply type `T` (or the
/// daemon's error).
pub fn call<T: serde::de::DeserializeOwned>(socket: &Path, request: &Control) -> anyhow::Result<T> {
    call_with_body(socket, request, &[])
}

/// [`call`] with bytes after the request line (an import's entries).
pub fn call_with_body<T: serde::de::DeserializeOwned>(
    socket: &Path,
    request: &Control,
    body: &[u8],
) -> anyhow::Result<T> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the daemon at {} (is `slowgate run` running? pass --control)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(150)))?;
    writeln!(stream, "{}", protocol::request_line(request))?;
    stream.write_all(body)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    protocol::parse_answer(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_and_the_group_are_allowed() {
        assert!(allowed(0, 0, None, None));
        assert!(!allowed(1000, 1000, None, None));
        assert!(allowed(1000, 50, None, Some(50)));
        assert!(!allowed(1000, 1000, None, Some(50)));
    }
}
