//! Maps etcd-client failures onto the store's typed errors, so the API server can tell "try again later"
//! (503/504) from a real fault (500).

use std::error::Error as _;

use tonic::{Code, Status};

use crate::Error;

/// etcd's messages for reads and compactions outside the retained history (mvcc's ErrCompacted and
/// ErrFutureRev); they arrive with code OutOfRange, which etcd also uses for other things.
const COMPACTED: &str = "required revision has been compacted";
const FUTURE: &str = "required revision is a future revision";
const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";

/// Maps one failed call. [`Error::Compacted`] and [`Error::FutureRevision`] come back with zero revisions:
/// only the caller knows what it asked for, and fills them in.
pub(super) fn map(err: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    match err {
        E::GRpcStatus(status) => map_status(&status),
        E::TransportError(e) => Error::Unavailable(format!("etcd: {}", chain(&e))),
        E::IoError(e) => Error::Unavailable(format!("etcd: {e}")),
        // The watch's request channel closed: its gRPC stream is gone.
        E::WatchError(m) => Error::Unavailable(format!("etcd watch: {m}")),
        other => Error::Backend(format!("etcd: {other}")),
    }
}

pub(super) fn map_status(status: &Status) -> Error {
    let message = status.message();
    if message.contains(COMPACTED) {
        return Error::Compacted { requested: 0, compacted: 0 };
    }
    if message.contains(FUTURE) {
        return Error::FutureRevision { requested: 0, current: 0 };
    }
    let text = describe(status);
    if is_certificate_error(status) {
        // A certificate etcd or we refuse will not get better by retrying: a configuration error.
        return Error::Backend(format!("{text} (check ca_file, cert_file and key_file)"));
    }
    match status.code() {
        Code::DeadlineExceeded => Error::Timeout(text),
        // etcd's "request timed out" family (leader lost mid-request, slow disk) is Unavailable on the wire,
        // but like a deadline the write may still be applied, which a caller must know.
        Code::Unavailable if message.contains("timed out") => Error::Timeout(text),
        // Unavailable: connection refused or lost, no leader, leader changed. Cancelled: the connection
        // dropped under the call.
        Code::Unavailable | Code::Cancelled => Error::Unavailable(text),
        // etcd applying too far behind what it committed refuses requests before proposing them, so a write
        // is safe to retry. It has come with another code than ResourceExhausted (500s growing past 100,000 VMIs);
        // ResourceExhausted's "database space exceeded" alarm needs an operator, so the message decides.
        _ if message.contains(TOO_MANY_REQUESTS) => Error::Unavailable(text),
        // An HTTP/2 or transport failure tonic could not classify.
        Code::Unknown | Code::Internal if is_connection_error(status) => Error::Unavailable(text),
        _ => Error::Backend(text),
    }
}

/// True when etcd refused the call as too many (it is behind applying what it committed): refused before
/// being proposed, so a write is safe to send again.
pub(super) fn is_behind(err: &Error) -> bool {
    matches!(err, Error::Unavailable(m) if m.contains(TOO_MANY_REQUESTS))
}

/// True when the call failed while connecting, so it never reached etcd and may be retried on another
/// endpoint, even for a write.
pub(super) fn is_connect_failure(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == Code::Unavailable && (refused(s) || chain(s).contains("error trying to connect"))
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Whether `err` or any error it was caused by satisfies `pred`.
fn any_cause(
    err: &(dyn std::error::Error + 'static),
    pred: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if pred(e) {
            return true;
        }
        source = e.source();
    }
    false
}

fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    e.downcast_ref::<std::io::Error>().map(std::io::Error::kind)
}

fn refused(err: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(err, |e| io_kind(e) == Some(std::io::ErrorKind::ConnectionRefused))
}

fn is_connection_error(status: &Status) -> bool {
    status.source().is_some_and(|s| any_cause(s, |e| io_kind(e).is_some() || e.to_string().contains("connection")))
}

/// A TLS handshake that failed on a certificate (rustls reports those as invalid data).
fn is_certificate_error(status: &Status) -> bool {
    status.source().is_some_and(|s| any_cause(s, |e| io_kind(e) == Some(std::io::ErrorKind::InvalidData)))
}

/// The status message and its sources on one line (tonic's own Display adds Debug noise).
fn describe(status: &Status) -> String {
    with_sources(format!("etcd: {}", status.message()), status.source())
}

/// The error and its sources on one line (tonic's top-level text is often just "transport error").
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    with_sources(err.to_string(), err.source())
}

/// `text`, then each source's text that it does not already contain.
fn with_sources(mut text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_requests_is_retryable_whatever_its_code_and_a_full_database_is_not() {
        for code in [Code::ResourceExhausted, Code::Unknown, Code::Unavailable] {
            let e = map_status(&Status::new(code, "etcdserver: too many requests"));
            assert!(is_behind(&e), "{code:?}: {e:?}");
        }
        let full = map_status(&Status::new(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"));
        assert!(matches!(full, Error::Backend(_)), "{full:?}");
    }
}
