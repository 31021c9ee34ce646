//! A small HTTP server inside a namespace that serves one feed and can be told to misbehave
//! the ways real feed servers do: 304 for a matching ETag, 5xx, hanging, a truncated body.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::Netns;

/// How the server answers the next requests.
#[derive(Clone, Debug)]
pub enum Serve {
    /// 200 with this body and ETag; 304 when the request names the ETag.
    Body { body: String, etag: String },
    /// This status and a short body.
    Status(u16),
    /// Accepts the request and answers nothing for this long.
    Hang(Duration),
    /// Announces the body's full length but sends only half of it, then closes.
    Truncated(String),
}

/// The server; stops (and its thread ends) on drop.
pub struct FeedServer {
    serve: Arc<Mutex<Serve>>,
    /// The `If-None-Match` of each request, in order.
    pub asked: Arc<Mutex<Vec<Option<String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FeedServer {
    pub fn start(ns: &Netns, addr: SocketAddr, first: Serve) -> anyhow::Result<FeedServer> {
        let listener = ns.enter(|| TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let serve = Arc::new(Mutex::new(first));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (serve, asked, stop) = (serve.clone(), asked.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        // One thread per request, so a hanging answer delays no other.
                        Ok((conn, _)) => {
                            let how = serve.lock().unwrap().clone();
                            let (asked, stop) = (asked.clone(), stop.clone());
                            thread::spawn(move || answer(conn, &how, &asked, &stop));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Ok(FeedServer {
            serve,
            asked,
            stop,
            thread: Some(thread),
        })
    }

    pub fn set(&self, how: Serve) {
        *self.serve.lock().unwrap() = how;
    }
}

fn answer(
    conn: std::net::TcpStream,
    how: &Serve,
    asked: &Mutex<Vec<Option<String>>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut etag = None;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("if-none-match")
        {
            etag = Some(value.trim().to_string());
        }
    }
    asked.lock().unwrap().push(etag.clone());
    let mut conn = conn;
    match how {
        Serve::Body { body, etag: tag } if etag.as_deref() == Some(tag.as_str()) => {
            let _ = body;
            write!(
                conn,
                "HTTP/1.1 304 Not Modified\r\nETag: {tag}\r\nConnection: close\r\n\r\n"
            )
        }
        Serve::Body { body, etag: tag } => write!(
            conn,
            "HTTP/1.1 200 OK\r\nETag: {tag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        Serve::Status(code) => write!(
            conn,
            "HTTP/1.1 {code} Trouble\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops\n"
        ),
        Serve::Hang(d) => {
            let until = std::time::Instant::now() + *d;
            while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        }
        Serve::Truncated(body) => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                &body[..body.len() / 2]
            )?;
            conn.flush()
        }
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
