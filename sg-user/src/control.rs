//! The control socket: a Unix socket speaking one JSON object per line, versioned.
//!
//! Request: `{"version":1,"command":"top","n":10}`, `{"version":1,"command":"show","who":"..."}`,
//! `{"version":1,"command":"release","who":"..."}`, `{"version":1,"command":"reload"}`.
//! Answer: `{"version":1,"ok":true,"result":...}` or `{"version":1,"ok":false,"error":"..."}`.
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
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::{
    domain::Sender,
    engine::EngineConfig,
    learn::{Reply, Request},
};

pub const VERSION: u64 = 1;

/// Requests the daemon's main task answers.
pub enum Op {
    Reload,
    Lists(crate::lists::Change),
    Rows(String),
}
/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// What the daemon gives the server to work with.
pub struct Handles {
    pub learning: SyncSender<(Request, tokio::sync::oneshot::Sender<Reply>)>,
    /// What the daemon's main task does itself (it owns the maps).
    pub ops: tokio::sync::mpsc::Sender<(Op, tokio::sync::oneshot::Sender<Reply>)>,
    pub engine: EngineConfig,
    /// The group allowed besides root.
    pub group: Option<u32>,
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
                Ok(Ok(_)) => answer(&line, &handles).await,
                _ => Err("no request".into()),
            };
            let body = match answer {
                Ok(result) => json!({"version": VERSION, "ok": true, "result": result}),
                Err(error) => json!({"version": VERSION, "ok": false, "error": error}),
            };
            let _ = write.write_all(format!("{body}\n").as_bytes()).await;
        });
    }
}

use tokio::io::AsyncReadExt as _;

async fn answer(line: &str, handles: &Handles) -> Reply {
    let request: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    match request["version"].as_u64() {
        Some(VERSION) => {}
        other => {
            return Err(format!(
                "protocol version {other:?} not spoken (this is {VERSION})"
            ));
        }
    }
    let who = || -> Result<Sender, String> {
        let text = request["who"].as_str().ok_or("`who` is missing")?;
        Sender::parse(text, handles.engine.lengths()).map_err(|e| e.to_string())
    };
    let (reply, wait) = tokio::sync::oneshot::channel();
    match request["command"].as_str() {
        Some("top") => {
            let n = request["n"].as_u64().unwrap_or(20).min(10_000) as usize;
            to_learning_loop(handles, Request::Top { n }, reply)?;
        }
        Some("show") => to_learning_loop(handles, Request::Show { who: who()? }, reply)?,
        Some("release") => to_learning_loop(handles, Request::Release { who: who()? }, reply)?,
        Some("reload") => to_main(handles, Op::Reload, reply).await?,
        Some("lists") => {
            let change = crate::lists::from_json(&request["change"])?;
            to_main(handles, Op::Lists(change), reply).await?
        }
        Some("rows") => {
            let list = request["list"].as_str().unwrap_or("").to_string();
            if !["allow", "deny", "limit"].contains(&list.as_str()) {
                return Err(format!("unknown list {list:?}"));
            }
            to_main(handles, Op::Rows(list), reply).await?
        }
        other => return Err(format!("unknown command {other:?}")),
    }
    match tokio::time::timeout(Duration::from_secs(10), wait).await {
        Ok(Ok(answer)) => answer,
        _ => Err("no answer from the daemon".into()),
    }
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

fn to_learning_loop(
    handles: &Handles,
    request: Request,
    reply: tokio::sync::oneshot::Sender<Reply>,
) -> Result<(), String> {
    handles
        .learning
        .try_send((request, reply))
        .map_err(|_| "the learning loop is busy or stopped; try again".to_string())
}

/// The client side: one request, one answer (the `result`, or the daemon's error).
pub fn call(socket: &Path, request: Value) -> anyhow::Result<Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the daemon at {} (is `slowgate run` running? pass --control)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut request = request;
    request["version"] = json!(VERSION);
    writeln!(stream, "{request}")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let answer: Value = serde_json::from_str(&line).context("the daemon's answer is not JSON")?;
    if answer["ok"] == json!(true) {
        Ok(answer["result"].clone())
    } else {
        bail!(
            "{}",
            answer["error"].as_str().unwrap_or("the daemon refused")
        )
    }
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
