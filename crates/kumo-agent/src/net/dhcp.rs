//! A DHCPv4 server for exactly one client: the guest of one VMI.
//!
//! It runs inside the VMI's network namespace, bound to the inner bridge (`k6t-br`), and hands out one fixed
//! address. It must be listening before QEMU starts, and it answers a client that has no address yet by
//! broadcast (255.255.255.255:68): a unicast OFFER to an address the client does not have yet is what made the
//! guest's first DHCPOFFERs get lost with dnsmasq (see DESIGN.md, "boot-time trap").
//!
//! Entry points: [`bind_in_netns`] creates the socket inside a namespace, [`serve`] answers until shutdown, and
//! [`respond`] is the pure request → reply function the server is built on.

pub mod wire;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn};
use wire::{opt, Message, MessageType, Reply};

/// What the one client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The server identifier (option 54): an address of the interface the server is bound to.
    pub server_ip: Ipv4Addr,
    /// The address handed to the guest (`yiaddr`).
    pub client_ip: Ipv4Addr,
    /// Prefix length of the guest's subnet (option 1).
    pub prefix_len: u8,
    /// Default gateway (option 3; option 121 too when it is outside the guest's subnet).
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// DNS search list (option 119).
    pub search: Vec<String>,
    /// Hostname (option 12).
    pub hostname: Option<String>,
    /// Lease time in seconds (option 51).
    pub lease_secs: u32,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Only answer this hardware address, when set. Other clients (for example guests of other VMIs whose
    /// broadcasts cross a shared L2 segment in bridge mode) are ignored.
    pub client_mac: Option<[u8; 6]>,
}

impl DhcpConfig {
    pub fn subnet_mask(&self) -> Ipv4Addr {
        prefix_mask(self.prefix_len)
    }

    /// Whether `ip` is inside the guest's subnet.
    pub fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.subnet_mask());
        u32::from(ip) & m == u32::from(self.client_ip) & m
    }
}

/// The netmask for a prefix length (clamped to 32).
pub fn prefix_mask(prefix_len: u8) -> Ipv4Addr {
    let p = prefix_len.min(32) as u32;
    Ipv4Addr::from(if p == 0 { 0 } else { u32::MAX << (32 - p) })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A reply and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub reply: Reply,
    pub dest: SocketAddrV4,
}

const BROADCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);

/// Decides the answer to one client message. `None` means stay silent (another client, another server
/// selected, RELEASE, DECLINE, or a message type a server never answers).
pub fn respond(cfg: &DhcpConfig, m: &Message) -> Option<Response> {
    let mac = m.mac()?;
    if cfg.client_mac.is_some_and(|want| want != mac) {
        return None;
    }
    let requested = m.option_ip(opt::REQUESTED_IP).or((!m.ciaddr.is_unspecified()).then_some(m.ciaddr));
    let (msg_type, yiaddr) = match m.msg_type {
        MessageType::Discover => (MessageType::Offer, cfg.client_ip),
        MessageType::Request => {
            if m.option_ip(opt::SERVER_ID).is_some_and(|s| s != cfg.server_ip) {
                return None; // the client chose another server
            }
            match requested {
                Some(ip) if ip == cfg.client_ip => (MessageType::Ack, cfg.client_ip),
                _ => (MessageType::Nak, Ipv4Addr::UNSPECIFIED),
            }
        }
        MessageType::Inform => (MessageType::Ack, Ipv4Addr::UNSPECIFIED),
        MessageType::Release | MessageType::Decline | MessageType::Offer | MessageType::Ack | MessageType::Nak => {
            return None
        }
    };
    let mut options = vec![(opt::SERVER_ID, cfg.server_ip.octets().to_vec())];
    if msg_type == MessageType::Nak {
        options.push((opt::MESSAGE, b"requested address is not this client's".to_vec()));
    } else {
        if m.msg_type != MessageType::Inform {
            options.push((opt::LEASE_TIME, cfg.lease_secs.to_be_bytes().to_vec()));
        }
        options.extend(config_options(cfg));
    }
    let reply = Reply {
        msg_type,
        xid: m.xid,
        flags: m.flags,
        ciaddr: if msg_type == MessageType::Nak { Ipv4Addr::UNSPECIFIED } else { m.ciaddr },
        yiaddr,
        giaddr: m.giaddr,
        chaddr: m.chaddr,
        hlen: m.hlen,
        options,
    };
    // RFC 2131 §4.1: unicast to ciaddr when the client has an address; otherwise (and for NAKs, and when the
    // client asks for it) broadcast. Never unicast to yiaddr: the client cannot receive it yet.
    let dest = if msg_type == MessageType::Nak || m.ciaddr.is_unspecified() || m.broadcast_flag() {
        BROADCAST
    } else {
        SocketAddrV4::new(m.ciaddr, 68)
    };
    Some(Response { reply, dest })
}

