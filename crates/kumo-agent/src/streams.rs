//! WebSocket sessions to what a VMI offers on this node: its serial console and QEMU's VNC server (unix
//! sockets in its run directory), and ports of the guest (TCP or UDP to its pod address). Frames are binary,
//! as KubeVirt's `plain.kubevirt.io` protocol has them (text frames are taken as bytes too). A session ends
//! with a close frame saying why: the guest stopped, the other side closed, or it could not be reached.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};

use crate::agent::Agent;

/// The far end of a session.
#[derive(Debug)]
pub(crate) enum Far {
    /// A unix socket of the guest's QEMU (serial console, VNC).
    Unix(PathBuf),
    /// `ip:port` of the guest, over TCP.
    Tcp(String),
    /// `ip:port` of the guest, over UDP: one datagram per frame.
    Udp(String),
}

/// How often a session checks that its guest still runs (a guest gone without closing, as a deleted VM's
/// TCP peer is, would otherwise leave the session hanging).
const CHECK_EVERY: Duration = Duration::from_secs(1);

fn reply(code: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    Response::builder().status(code).body(Full::new(Bytes::from(msg.to_string()))).expect("response")
}

/// Connects the far end first (so a refusal is an HTTP answer the client sees, not a closed WebSocket), then
/// answers the upgrade and carries bytes both ways until one side ends.
pub(crate) async fn open(
    mut req: Request<hyper::body::Incoming>,
    agent: Option<Arc<Agent>>,
    uid: &str,
    far: Far,
) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return reply(StatusCode::BAD_REQUEST, "a WebSocket upgrade is required");
    };
    let connected = match connect(&far).await {
        Ok(c) => c,
        Err((code, why)) => return reply(code, &why),
    };
    // A unix socket of QEMU ends with QEMU; a TCP peer that vanished with its guest may never say so.
    let agent = if matches!(far, Far::Unix(_)) { None } else { agent };
    let protocol = req.headers().get("sec-websocket-protocol").cloned();
    let upgrade = hyper::upgrade::on(&mut req);
    let uid = uid.to_string();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (mut tx, rx) = ws.split();
        let carried = async {
            match connected {
                Connected::Unix(s) => carry(s, &mut tx, rx).await,
                Connected::Tcp(s) => carry(s, &mut tx, rx).await,
                Connected::Udp(s) => carry_datagrams(s, &mut tx, rx).await,
            }
        };
        let why = tokio::select! {
            why = carried => why,
            why = gone(agent, &uid) => why,
        };
        tracing::debug!(uid, "stream session ended: {why}");
        let frame = CloseFrame { code: CloseCode::Away, reason: why.into() };
        let _ = tx.send(Message::Close(Some(frame))).await;
        let _ = tx.close().await;
    });
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()));
    if let Some(p) = protocol {
        // KubeVirt's clients ask for "plain.kubevirt.io"; echo the first offered protocol.
        let first = p.to_str().unwrap_or("").split(',').next().unwrap_or("").trim().to_string();
        resp = resp.header("sec-websocket-protocol", first);
    }
    resp.body(Full::new(Bytes::new())).expect("response")
}

enum Connected {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
    Udp(tokio::net::UdpSocket),
}

async fn connect(far: &Far) -> Result<Connected, (StatusCode, String)> {
    let limit = Duration::from_secs(10);
    let timed_out = |what: &str| (StatusCode::GATEWAY_TIMEOUT, format!("{what}: no answer within {limit:?}"));
    match far {
        Far::Unix(path) => {
            if !path.exists() {
                return Err((StatusCode::NOT_FOUND, "this VMI does not run here, or has no such device".into()));
            }
            let s =
                tokio::net::UnixStream::connect(path).await.map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
            Ok(Connected::Unix(s))
        }
        Far::Tcp(addr) => match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => Ok(Connected::Tcp(s)),
            // Nothing listens there: the client asked for a port the guest does not serve.
            Ok(Err(e)) => Err((StatusCode::BAD_REQUEST, format!("dialing the guest at {addr}: {e}"))),
            Err(_) => Err(timed_out(&format!("dialing the guest at {addr}"))),
        },
        Far::Udp(addr) => {
            let s =
                tokio::net::UdpSocket::bind("0.0.0.0:0").await.map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
            s.connect(addr).await.map_err(|e| (StatusCode::BAD_REQUEST, format!("the guest at {addr}: {e}")))?;
            Ok(Connected::Udp(s))
        }
    }
}

type Sink<S> = futures::stream::SplitSink<tokio_tungstenite::WebSocketStream<S>, Message>;
type Source<S> = futures::stream::SplitStream<tokio_tungstenite::WebSocketStream<S>>;

/// Bytes both ways between the WebSocket and a stream; why it ended.
async fn carry<F, S>(far: F, tx: &mut Sink<S>, mut rx: Source<S>) -> String
where
    F: AsyncRead + AsyncWrite,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut fr, mut fw) = tokio::io::split(far);
    let to_ws = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match fr.read(&mut buf).await {
                Ok(0) => return "the guest side closed".to_string(),
                Ok(n) => {
                    if tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return "the client went away".to_string();
                    }
                }
                Err(e) => return format!("reading from the guest side: {e}"),
            }
        }
    };
    let to_far = async {
        while let Some(msg) = rx.next().await {
            let written = match msg {
                Ok(Message::Binary(b)) => fw.write_all(&b).await,
                Ok(Message::Text(t)) => fw.write_all(t.as_bytes()).await,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => Ok(()),
            };
            if let Err(e) = written {
                return format!("writing to the guest side: {e}");
            }
        }
        let _ = fw.shutdown().await;
        "the client closed".to_string()
    };
    tokio::select! {
        why = to_ws => why,
        why = to_far => why,
    }
}

/// Datagrams both ways: each frame one datagram, each datagram one frame.
async fn carry_datagrams<S>(far: tokio::net::UdpSocket, tx: &mut Sink<S>, mut rx: Source<S>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let to_ws = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match far.recv(&mut buf).await {
                Ok(n) => {
                    if tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return "the client went away".to_string();
                    }
                }
                Err(e) => return format!("receiving from the guest: {e}"),
            }
        }
    };
    let to_far = async {
        while let Some(Ok(msg)) = rx.next().await {
            let sent = match msg {
                Message::Binary(b) => far.send(&b).await.map(|_| ()),
                Message::Text(t) => far.send(t.as_bytes()).await.map(|_| ()),
                Message::Close(_) => break,
                _ => Ok(()),
            };
            if let Err(e) = sent {
                return format!("sending to the guest: {e}");
            }
        }
        "the client closed".to_string()
    };
    tokio::select! {
        why = to_ws => why,
        why = to_far => why,
    }
}

/// Resolves once the VMI `uid` no longer runs on this node (stopped, deleted, or its QEMU died), having run
/// here: a guest the agent is still reattaching after a restart is not gone.
async fn gone(agent: Option<Arc<Agent>>, uid: &str) -> String {
    let Some(agent) = agent else { return std::future::pending().await };
    let mut tick = tokio::time::interval(CHECK_EVERY);
    let mut seen = false;
    loop {
        tick.tick().await;
        let alive = agent.vms.lock().await.get(uid).is_some_and(|l| l.vm.is_alive());
        if alive {
            seen = true;
        } else if seen {
            return "the VMI stopped".to_string();
        }
    }
}
