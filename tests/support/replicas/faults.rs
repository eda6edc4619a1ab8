//! Breaking what replicas share, in the ways production does, without touching the shared
//! servers:
//!
//! - [`RedisServer`]: a private `redis-server` child process on a free port, which a test
//!   may kill (SIGKILL), freeze (SIGSTOP) and start again on the same port;
//! - [`DatabaseProxy`]: a TCP relay in front of PostgreSQL that a test can cut, which is
//!   how a replica sees "the database is down" without the shared server being stopped;
//! - [`Traffic`]: requests kept up in the background meanwhile, with what went wrong;
//! - [`rss_kib`]: this process's memory, for the replicas run in it.
//!
//! Child processes and tasks end when their guards drop, also when the test panics.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use super::super::TestDatabase;
use super::super::app::eventually;
use super::{REDIS_COMMAND, free_port, redis_connection};

// --------------------------------------------------------------------- private Redis

/// A `redis-server` of one test's own, on a free port, killed when this drops.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    pub async fn start() -> RedisServer {
        let mut server = RedisServer { port: free_port(), child: None };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        self.child = Some(child);
        let url = self.url();
        eventually("the private redis-server to answer PING", || async {
            let mut conn = redis_connection(&url).await.ok()?;
            let ping = redis::cmd("PING");
            tokio::time::timeout(REDIS_COMMAND, ping.query_async::<String>(&mut conn)).await.ok()?.ok()
        })
        .await;
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as in a
    /// network partition. [`RedisServer::resume`] thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running redis-server").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().expect("running kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Kills the server the hard way (SIGKILL): connections drop without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh (empty) server on the same port, as an orchestrator restarts Redis.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- background traffic

/// Requests sent to replicas in the background while a test breaks something, with
/// everything that was not the expected answer.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    task: JoinHandle<TrafficReport>,
}

#[derive(Debug, Default)]
pub struct TrafficReport {
    pub requests: u64,
    /// `"<url>: <status>"` for every answer that was not the expected one.
    pub failures: Vec<String>,
    /// The slowest answer: a request that waited on a broken dependency shows here.
    pub slowest: Duration,
}

/// Slower than this, an answer from memory must have waited on something it should not
/// (Redis commands time out after 500 ms, the database pool after 3 s).
const SLOW_ANSWER: Duration = Duration::from_millis(250);

impl TrafficReport {
    /// Prints the figures and asserts that every request was answered, from memory: no
    /// failure, none slow, and enough of them to mean something.
    pub fn assert_served_throughout(&self, while_what: &str) {
        eprintln!(
            "{} requests {while_what}: {} failed, slowest {:?}",
            self.requests,
            self.failures.len(),
            self.slowest
        );
        assert!(self.failures.is_empty(), "{:#?}", self.failures);
        assert!(self.requests > 100, "only {} requests", self.requests);
        assert!(self.slowest < SLOW_ANSWER, "an answer took {:?} {while_what}", self.slowest);
    }
}

impl Traffic {
    /// Loops over `replicas` (base URLs): verifies `token` (which must stay valid) and
    /// fetches the tenant's JWKS, until [`Traffic::finish`].
    pub fn start(replicas: Vec<String>, tenant: &str, token: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, tenant, token) = (Arc::clone(&stop), tenant.to_owned(), token.to_owned());
        let task = tokio::spawn(async move {
            let client = Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().expect("HTTP client");
            let mut report = TrafficReport::default();
            while !flag.load(Ordering::Acquire) {
                for base in &replicas {
                    let verify = client.post(format!("{base}/a/{tenant}/verify")).json(&json!({ "token": token }));
                    let jwks = client.get(format!("{base}/a/{tenant}/.well-known/jwks.json"));
                    for (what, request) in [("verify", verify), ("jwks", jwks)] {
                        report.requests += 1;
                        let started = Instant::now();
                        let outcome = request.send().await;
                        report.slowest = report.slowest.max(started.elapsed());
                        match outcome {
                            Ok(r) if r.status() == StatusCode::OK => {}
                            Ok(r) => report.failures.push(format!("{what} on {base}: {}", r.status())),
                            Err(e) => report.failures.push(format!("{what} on {base}: {e}")),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            report
        });
        Traffic { stop, task }
    }

    pub async fn finish(self) -> TrafficReport {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("the traffic task")
    }
}

// ---------------------------------------------------------------- database outage

/// A TCP relay between replicas and PostgreSQL. [`DatabaseProxy::cut`] closes every
/// relayed connection and refuses new ones, which is what a replica sees when the database
/// goes down; [`DatabaseProxy::restore`] listens again on the same port.
pub struct DatabaseProxy {
    port: u16,
    upstream: SocketAddr,
    /// The accept loop and every relayed connection, ended by a cut.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl DatabaseProxy {
    /// Relays to the server in `db.url`.
    pub async fn start(db: &TestDatabase) -> DatabaseProxy {
        let (host_port, _) = split_authority(&db.url);
        let upstream = host_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("cannot resolve the database address {host_port}"));
        let proxy = DatabaseProxy { port: free_port(), upstream, tasks: Arc::new(Mutex::new(Vec::new())) };
        proxy.restore().await;
        proxy
    }

    /// `db.url` pointed at the relay.
    pub fn url(&self, db: &TestDatabase) -> String {
        let (host_port, _) = split_authority(&db.url);
        db.url.replacen(host_port, &format!("127.0.0.1:{}", self.port), 1)
    }

    pub async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("binding the proxy port again");
        let (upstream, tasks) = (self.upstream, Arc::clone(&self.tasks));
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap_or_else(|e| e.into_inner()).push(relay.abort_handle());
            }
        });
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(accept.abort_handle());
    }

    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }
}

impl Drop for DatabaseProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// `("host:port", rest)` of a `scheme://user@host:port/rest` URL.
fn split_authority(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
    let authority = &url[after_scheme..end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (host_port, &url[end..])
}

// --------------------------------------------------------------------- memory

/// This process's resident set size in KiB (`VmRSS` of `/proc/self/status`).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}