/// The configuration options of an OFFER/ACK.
fn config_options(cfg: &DhcpConfig) -> Vec<(u8, Vec<u8>)> {
    let mut o = vec![(opt::SUBNET_MASK, cfg.subnet_mask().octets().to_vec())];
    if cfg.prefix_len < 31 {
        let bcast = u32::from(cfg.client_ip) | !u32::from(cfg.subnet_mask());
        o.push((opt::BROADCAST_ADDR, Ipv4Addr::from(bcast).octets().to_vec()));
    }
    if let Some(r) = cfg.router {
        o.push((opt::ROUTER, r.octets().to_vec()));
        if !cfg.in_subnet(r) {
            // As KubeVirt's bridge binding does for a /32 pod address: a host route to the gateway, then the
            // default route through it. RFC 3442 clients use this instead of option 3.
            let routes = [(r, 32, Ipv4Addr::UNSPECIFIED), (Ipv4Addr::UNSPECIFIED, 0, r)];
            o.push((opt::CLASSLESS_ROUTES, wire::classless_routes(&routes)));
        }
    }
    if !cfg.dns.is_empty() {
        o.push((opt::DNS, cfg.dns.iter().flat_map(|d| d.octets()).collect()));
    }
    if let Some(d) = &cfg.domain {
        o.push((opt::DOMAIN_NAME, d.as_bytes().to_vec()));
    }
    if !cfg.search.is_empty() {
        o.push((opt::DOMAIN_SEARCH, wire::domain_search(&cfg.search)));
    }
    if let Some(h) = &cfg.hostname {
        o.push((opt::HOSTNAME, h.as_bytes().to_vec()));
    }
    if let Some(mtu) = cfg.mtu {
        o.push((opt::MTU, mtu.to_be_bytes().to_vec()));
    }
    o
}

/// Creates the server socket in the current namespace: UDP 0.0.0.0:67, SO_BROADCAST, SO_BINDTODEVICE `iface`.
pub fn bind(iface: &str) -> io::Result<UdpSocket> {
    let fd = socket::socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, SockProtocol::Udp)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::Broadcast, &true)?;
    socket::setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(iface))?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, 67))?;
    Ok(UdpSocket::from(fd))
}

/// Creates the server socket inside the network namespace `netns`, bound to `iface` there.
pub fn bind_in_netns(netns: &Path, iface: &str) -> io::Result<UdpSocket> {
    super::netns::in_netns(netns, || bind(iface))
}

/// Answers DHCP on `socket` until `shutdown` completes. Malformed datagrams and send errors are logged and
/// skipped; only a failing receive ends the server with an error.
pub async fn serve(socket: UdpSocket, config: DhcpConfig, shutdown: impl Future) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let mut buf = vec![0u8; 1500];
    tokio::pin!(shutdown);
    loop {
        let (n, from) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            },
        };
        let msg = match wire::parse(&buf[..n]) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%from, error = %e, "dhcp: ignoring datagram");
                continue;
            }
        };
        let Some(resp) = respond(&config, &msg) else {
            tracing::debug!(%from, kind = ?msg.msg_type, xid = msg.xid, "dhcp: no reply");
            continue;
        };
        let packet = wire::encode(&resp.reply);
        tracing::debug!(kind = ?resp.reply.msg_type, xid = msg.xid, dest = %resp.dest, "dhcp: reply");
        if let Err(e) = socket.send_to(&packet, resp.dest).await {
            // A unicast to ciaddr can fail when there is no route to it (bridge mode's placeholder address).
            tracing::debug!(dest = %resp.dest, error = %e, "dhcp: unicast failed, broadcasting");
            if let Err(e) = socket.send_to(&packet, BROADCAST).await {
                tracing::warn!(error = %e, "dhcp: cannot send reply");
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset)
        || e.raw_os_error() == Some(nix::libc::ENETDOWN)
}

