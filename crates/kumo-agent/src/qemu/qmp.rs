//! A small asynchronous QMP client (QEMU Machine Protocol: one JSON object per line over a unix socket).
//!
//! One reader task owns the read half of the socket. Every command carries a numeric `id`; the reader hands
//! each response to the caller waiting on that id and broadcasts every asynchronous event (`SHUTDOWN`,
//! `POWERDOWN`, `STOP`, `RESUME`, `RESET`, …) to [`QmpClient::events`] subscribers, so responses and events
//! may interleave freely. When the connection ends (QEMU exited, or quit), waiting callers get
//! [`QmpError::Disconnected`] and [`QmpClient::closed`] resolves.
//!
//! QEMU serves one QMP client per monitor at a time: a second client's connect succeeds at the socket
//! level but its greeting only arrives after the first client has gone. Dropping a [`QmpClient`] closes
//! its connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long [`QmpClient::execute`] waits for a response by default.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const EVENT_BUFFER: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// QEMU answered with `{"error": {"class": …, "desc": …}}`.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("QMP connection closed")]
    Disconnected,
    #[error("QMP command {0} got no answer within {1:?}")]
    Timeout(String, Duration),
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name, e.g. `SHUTDOWN`.
    pub event: String,
    /// The event's `data` object (`Value::Null` when absent).
    pub data: Value,
    /// QEMU's timestamp as (seconds, microseconds) since the epoch.
    pub timestamp: Option<(i64, i64)>,
}

/// `query-status` result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmStatus {
    /// QEMU's RunState: `running`, `paused`, `prelaunch`, `shutdown`, `internal-error`, …
    pub status: String,
    pub running: bool,
}

type Reply = Result<Value, (String, String)>;

struct Shared {
    /// Callers waiting for a response, by id. `None` once the connection has ended.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Sender<bool>,
}

impl Shared {
    fn close(&self) {
        // Dropping the senders wakes every waiting caller with Disconnected.
        self.pending.lock().unwrap().take();
        self.closed.send_replace(true);
    }
}

