//! Reaching into guests through the API server, as virtctl does: `kumo port-forward`, `kumo ssh`, `kumo scp`
//! and `kumo vnc`. Each TCP connection is one WebSocket to KubeVirt's `portforward/{port}` (or `vnc`)
//! subresource, with binary frames; `ssh` and `scp` run the system's OpenSSH client with this binary's
//! `port-forward --stdio` as its ProxyCommand.

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// `TYPE/NAME[/NAMESPACE]` or `TYPE/NAME[.NAMESPACE]` as virtctl takes it (`vmi/web`, `vm/db/prod`).
#[derive(Debug, PartialEq)]
pub struct GuestRef {
    pub plural: &'static str,
    pub name: String,
    pub namespace: Option<String>,
}

impl GuestRef {
    pub fn parse(s: &str) -> Result<GuestRef> {
        let mut parts = s.splitn(3, '/');
        let (Some(kind), Some(name)) = (parts.next(), parts.next()) else {
            bail!("{s:?}: expected TYPE/NAME[/NAMESPACE], e.g. vmi/web or vm/web/prod");
        };
        let plural = crate::virtctl::kind_plural(kind)?;
        let (name, namespace) = match (parts.next(), name.split_once('.')) {
            (Some(ns), _) => (name.to_string(), Some(ns.to_string())),
            (None, Some((n, ns))) => (n.to_string(), Some(ns.to_string())),
            (None, None) => (name.to_string(), None),
        };
        anyhow::ensure!(!name.is_empty(), "{s:?}: the name is empty");
        Ok(GuestRef { plural, name, namespace })
    }
}

/// A WebSocket to `{plural}/{name}/{sub}` of KubeVirt's subresource API, with the kubeconfig's credentials.
pub async fn open(
    config: &kube::Config,
    ns: &str,
    plural: &str,
    name: &str,
    sub: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    use secrecy::ExposeSecret;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (host, port, stream) = crate::virtctl::connect_tls(config, &config.cluster_url, false).await?;
    let path = format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/{plural}/{name}/{sub}");
    let mut req = format!("wss://{host}:{port}{path}").into_client_request()?;
    if let Some(t) = &config.auth_info.token {
        req.headers_mut().insert("authorization", format!("Bearer {}", t.expose_secret()).parse()?);
    }
    req.headers_mut().insert("sec-websocket-protocol", "plain.kubevirt.io".parse()?);
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                .unwrap_or(body);
            bail!("{sub} {name}: {msg} ({})", resp.status())
        }
        Err(e) => Err(e).with_context(|| format!("{sub} {name}")),
    }
}

/// What the node agent says when the guest closed the connection.
const GUEST_CLOSED: &str = "the guest side closed";

