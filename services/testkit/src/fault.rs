//! An HTTP/1 proxy in front of a real server (Garage, say) that passes requests through, or
//! makes the ones a rule picks hang (accepted, never answered: a hung server) or answer an error
//! status with an S3-style XML body (a refusal). Rules change while the proxy runs.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Method, Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// What happens to a request a rule picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Never answered.
    Hang,
    /// Answered with this status and an S3 error body (`AccessDenied` for 403).
    Status(u16),
}

type Rule = Arc<dyn Fn(&Method, &str) -> Option<Fault> + Send + Sync>;

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    rule: Arc<Mutex<Option<Rule>>>,
    faulted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) on a free port, passing everything.
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream as http://ip:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let rule: Arc<Mutex<Option<Rule>>> = Arc::default();
        let faulted = Arc::new(AtomicUsize::new(0));
        let (rules, count) = (rule.clone(), faulted.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (rules, count) = (rules.clone(), count.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let rule = rules.lock().expect("lock").clone();
                        handle(request, upstream, rule, count.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            rule,
            faulted,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, requests for which `rule(method, path)` is `Some` get that fault.
    pub fn fail(&self, rule: impl Fn(&Method, &str) -> Option<Fault> + Send + Sync + 'static) {
        *self.rule.lock().expect("lock") = Some(Arc::new(rule));
    }

    /// How many requests have got a fault so far (a test waits on it to know a fault is in
    /// effect, e.g. that an upload is hanging now).
    pub fn faulted(&self) -> usize {
        self.faulted.load(Ordering::SeqCst)
    }

    /// Passes every request again (requests already hanging stay so).
    pub fn heal(&self) {
        *self.rule.lock().expect("lock") = None;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

async fn handle(
    request: Request<Incoming>,
    upstream: SocketAddr,
    rule: Option<Rule>,
    faulted: Arc<AtomicUsize>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_string();
    let fault = rule.and_then(|rule| rule(request.method(), &path));
    if fault.is_some() {
        faulted.fetch_add(1, Ordering::SeqCst);
    }
    match fault {
        Some(Fault::Hang) => std::future::pending().await,
        Some(Fault::Status(status)) => Ok(error_response(status)),
        None => Ok(forward(request, upstream)
            .await
            .unwrap_or_else(|_| error_response(502))),
    }
}

async fn forward(
    request: Request<Incoming>,
    upstream: SocketAddr,
) -> Result<Response<Body>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(upstream).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    Ok(response.map(|body| body.boxed()))
}

fn error_response(status: u16) -> Response<Body> {
    let code = match status {
        403 => "AccessDenied",
        400 => "InvalidRequest",
        _ => "InternalError",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test's fault proxy</Message></Error>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a valid response")
}
