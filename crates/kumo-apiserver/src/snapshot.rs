//! `GET /kumo/snapshot`: a consistent snapshot of the store, streamed while the server keeps taking writes
//! (`kumo store snapshot save --kubeconfig`). Admins only: it holds every object (Secrets still sealed).

use crate::auth::User;
use crate::response::{self, Resp};
use crate::state::ApiServer;
use futures::StreamExt;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use kumo_api::ApiError;

pub const PATH: &str = "/kumo/snapshot";

pub async fn serve(api: &ApiServer, user: &User, method: &http::Method) -> Resp {
    if *user != User::Admin {
        return response::error(&ApiError::forbidden(format!(
            "User \"{}\" cannot take snapshots of the store",
            user.name()
        )));
    }
    if method != http::Method::GET {
        return response::error(&ApiError::method_not_allowed("snapshot", "store"));
    }
    let stream = match api.objects.store.snapshot().await {
        Ok(s) => s,
        Err(kumo_store::Error::Unavailable(m)) => {
            return response::error(&ApiError::unavailable(format!("taking a snapshot: {m}")))
        }
        Err(e) => return response::error(&ApiError::internal(format!("taking a snapshot: {e}"))),
    };
    // A failure mid-way ends the body early: the client's check of the file's checksum then refuses it.
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    tokio::spawn(async move {
        let mut stream = stream;
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(b) => {
                    if tx.send(b).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!("snapshot failed part way: {e}");
                    return;
                }
            }
        }
    });
    let body = StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
    );
    http::Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(BodyExt::boxed(body))
        .expect("response")
}