/// Carries bytes between a local stream and a WebSocket until either ends; the server's close reason, if any.
pub async fn splice<R, W, S>(
    mut read: R,
    mut write: W,
    ws: tokio_tungstenite::WebSocketStream<S>,
) -> Result<Option<String>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = read.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            tx.send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]))).await?;
        }
        // The local side is done sending; the guest's answer may still be coming.
        std::future::pending::<()>().await;
        anyhow::Ok(None)
    };
    let down = async {
        while let Some(msg) = rx.next().await {
            match msg? {
                Message::Binary(b) => write.write_all(&b).await?,
                Message::Text(t) => write.write_all(t.as_bytes()).await?,
                Message::Close(frame) => {
                    write.flush().await?;
                    return Ok(frame.map(|f| f.reason.to_string()).filter(|r| !r.is_empty()));
                }
                _ => {}
            }
            write.flush().await?;
        }
        anyhow::Ok(None)
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

/// `kumo port-forward TYPE/NAME[/NS] [LOCAL:]REMOTE...`, or with `--stdio` one port over stdin/stdout (what
/// ssh's ProxyCommand runs).
pub async fn port_forward(
    config: kube::Config,
    target: &str,
    ports: &[String],
    stdio: bool,
    address: &str,
) -> Result<()> {
    let g = GuestRef::parse(target)?;
    let ns = g.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    if stdio {
        let [port] = ports else { bail!("--stdio forwards exactly one port") };
        let remote: u16 = port.parse().with_context(|| format!("port {port:?}"))?;
        let ws = open(&config, &ns, g.plural, &g.name, &format!("portforward/{remote}/tcp")).await?;
        // The guest closing the connection is how a session normally ends: only other reasons are news.
        if let Some(why) = splice(tokio::io::stdin(), tokio::io::stdout(), ws).await?.filter(|w| w != GUEST_CLOSED) {
            eprintln!("port-forward: {why}");
        }
        return Ok(());
    }
    anyhow::ensure!(!ports.is_empty(), "name at least one port: LOCAL:REMOTE or REMOTE");
    let mut listeners = Vec::new();
    for p in ports {
        let (local, remote) = match p.split_once(':') {
            Some((l, r)) => (l.parse::<u16>().context("local port")?, r.parse::<u16>().context("remote port")?),
            None => {
                let r = p.parse::<u16>().with_context(|| format!("port {p:?}"))?;
                (r, r)
            }
        };
        let l = tokio::net::TcpListener::bind((address, local))
            .await
            .with_context(|| format!("listening on {address}:{local}"))?;
        println!("Forwarding from {} -> {remote}", l.local_addr()?);
        listeners.push((l, remote));
    }
    let config = std::sync::Arc::new(config);
    let mut tasks = Vec::new();
    for (l, remote) in listeners {
        let (config, ns, g_plural, name) = (config.clone(), ns.clone(), g.plural, g.name.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let (conn, peer) = match l.accept().await {
                    Ok(c) => c,
                    Err(e) => return anyhow::Result::<()>::Err(e.into()),
                };
                let (config, ns, name) = (config.clone(), ns.clone(), name.clone());
                tokio::spawn(async move {
                    let sub = format!("portforward/{remote}/tcp");
                    let (r, w) = conn.into_split();
                    let result = match open(&config, &ns, g_plural, &name, &sub).await {
                        Ok(ws) => splice(r, w, ws).await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(Some(why)) => eprintln!("connection from {peer} ended: {why}"),
                        Ok(None) => {}
                        Err(e) => eprintln!("connection from {peer}: {e:#}"),
                    }
                });
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// `kumo vnc TYPE/NAME`: a local port that carries RFB to the guest's screen, for any VNC viewer.
pub async fn vnc(config: kube::Config, target: &str, port: u16) -> Result<()> {
    let g = GuestRef::parse(target)?;
    let ns = g.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    // A VM's VMI has its name, as virtctl takes it.
    let vmi = g.name.clone();
    // Checked before listening, so a guest that is not running is an error now, not at the first connection.
    drop(open(&config, &ns, "virtualmachineinstances", &vmi, "vnc").await?);
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.context("listening for the VNC viewer")?;
    let addr = l.local_addr()?;
    println!("VNC of {ns}/{vmi} on {addr}: point a viewer at it, e.g. `vncviewer {}::{}`", addr.ip(), addr.port());
    loop {
        let (conn, _) = l.accept().await?;
        let ws = open(&config, &ns, "virtualmachineinstances", &vmi, "vnc").await?;
        let (r, w) = conn.into_split();
        match splice(r, w, ws).await {
            Ok(Some(why)) => eprintln!("VNC session ended: {why}"),
            Ok(None) => eprintln!("VNC viewer disconnected"),
            Err(e) => eprintln!("VNC session: {e:#}"),
        }
    }
}

/// `kumo ssh|scp`: the system's OpenSSH client, reaching the guest through `kumo port-forward --stdio`. The
/// first argument naming a guest (`[USER@]vmi/NAME[/NS]`, with `:PATH` for scp) becomes the ProxyCommand's
/// target; OpenSSH sees the host name `vmi.NAME.NS` instead (slashes are no host name).
pub fn openssh(
    program: &str,
    kubeconfig: Option<&std::path::Path>,
    default_ns: &str,
    port: u16,
    args: &[String],
) -> Result<()> {
    let me = std::env::current_exe().context("locating the kumo binary")?;
    let mut args = args.to_vec();
    let Some((at, guest, rewritten)) = args.iter().enumerate().find_map(|(i, a)| {
        let (guest, rewritten) = guest_arg(a, default_ns)?;
        Some((i, guest, rewritten))
    }) else {
        bail!("name the guest as [USER@]vmi/NAME[/NAMESPACE] (or vm/...), as virtctl {program} does");
    };
    args[at] = rewritten;
    let mut proxy = format!("{} port-forward --stdio", shell_quote(&me.to_string_lossy()));
    if let Some(k) = kubeconfig {
        proxy.push_str(&format!(" --kubeconfig {}", shell_quote(&k.to_string_lossy())));
    }
    proxy.push_str(&format!(" {} {port}", shell_quote(&guest)));
    let status = std::process::Command::new(program)
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .args(&args)
        .status()
        .with_context(|| format!("running {program}: install OpenSSH's client (apt-get install openssh-client)"))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// For an argument naming a guest: the reference for port-forward (`vmi/NAME/NS`), and the argument as OpenSSH
/// gets it (`[USER@]vmi.NAME.NS[:PATH]`).
fn guest_arg(arg: &str, default_ns: &str) -> Option<(String, String)> {
    if arg.starts_with('-') {
        return None;
    }
    let (user, rest) = match arg.split_once('@') {
        Some((u, r)) => (format!("{u}@"), r),
        None => (String::new(), arg),
    };
    let (target, path) = match rest.split_once(':') {
        Some((t, p)) => (t, format!(":{p}")),
        None => (rest, String::new()),
    };
    let g = GuestRef::parse(target).ok()?;
    let kind = if g.plural == "virtualmachines" { "vm" } else { "vmi" };
    let ns = g.namespace.unwrap_or_else(|| default_ns.to_string());
    Some((format!("{kind}/{}/{ns}", g.name), format!("{user}{kind}.{}.{ns}{path}", g.name)))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_as_virtctl_takes_them() {
        let g = GuestRef::parse("vm/web/prod").unwrap();
        assert_eq!((g.plural, g.name.as_str(), g.namespace.as_deref()), ("virtualmachines", "web", Some("prod")));
        let g = GuestRef::parse("vmi/web.prod").unwrap();
        assert_eq!(
            (g.plural, g.name.as_str(), g.namespace.as_deref()),
            ("virtualmachineinstances", "web", Some("prod"))
        );
        assert_eq!(GuestRef::parse("vmi/web").unwrap().namespace, None);
        assert!(GuestRef::parse("web").is_err());
        assert!(GuestRef::parse("pod/web").is_err());
        let (guest, arg) = guest_arg("root@vmi/web/prod:/tmp/x", "default").unwrap();
        assert_eq!((guest.as_str(), arg.as_str()), ("vmi/web/prod", "root@vmi.web.prod:/tmp/x"));
        assert_eq!(guest_arg("vm/db", "default").unwrap(), ("vm/db/default".into(), "vm.db.default".into()));
        assert!(guest_arg("-p", "default").is_none() && guest_arg("./file", "d").is_none());
        assert!(guest_arg("/tmp/vmi/x", "d").is_none());
    }
}
