//! The DHCPv4 wire format (RFC 2131/2132): decoding a client's BOOTREQUEST and encoding a server's BOOTREPLY.
//! Pure functions; no I/O.

use std::net::Ipv4Addr;

/// BOOTP fixed header (236 bytes) plus the 4-byte magic cookie.
const HEADER_LEN: usize = 240;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Replies are padded to the BOOTP minimum; some clients drop shorter packets.
const MIN_REPLY_LEN: usize = 300;
const SNAME: std::ops::Range<usize> = 44..108;
const FILE: std::ops::Range<usize> = 108..236;

/// The broadcast bit of the `flags` field.
pub const FLAG_BROADCAST: u16 = 0x8000;

/// Option codes used by kumo.
pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const MTU: u8 = 26;
    pub const BROADCAST_ADDR: u8 = 28;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const MESSAGE: u8 = 56;
    pub const DOMAIN_SEARCH: u8 = 119;
    pub const CLASSLESS_ROUTES: u8 = 121;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }
}

/// Why a datagram is not a DHCP message we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("datagram too short ({0} bytes)")]
    TooShort(usize),
    #[error("not a BOOTREQUEST (op {0})")]
    NotRequest(u8),
    #[error("missing DHCP magic cookie")]
    NoMagic,
    #[error("truncated option {0}")]
    Truncated(u8),
    #[error("missing or unknown DHCP message type")]
    NoMessageType,
}

/// A decoded client message: the fixed fields the server needs and the raw options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub msg_type: MessageType,
    /// Options in the order seen (code, value); PAD and END are not included.
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Message {
    /// The first value of an option.
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options.iter().find(|(c, _)| *c == code).map(|(_, v)| v.as_slice())
    }

    /// An option holding one IPv4 address.
    pub fn option_ip(&self, code: u8) -> Option<Ipv4Addr> {
        let v = self.option(code)?;
        let b: [u8; 4] = v.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    }

    /// The client's Ethernet address, when the hardware type is Ethernet.
    pub fn mac(&self) -> Option<[u8; 6]> {
        (self.htype == 1 && self.hlen == 6).then(|| self.chaddr[..6].try_into().expect("6 bytes"))
    }

    pub fn broadcast_flag(&self) -> bool {
        self.flags & FLAG_BROADCAST != 0
    }
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Parses a TLV option area into `out`; returns the overload value (option 52) if present.
fn parse_options(mut b: &[u8], out: &mut Vec<(u8, Vec<u8>)>) -> Result<Option<u8>, ParseError> {
    let mut overload = None;
    while let Some((&code, rest)) = b.split_first() {
        match code {
            opt::PAD => b = rest,
            opt::END => break,
            _ => {
                let (&len, rest) = rest.split_first().ok_or(ParseError::Truncated(code))?;
                let len = len as usize;
                if rest.len() < len {
                    return Err(ParseError::Truncated(code));
                }
                let value = rest[..len].to_vec();
                if code == opt::OVERLOAD && len == 1 {
                    overload = Some(value[0]);
                }
                out.push((code, value));
                b = &rest[len..];
            }
        }
    }
    Ok(overload)
}

/// Decodes a client message (op BOOTREQUEST with a DHCP message type).
pub fn parse(b: &[u8]) -> Result<Message, ParseError> {
    if b.len() < HEADER_LEN {
        return Err(ParseError::TooShort(b.len()));
    }
    if b[0] != 1 {
        return Err(ParseError::NotRequest(b[0]));
    }
    if b[236..240] != MAGIC {
        return Err(ParseError::NoMagic);
    }
    let mut options = Vec::new();
    let overload = parse_options(&b[HEADER_LEN..], &mut options)?;
    // RFC 2132 §9.3: the `file` and/or `sname` fields may carry more options.
    if let Some(o) = overload {
        if o & 1 != 0 {
            parse_options(&b[FILE], &mut options)?;
        }
        if o & 2 != 0 {
            parse_options(&b[SNAME], &mut options)?;
        }
    }
    let msg_type = options
        .iter()
        .find(|(c, v)| *c == opt::MESSAGE_TYPE && v.len() == 1)
        .and_then(|(_, v)| MessageType::from_u8(v[0]))
        .ok_or(ParseError::NoMessageType)?;
    Ok(Message {
        op: b[0],
        htype: b[1],
        hlen: b[2],
        xid: u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")),
        secs: u16::from_be_bytes([b[8], b[9]]),
        flags: u16::from_be_bytes([b[10], b[11]]),
        ciaddr: ip_at(b, 12),
        yiaddr: ip_at(b, 16),
        siaddr: ip_at(b, 20),
        giaddr: ip_at(b, 24),
        chaddr: b[28..44].try_into().expect("16 bytes"),
        msg_type,
        options,
    })
}

