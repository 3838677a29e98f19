//! A webhook receiver on loopback for the tests that follow deliveries (webhooks, the permission
//! hook of two-way control): records every request and answers as told.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

/// A webhook receiver: answers `fail_status` to the first `fail_first` requests (or to all while
/// `fail_first` is `usize::MAX`), then 200; or a redirect to `redirect` when set.
#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<Mutex<Vec<Received>>>,
    pub fail_first: Arc<AtomicUsize>,
    pub fail_status: Arc<AtomicU16>,
    pub redirect: Arc<Mutex<Option<String>>>,
}

impl Receiver {
    pub async fn start() -> (Receiver, u16) {
        let r = Receiver::default();
        r.fail_status.store(500, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let me = me.clone();
                        async move { Ok::<_, std::convert::Infallible>(me.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (r, port)
    }

    async fn answer(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
        let mut got = self.got.lock().unwrap();
        let n = got.len();
        let redirect = self.redirect.lock().unwrap().clone();
        let status = match redirect {
            Some(_) => 302,
            None if n < self.fail_first.load(Ordering::SeqCst) => {
                self.fail_status.load(Ordering::SeqCst)
            }
            None => 200,
        };
        got.push(Received {
            path,
            headers,
            body,
            status,
        });
        let mut resp = hyper::Response::builder().status(status);
        if let Some(to) = redirect {
            resp = resp.header("location", to);
        }
        resp.body(Full::new(Bytes::from_static(b"ok"))).unwrap()
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}