/// Writes `data` with `fd` attached (SCM_RIGHTS) on the QMP socket; the message is small, so one sendmsg
/// carries it whole (a partial write is reported as an error rather than leaving half a command).
async fn send_with_fd(w: &OwnedWriteHalf, data: &[u8], fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::{AsFd, AsRawFd};
    let stream: &UnixStream = w.as_ref();
    let fds = [fd.as_raw_fd()];
    loop {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(data)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(stream.as_fd().as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(n) if n == data.len() => return Ok(()),
            Ok(n) => return Err(std::io::Error::other(format!("QMP command cut short: {n} of {} bytes", data.len()))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A connected, capabilities-negotiated QMP session.
pub struct QmpClient {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    reader: JoinHandle<()>,
    next_id: AtomicU64,
    greeting: Value,
    timeout: Duration,
}

impl QmpClient {
    /// Connect to the QMP socket at `path`, retrying until `timeout` has passed (QEMU creates the socket a
    /// little after it starts), read the greeting and leave capabilities-negotiation mode.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<QmpClient, QmpError> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(10);
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() + backoff >= deadline => return Err(QmpError::Io(e)),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
        };
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Err(_) => {
                return Err(QmpError::Protocol(format!(
                    "no QMP greeting on {} within {timeout:?} (is another client connected?)",
                    path.display()
                )))
            }
            Ok(Ok(Some(line))) => serde_json::from_str::<Value>(&line)
                .map_err(|e| QmpError::Protocol(format!("bad greeting {line:?}: {e}")))?,
            Ok(Ok(None)) => return Err(QmpError::Disconnected),
            Ok(Err(e)) => return Err(QmpError::Io(e)),
        };
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("not a QMP greeting: {greeting}")));
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let shared =
            Arc::new(Shared { pending: Mutex::new(Some(HashMap::new())), events, closed: watch::Sender::new(false) });
        let reader = tokio::spawn(read_loop(lines, shared.clone()));
        let client = QmpClient {
            shared,
            writer: tokio::sync::Mutex::new(write),
            reader,
            next_id: AtomicU64::new(1),
            greeting,
            timeout: DEFAULT_COMMAND_TIMEOUT,
        };
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// The greeting QEMU sent (`{"QMP": {"version": …, "capabilities": …}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Run `cmd` with optional `arguments` and return its `return` value.
    pub async fn execute(&self, cmd: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.execute_passing(cmd, args, None).await
    }

    /// [`Self::execute`], passing `fd` along with the command (SCM_RIGHTS), as `add-fd` and `getfd` take one:
    /// QEMU gets an open file it could not open itself once it dropped its privileges.
    pub async fn execute_with_fd(
        &self,
        cmd: &str,
        args: Option<Value>,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        self.execute_passing(cmd, args, Some(fd)).await
    }

    async fn execute_passing(
        &self,
        cmd: &str,
        args: Option<Value>,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.shared.pending.lock().unwrap().as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => return Err(QmpError::Disconnected),
        };
        let mut msg = json!({ "execute": cmd, "id": id });
        if let Some(args) = args {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let written = {
            let mut w = self.writer.lock().await;
            match fd {
                Some(fd) => send_with_fd(&w, line.as_bytes(), fd).await,
                None => match w.write_all(line.as_bytes()).await {
                    Ok(()) => w.flush().await,
                    Err(e) => Err(e),
                },
            }
        };
        if let Err(e) = written {
            self.forget(id);
            return Err(if self.is_closed() { QmpError::Disconnected } else { QmpError::Io(e) });
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command { command: cmd.to_string(), class, desc }),
            Ok(Err(_)) => Err(QmpError::Disconnected),
            Err(_) => {
                self.forget(id);
                Err(QmpError::Timeout(cmd.to_string(), self.timeout))
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Some(p) = self.shared.pending.lock().unwrap().as_mut() {
            p.remove(&id);
        }
    }

    /// Subscribe to asynchronous events from now on. A subscriber that falls more than 256 events behind
    /// gets `RecvError::Lagged`.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.shared.events.subscribe()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Resolves once the connection has ended (QEMU exited, quit, or closed the socket).
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        // An error means the sender is gone, which only happens when the connection is gone too.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    pub async fn query_status(&self) -> Result<VmStatus, QmpError> {
        let v = self.execute("query-status", None).await?;
        serde_json::from_value(v).map_err(|e| QmpError::Protocol(format!("query-status: {e}")))
    }

    /// Press the ACPI power button; the guest decides whether and when to power off.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Pause all vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// Resume (or start, after `-S`) the vCPUs.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// Hard reset, like the reset button.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute("system_reset", None).await.map(drop)
    }

    /// Make QEMU exit at once (no guest shutdown). QEMU may close the socket before its answer arrives;
    /// that counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Disconnected) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        // Dropping the reader task drops the read half; with the write half dropped too, the socket closes
        // and QEMU's monitor is free for the next client.
        self.reader.abort();
        self.shared.close();
    }
}

async fn read_loop(mut lines: Lines<BufReader<OwnedReadHalf>>, shared: Arc<Shared>) {
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.trim().is_empty() => {}
            Ok(Some(line)) => dispatch(&line, &shared),
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "QMP read failed");
                break;
            }
        }
    }
    shared.close();
}

fn dispatch(line: &str, shared: &Shared) {
    let msg: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(%line, error = %e, "unparseable QMP message");
            return;
        }
    };
    if let Some(event) = msg.get("event").and_then(Value::as_str) {
        let ts = msg.get("timestamp");
        let part = |k: &str| ts.and_then(|t| t.get(k)).and_then(Value::as_i64);
        let timestamp = part("seconds").zip(part("microseconds"));
        let data = msg.get("data").cloned().unwrap_or(Value::Null);
        tracing::debug!(event, %data, "QMP event");
        // No subscribers is fine.
        let _ = shared.events.send(QmpEvent { event: event.to_string(), data, timestamp });
        return;
    }
    let reply: Reply = if let Some(ret) = msg.get("return") {
        Ok(ret.clone())
    } else if let Some(err) = msg.get("error") {
        let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        Err((field("class"), field("desc")))
    } else {
        tracing::warn!(%line, "unexpected QMP message");
        return;
    };
    let Some(id) = msg.get("id").and_then(Value::as_u64) else {
        tracing::warn!(%line, "QMP response without an id");
        return;
    };
    let waiter = shared.pending.lock().unwrap().as_mut().and_then(|p| p.remove(&id));
    match waiter {
        // The caller may have timed out and gone; nothing to do then.
        Some(tx) => drop(tx.send(reply)),
        None => tracing::debug!(id, "QMP response nobody waits for"),
    }
}