/// A server reply before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub msg_type: MessageType,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub hlen: u8,
    /// Options after the message type, in order (code, value). Values longer than 255 bytes are split into
    /// consecutive instances of the same code (RFC 3396).
    pub options: Vec<(u8, Vec<u8>)>,
}

/// Encodes a BOOTREPLY.
pub fn encode(r: &Reply) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN];
    b[0] = 2; // BOOTREPLY
    b[1] = 1; // Ethernet
    b[2] = r.hlen;
    b[4..8].copy_from_slice(&r.xid.to_be_bytes());
    b[10..12].copy_from_slice(&r.flags.to_be_bytes());
    b[12..16].copy_from_slice(&r.ciaddr.octets());
    b[16..20].copy_from_slice(&r.yiaddr.octets());
    b[24..28].copy_from_slice(&r.giaddr.octets());
    b[28..44].copy_from_slice(&r.chaddr);
    b[236..240].copy_from_slice(&MAGIC);
    b.extend_from_slice(&[opt::MESSAGE_TYPE, 1, r.msg_type as u8]);
    for (code, value) in &r.options {
        if value.is_empty() {
            b.extend_from_slice(&[*code, 0]);
        }
        for chunk in value.chunks(255) {
            b.push(*code);
            b.push(chunk.len() as u8);
            b.extend_from_slice(chunk);
        }
    }
    b.push(opt::END);
    if b.len() < MIN_REPLY_LEN {
        b.resize(MIN_REPLY_LEN, 0);
    }
    b
}

/// Option 121 (RFC 3442) value: for each route, the prefix length, the significant octets of the destination,
/// then the router.
pub fn classless_routes(routes: &[(Ipv4Addr, u8, Ipv4Addr)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (dest, len, via) in routes {
        let len = (*len).min(32);
        v.push(len);
        v.extend_from_slice(&dest.octets()[..(len as usize).div_ceil(8)]);
        v.extend_from_slice(&via.octets());
    }
    v
}

/// Option 119 (RFC 3397) value: domain names in DNS wire format, without compression.
pub fn domain_search(domains: &[String]) -> Vec<u8> {
    let mut v = Vec::new();
    for d in domains {
        for label in d.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
            let label = &label.as_bytes()[..label.len().min(63)];
            v.push(label.len() as u8);
            v.extend_from_slice(label);
        }
        v.push(0);
    }
    v
}