#[cfg(test)]
mod tests {
    use super::wire::{encode_request, parse, FLAG_BROADCAST};
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x4b, 0x56, 0xaa, 0xbb, 0xcc];

    fn cfg() -> DhcpConfig {
        DhcpConfig {
            server_ip: Ipv4Addr::new(10, 0, 2, 1),
            client_ip: Ipv4Addr::new(10, 0, 2, 2),
            prefix_len: 24,
            router: Some(Ipv4Addr::new(10, 0, 2, 1)),
            dns: vec![Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(1, 1, 1, 1)],
            domain: Some("cluster.local".into()),
            search: vec!["default.svc.cluster.local".into()],
            hostname: Some("vm1".into()),
            lease_secs: 3600,
            mtu: Some(1400),
            client_mac: Some(MAC),
        }
    }

    fn req(kind: u8, mac: [u8; 6], ciaddr: Ipv4Addr, flags: u16, extra: &[(u8, Vec<u8>)]) -> Message {
        let mut o = vec![(opt::MESSAGE_TYPE, vec![kind])];
        o.extend_from_slice(extra);
        parse(&encode_request(0x1234, mac, flags, ciaddr, &o)).unwrap()
    }

    fn reply_opt(r: &Response, code: u8) -> Option<Vec<u8>> {
        r.reply.options.iter().find(|(c, _)| *c == code).map(|(_, v)| v.clone())
    }

    #[test]
    fn discover_gets_broadcast_offer_with_options() {
        let r = respond(&cfg(), &req(1, MAC, Ipv4Addr::UNSPECIFIED, 0, &[])).unwrap();
        assert_eq!(r.reply.msg_type, MessageType::Offer);
        assert_eq!(r.reply.yiaddr, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(r.reply.xid, 0x1234);
        assert_eq!(r.dest, BROADCAST);
        assert_eq!(reply_opt(&r, opt::SUBNET_MASK), Some(vec![255, 255, 255, 0]));
        assert_eq!(reply_opt(&r, opt::ROUTER), Some(vec![10, 0, 2, 1]));
        assert_eq!(reply_opt(&r, opt::SERVER_ID), Some(vec![10, 0, 2, 1]));
        assert_eq!(reply_opt(&r, opt::DNS), Some(vec![10, 96, 0, 10, 1, 1, 1, 1]));
        assert_eq!(reply_opt(&r, opt::LEASE_TIME), Some(3600u32.to_be_bytes().to_vec()));
        assert_eq!(reply_opt(&r, opt::MTU), Some(vec![0x05, 0x78]));
        assert_eq!(reply_opt(&r, opt::HOSTNAME), Some(b"vm1".to_vec()));
        assert_eq!(reply_opt(&r, opt::DOMAIN_NAME), Some(b"cluster.local".to_vec()));
        assert_eq!(reply_opt(&r, opt::BROADCAST_ADDR), Some(vec![10, 0, 2, 255]));
        assert!(reply_opt(&r, opt::DOMAIN_SEARCH).is_some());
        assert_eq!(reply_opt(&r, opt::CLASSLESS_ROUTES), None, "router is on-link");
        // The encoded form parses back (as a request would, after flipping op).
        let mut b = wire::encode(&r.reply);
        b[0] = 1;
        let back = parse(&b).unwrap();
        assert_eq!(back.msg_type, MessageType::Offer);
        assert_eq!(back.yiaddr, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(back.option_ip(opt::ROUTER), Some(Ipv4Addr::new(10, 0, 2, 1)));
    }

    #[test]
    fn request_ack_and_nak() {
        let c = cfg();
        let sid = (opt::SERVER_ID, vec![10, 0, 2, 1]);
        let good = req(3, MAC, Ipv4Addr::UNSPECIFIED, 0, &[(opt::REQUESTED_IP, vec![10, 0, 2, 2]), sid.clone()]);
        let r = respond(&c, &good).unwrap();
        assert_eq!((r.reply.msg_type, r.reply.yiaddr, r.dest), (MessageType::Ack, c.client_ip, BROADCAST));

        let bad = req(3, MAC, Ipv4Addr::UNSPECIFIED, 0, &[(opt::REQUESTED_IP, vec![10, 0, 2, 9])]);
        let r = respond(&c, &bad).unwrap();
        assert_eq!((r.reply.msg_type, r.reply.yiaddr, r.dest), (MessageType::Nak, Ipv4Addr::UNSPECIFIED, BROADCAST));
        assert_eq!(reply_opt(&r, opt::LEASE_TIME), None);

        // A request with neither option 50 nor ciaddr cannot be acknowledged.
        let r = respond(&c, &req(3, MAC, Ipv4Addr::UNSPECIFIED, 0, &[])).unwrap();
        assert_eq!(r.reply.msg_type, MessageType::Nak);

        // Another server was selected: stay silent.
        let other = req(3, MAC, Ipv4Addr::UNSPECIFIED, 0, &[(opt::SERVER_ID, vec![10, 0, 2, 99])]);
        assert_eq!(respond(&c, &other), None);
    }

    #[test]
    fn renewal_is_unicast_unless_broadcast_flag() {
        let c = cfg();
        let r = respond(&c, &req(3, MAC, c.client_ip, 0, &[])).unwrap();
        assert_eq!(r.reply.msg_type, MessageType::Ack);
        assert_eq!(r.reply.ciaddr, c.client_ip);
        assert_eq!(r.dest, SocketAddrV4::new(c.client_ip, 68));
        let r = respond(&c, &req(3, MAC, c.client_ip, FLAG_BROADCAST, &[])).unwrap();
        assert_eq!(r.dest, BROADCAST);
        assert_eq!(r.reply.flags, FLAG_BROADCAST);
    }

    #[test]
    fn inform_release_decline_and_strangers() {
        let c = cfg();
        let r = respond(&c, &req(8, MAC, c.client_ip, 0, &[])).unwrap();
        assert_eq!(r.reply.msg_type, MessageType::Ack);
        assert_eq!(r.reply.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(reply_opt(&r, opt::LEASE_TIME), None);
        assert_eq!(reply_opt(&r, opt::ROUTER), Some(vec![10, 0, 2, 1]));
        assert_eq!(respond(&c, &req(7, MAC, c.client_ip, 0, &[])), None);
        assert_eq!(respond(&c, &req(4, MAC, Ipv4Addr::UNSPECIFIED, 0, &[])), None);
        let stranger = [0x02, 0, 0, 0, 0, 1];
        assert_eq!(respond(&c, &req(1, stranger, Ipv4Addr::UNSPECIFIED, 0, &[])), None);
        let any = DhcpConfig { client_mac: None, ..c };
        assert!(respond(&any, &req(1, stranger, Ipv4Addr::UNSPECIFIED, 0, &[])).is_some());
    }

    #[test]
    fn off_subnet_router_gets_classless_routes() {
        let c = DhcpConfig {
            client_ip: Ipv4Addr::new(10, 244, 0, 7),
            prefix_len: 32,
            router: Some(Ipv4Addr::new(10, 244, 0, 1)),
            server_ip: Ipv4Addr::new(169, 254, 75, 10),
            ..cfg()
        };
        let r = respond(&c, &req(1, MAC, Ipv4Addr::UNSPECIFIED, 0, &[])).unwrap();
        assert_eq!(reply_opt(&r, opt::SUBNET_MASK), Some(vec![255, 255, 255, 255]));
        assert_eq!(reply_opt(&r, opt::BROADCAST_ADDR), None);
        assert_eq!(reply_opt(&r, opt::CLASSLESS_ROUTES), Some(vec![32, 10, 244, 0, 1, 0, 0, 0, 0, 0, 10, 244, 0, 1]));
    }

    #[test]
    fn helpers() {
        assert_eq!(prefix_mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_mask(32), Ipv4Addr::BROADCAST);
        assert_eq!(parse_mac("02:4b:56:AA:bb:0c"), Some([2, 0x4b, 0x56, 0xaa, 0xbb, 0x0c]));
        assert_eq!(parse_mac("02:4b:56:aa:bb"), None);
        assert_eq!(parse_mac("02:4b:56:aa:bb:cc:dd"), None);
        assert_eq!(parse_mac("zz:4b:56:aa:bb:cc"), None);
    }

    /// The socket really binds inside another namespace, and the binding is visible only there.
    #[test]
    fn bind_inside_a_namespace() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP bind_inside_a_namespace: needs root");
            return;
        }
        let name = format!("kumo-dt-{:08x}", rand::random::<u32>());
        let run = |args: &[&str]| std::process::Command::new("ip").args(args).status().unwrap().success();
        assert!(run(&["netns", "add", &name]));
        struct Del<'a>(&'a str);
        impl Drop for Del<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip").args(["netns", "del", self.0]).status();
            }
        }
        let _del = Del(&name);
        assert!(run(&["-n", &name, "link", "set", "lo", "up"]));
        let sock = bind_in_netns(Path::new(&format!("/run/netns/{name}")), "lo").unwrap();
        assert_eq!(sock.local_addr().unwrap().port(), 67);
        let udp = |ns: &[&str]| {
            let out = std::process::Command::new("ip").args(ns).args(["cat", "/proc/net/udp"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).contains(":0043 ")
        };
        assert!(udp(&["netns", "exec", &name]), "socket not in the namespace");
    }
}
