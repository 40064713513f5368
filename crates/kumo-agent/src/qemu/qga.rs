//! A QEMU guest agent client: JSON commands over the `org.qemu.guest_agent.0` virtio-serial port, which QEMU
//! exposes on a unix socket in the run directory.
//!
//! Each call connects, resynchronises and sends one command. The channel keeps no session: a reply to an
//! earlier caller that gave up may still be in the pipe, so every call first sends `guest-sync-delimited` with
//! a fresh id and skips everything up to the guest's 0xFF marker and the reply carrying that id. A guest with
//! no agent running never answers: every step has a deadline, and nothing waits on the guest past it.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The port name guests' agents look for.
pub const PORT_NAME: &str = "org.qemu.guest_agent.0";

#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    #[error("the guest agent socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the guest agent did not answer {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("the guest agent sent something unreadable: {0}")]
    Protocol(String),
    /// The agent answered `{"error": {"class": …, "desc": …}}`.
    #[error("guest agent command {command} failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("the guest agent closed the channel")]
    Disconnected,
}

/// The guest agent of one VM, by its socket.
#[derive(Clone, Debug)]
pub struct GuestAgent {
    socket: PathBuf,
}

impl GuestAgent {
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self { socket: socket.as_ref().to_path_buf() }
    }

    /// Runs `command` with `args`, all of it (connecting, resynchronising, the reply) within `timeout`.
    pub async fn execute(&self, command: &str, args: Option<Value>, timeout: Duration) -> Result<Value, QgaError> {
        tokio::time::timeout(timeout, self.exchange(command, args))
            .await
            .map_err(|_| QgaError::Timeout(command.to_string(), timeout))?
    }

    async fn exchange(&self, command: &str, args: Option<Value>) -> Result<Value, QgaError> {
        let stream = UnixStream::connect(&self.socket).await?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let id: u32 = rand::random::<u32>() & 0x7fff_ffff;
        let sync = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
        // A leading 0xFF makes the agent drop any partial command left by an earlier caller.
        let mut hello = vec![0xFFu8];
        hello.extend(serde_json::to_vec(&sync).map_err(|e| QgaError::Protocol(e.to_string()))?);
        hello.push(b'\n');
        write.write_all(&hello).await?;
        loop {
            // Skip to the marker the agent sends before its sync reply, then read that reply.
            let mut skipped = Vec::new();
            if read.read_until(0xFF, &mut skipped).await? == 0 {
                return Err(QgaError::Disconnected);
            }
            if skipped.last() != Some(&0xFF) {
                return Err(QgaError::Disconnected);
            }
            let reply = read_line(&mut read).await?;
            if reply.get("return").and_then(Value::as_u64) == Some(u64::from(id)) {
                break;
            }
        }
        let mut msg = json!({"execute": command});
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).map_err(|e| QgaError::Protocol(e.to_string()))?;
        line.push(b'\n');
        write.write_all(&line).await?;
        if command == "guest-shutdown" {
            return Ok(Value::Null); // no reply on success: the guest goes away
        }
        let reply = read_line(&mut read).await?;
        if let Some(e) = reply.get("error") {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            return Err(QgaError::Command { command: command.into(), class: s("class"), desc: s("desc") });
        }
        reply.get("return").cloned().ok_or_else(|| QgaError::Protocol(format!("no return in {reply}")))
    }
}

/// One JSON reply line (a stray 0xFF before it is skipped).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> Result<Value, QgaError> {
    loop {
        let mut buf = Vec::new();
        if read.read_until(b'\n', &mut buf).await? == 0 {
            return Err(QgaError::Disconnected);
        }
        let text: Vec<u8> = buf.into_iter().filter(|b| *b != 0xFF).collect();
        let text = String::from_utf8_lossy(&text);
        if text.trim().is_empty() {
            continue;
        }
        return serde_json::from_str(text.trim()).map_err(|e| QgaError::Protocol(format!("{e}: {text:?}")));
    }
}

/// Reads and discards what is waiting, without blocking (used by tests to show nothing is left over).
#[cfg(test)]
async fn drain<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> usize {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(50), r.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake agent on a socket: answers sync (after replaying a stale reply), then `reply` for the command.
    async fn serve(dir: &Path, reply: Value) -> PathBuf {
        let path = dir.join("qga.sock");
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let sync = read_line(&mut r).await.unwrap();
            let id = sync["arguments"]["id"].as_u64().unwrap();
            // A leftover answer to someone else's command comes first, as it may on a real channel.
            w.write_all(b"{\"return\": {\"stale\": true}}\n").await.unwrap();
            w.write_all(&[0xFF]).await.unwrap();
            w.write_all(format!("{{\"return\": {id}}}\n").as_bytes()).await.unwrap();
            let cmd = read_line(&mut r).await.unwrap();
            assert!(cmd["execute"].is_string());
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            assert_eq!(drain(&mut r).await, 0, "nothing else was sent");
        });
        path
    }

    #[tokio::test]
    async fn a_command_gets_its_own_reply_after_resync() {
        let dir = tempfile::tempdir().unwrap();
        let path = serve(dir.path(), json!({"return": {"name": "Kumo"}})).await;
        let got = GuestAgent::new(&path).execute("guest-get-osinfo", None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, json!({"name": "Kumo"}));
    }

    #[tokio::test]
    async fn an_error_reply_names_the_command_and_class() {
        let dir = tempfile::tempdir().unwrap();
        let path = serve(dir.path(), json!({"error": {"class": "GenericError", "desc": "nope"}})).await;
        let err = GuestAgent::new(&path).execute("guest-exec", None, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.to_string().contains("guest-exec failed: GenericError: nope"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let _l = UnixListener::bind(&path).unwrap(); // accepts (the kernel does), never answers
        let t = Duration::from_millis(200);
        let err = GuestAgent::new(&path).execute("guest-ping", None, t).await.unwrap_err();
        assert!(matches!(err, QgaError::Timeout(..)), "{err}");
    }
}