/// Builds a client request; used by tests (and handy for debugging tools).
#[cfg(test)]
pub fn encode_request(xid: u32, mac: [u8; 6], flags: u16, ciaddr: Ipv4Addr, options: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&mac);
    let mut b = encode(&Reply {
        msg_type: MessageType::Discover, // replaced by the caller's option 53
        xid,
        flags,
        ciaddr,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: Ipv4Addr::UNSPECIFIED,
        chaddr,
        hlen: 6,
        options: Vec::new(),
    });
    b[0] = 1;
    b.truncate(HEADER_LEN);
    for (code, value) in options {
        b.push(*code);
        b.push(value.len() as u8);
        b.extend_from_slice(value);
    }
    b.push(opt::END);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x4b, 0x56, 1, 2, 3];

    #[test]
    fn parse_discover() {
        let b = encode_request(
            0xdeadbeef,
            MAC,
            FLAG_BROADCAST,
            Ipv4Addr::UNSPECIFIED,
            &[(opt::MESSAGE_TYPE, vec![1]), (55, vec![1, 3, 6]), (opt::REQUESTED_IP, vec![10, 0, 2, 9])],
        );
        let m = parse(&b).unwrap();
        assert_eq!(m.msg_type, MessageType::Discover);
        assert_eq!(m.xid, 0xdeadbeef);
        assert!(m.broadcast_flag());
        assert_eq!(m.mac(), Some(MAC));
        assert_eq!(m.option(55), Some(&[1u8, 3, 6][..]));
        assert_eq!(m.option_ip(opt::REQUESTED_IP), Some(Ipv4Addr::new(10, 0, 2, 9)));
        assert_eq!(m.option_ip(opt::SERVER_ID), None);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert_eq!(parse(&[1; 10]), Err(ParseError::TooShort(10)));
        let mut b = encode_request(1, MAC, 0, Ipv4Addr::UNSPECIFIED, &[(opt::MESSAGE_TYPE, vec![1])]);
        b[0] = 2;
        assert_eq!(parse(&b), Err(ParseError::NotRequest(2)));
        b[0] = 1;
        b[236] = 0;
        assert_eq!(parse(&b), Err(ParseError::NoMagic));
        let b = encode_request(1, MAC, 0, Ipv4Addr::UNSPECIFIED, &[(12, vec![b'x'])]);
        assert_eq!(parse(&b), Err(ParseError::NoMessageType));
        let mut b = encode_request(1, MAC, 0, Ipv4Addr::UNSPECIFIED, &[(opt::MESSAGE_TYPE, vec![1])]);
        b.truncate(b.len() - 1); // drop END
        b.extend_from_slice(&[12, 9, b'x']);
        assert_eq!(parse(&b), Err(ParseError::Truncated(12)));
    }

    #[test]
    fn parse_overloaded_file_field() {
        let mut b = encode_request(7, MAC, 0, Ipv4Addr::UNSPECIFIED, &[(opt::OVERLOAD, vec![1])]);
        b[FILE.start..FILE.start + 4].copy_from_slice(&[opt::MESSAGE_TYPE, 1, 3, opt::END]);
        let m = parse(&b).unwrap();
        assert_eq!(m.msg_type, MessageType::Request);
    }

    #[test]
    fn encode_reply_layout() {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&MAC);
        let r = Reply {
            msg_type: MessageType::Offer,
            xid: 42,
            flags: FLAG_BROADCAST,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::new(10, 0, 2, 2),
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            hlen: 6,
            options: vec![(opt::SUBNET_MASK, vec![255, 255, 255, 0]), (opt::HOSTNAME, vec![b'a'; 300])],
        };
        let b = encode(&r);
        assert_eq!(b[0], 2);
        assert_eq!(&b[4..8], &42u32.to_be_bytes());
        assert_eq!(&b[10..12], &[0x80, 0]);
        assert_eq!(&b[16..20], &[10, 0, 2, 2]);
        assert_eq!(&b[28..34], &MAC);
        assert_eq!(&b[236..240], &MAGIC);
        assert_eq!(&b[240..243], &[53, 1, 2]);
        assert_eq!(&b[243..249], &[1, 4, 255, 255, 255, 0]);
        // 300-byte hostname split as 255 + 45 (RFC 3396).
        assert_eq!(&b[249..251], &[12, 255]);
        assert_eq!(&b[506..508], &[12, 45]);
        assert_eq!(b[553], opt::END);
        // A short reply is padded to the BOOTP minimum.
        let short = encode(&Reply { options: vec![], ..r });
        assert_eq!(short.len(), MIN_REPLY_LEN);
    }

    #[test]
    fn classless_routes_encoding() {
        let gw = Ipv4Addr::new(10, 244, 0, 1);
        let v = classless_routes(&[(gw, 32, Ipv4Addr::UNSPECIFIED), (Ipv4Addr::UNSPECIFIED, 0, gw)]);
        assert_eq!(v, vec![32, 10, 244, 0, 1, 0, 0, 0, 0, 0, 10, 244, 0, 1]);
        let v = classless_routes(&[(Ipv4Addr::new(10, 17, 0, 0), 12, gw)]);
        assert_eq!(v, vec![12, 10, 17, 10, 244, 0, 1]);
    }

    #[test]
    fn domain_search_encoding() {
        let v = domain_search(&["ns.svc.cluster.local".into(), "local.".into()]);
        let mut want = Vec::new();
        for l in ["ns", "svc", "cluster", "local"] {
            want.push(l.len() as u8);
            want.extend_from_slice(l.as_bytes());
        }
        want.extend_from_slice(&[0, 5, b'l', b'o', b'c', b'a', b'l', 0]);
        assert_eq!(v, want);
    }
}
