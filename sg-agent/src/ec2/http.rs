//! The endpoint's HTTP/1.1 server: bounded in what one connection may
//! send (header time, buffer, body size, requests), in connections at
//! once, and in how long a request may take.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{Shared, actions, error::ApiError, ids, query::Params, sigv4, xml};

/// The largest request body (a Describe with many filters, an Authorize
/// with many permissions: far below).
const MAX_BODY: usize = 1 << 20;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 128;
/// Requests on one connection before it is closed.
const MAX_REQUESTS: u64 = 10_000;
/// Time to send a request's headers.
const HEADER_TIME: Duration = Duration::from_secs(10);
/// Time to send its body.
const BODY_TIME: Duration = Duration::from_secs(30);
/// Time a request may take, a change put in force included.
const REQUEST_TIME: Duration = Duration::from_mins(1);

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the endpoint until the runtime ends.
pub async fn serve(listener: TcpListener, api: Shared) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("EC2 API: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let api = Arc::clone(&api);
        tokio::spawn(async move {
            let _permit = permit;
            let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let service = service_fn(move |req| {
                let api = Arc::clone(&api);
                let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                async move {
                    let mut resp = match tokio::time::timeout(REQUEST_TIME, handle(req, &api)).await
                    {
                        Ok(r) => r,
                        Err(_) => error_response(&ApiError::new(
                            "RequestLimitExceeded",
                            "the request took too long",
                        )),
                    };
                    if n >= MAX_REQUESTS {
                        resp.headers_mut().insert(
                            "connection",
                            hyper::header::HeaderValue::from_static("close"),
                        );
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIME)
                .max_buf_size(64 << 10)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                log::debug!("EC2 API connection: {e}");
            }
        });
    }
}

fn response(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/xml;charset=UTF-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    response(e.status, xml::error(e.code, &e.message, &ids::request_id()))
}

async fn handle(req: Request<hyper::body::Incoming>, api: &Shared) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(BODY_TIME, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return error_response(&ApiError::malformed(format!(
                "a body larger than {MAX_BODY} bytes, or one that could not be read"
            )));
        }
        Err(_) => {
            return error_response(&ApiError::malformed("a body not sent in time"));
        }
    };
    let query = parts.uri.query().unwrap_or_default();
    let (status, body) = answer(
        api,
        parts.method.as_str(),
        parts.uri.path(),
        query,
        &parts.headers,
        &body,
    )
    .await;
    response(status, body)
}

/// A request's answer, once its body is read: its HTTP status and XML.
/// What the server runs for every request (and the fuzz target `ec2_api`
/// on arbitrary ones).
pub async fn answer(
    api: &Shared,
    method: &str,
    path: &str,
    query: &str,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> (u16, String) {
    let fail = |e: &ApiError| (e.status, xml::error(e.code, &e.message, &ids::request_id()));
    if let Some(keys) = &api.credentials {
        let signed = sigv4::Signed {
            method,
            path,
            query,
            headers,
            body,
        };
        if let Err(e) = sigv4::verify(&signed, keys) {
            return fail(&e);
        }
    }
    let params = match (method, Params::parse(query.as_bytes())) {
        (_, Err(e)) => return fail(&e),
        ("GET", Ok(p)) => p,
        ("POST", Ok(q)) => match Params::parse(body) {
            Ok(mut p) => {
                p.merge(q);
                p
            }
            Err(e) => return fail(&e),
        },
        _ => {
            return fail(&ApiError::new(
                "UnsupportedProtocol",
                "EC2's Query API takes GET and POST",
            ));
        }
    };
    let request_id = ids::request_id();
    let action = params.get("Action").unwrap_or_default().to_owned();
    let started = std::time::Instant::now();
    let result = actions::dispatch(&action, &params, api).await;
    let took = started.elapsed().as_millis();
    match result {
        Ok(answer) => {
            log::debug!("EC2 API {action}: answered in {took} ms");
            (200, answer.render(&action, &request_id))
        }
        Err(e) => {
            log::info!("EC2 API {action}: {} ({}) in {took} ms", e.code, e.message);
            (e.status, xml::error(e.code, &e.message, &request_id))
        }
    }
}
