//! A `wasi:http/incoming-handler` component: the node serves it on the pod's declared port and
//! creates one instance per request, so an idle function costs no instance. It answers
//! `hello from <HOSTNAME> at <path>` (request number <n> of this instance: always 1, since no
//! instance outlives its request) and prints each request it handles. A query may make it work
//! harder first: `sleep_ms=N` waits N ms, `alloc_mb=N` takes N MiB and touches them; or call
//! another: `call=HOST` sends `GET http://HOST/` (`call=HOST/PATH`: `GET http://HOST/PATH`)
//! through `wasi:http/outgoing-handler` and answers with what came back (`called HOST: <body>`,
//! or why it failed, with 502).

use std::sync::atomic::{AtomicU32, Ordering};

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

/// Requests this instance has handled.
static HANDLED: AtomicU32 = AtomicU32::new(0);

struct Handler;

impl wasip2::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".into());
        let query = |name: &str| -> u64 {
            let query = path.split_once('?').map(|(_, q)| q).unwrap_or_default();
            query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')?.parse().ok()).unwrap_or(0)
        };
        let held = vec![1u8; (query("alloc_mb") as usize) << 20];
        std::thread::sleep(std::time::Duration::from_millis(query("sleep_ms")));
        let n = HANDLED.fetch_add(1, Ordering::Relaxed) + 1 + u32::from(held.iter().any(|b| *b == 0));
        let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "wasm".into());
        println!("handling {path}");
        let called = path.split_once('?').and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("call=")));
        let (status, text) = match called {
            Some(host) => match get(host) {
                Ok(body) => (200, format!("called {host}: {body}")),
                // What a proxy answers when the server behind it fails it.
                Err(why) => (502, format!("calling {host} failed: {why}\n")),
            },
            None => (200, format!("hello from {hostname} at {path} (request {n} of this instance)\n")),
        };
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let body = response.body().expect("a new response has a body");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("a new body has a stream");
        stream.blocking_write_and_flush(text.as_bytes()).expect("the client takes the body");
        drop(stream);
        OutgoingBody::finish(body, None).expect("the body ends");
    }
}

/// `GET http://target` (`host` or `host/path`): the response's body.
fn get(target: &str) -> Result<String, String> {
    let (host, path) = target.find('/').map_or((target, "/"), |at| target.split_at(at));
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    request.set_authority(Some(host)).map_err(|()| "authority")?;
    request.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let pending = wasip2::http::outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending.get().ok_or("no response")?.map_err(|()| "taken")?.map_err(|e| format!("{e:?}"))?;
    let body = response.consume().map_err(|()| "no body")?;
    let stream = body.stream().map_err(|()| "no stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => bytes.extend(chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("{e:?}")),
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

wasip2::http::proxy::export!(Handler);
