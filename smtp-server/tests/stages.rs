//! The middleware chain over a real socket: filters written with `from_fn` and as
//! layers, their order, header insertion, and what errors and disconnects do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use smtp_client::testing::{RawClient, code_of};
use smtp_proto::EnhancedStatus;
use smtp_server::{
    BoxError, ConnectRequest, DataRequest, Decision, ListenerConfig, ListenerMode, MailRequest,
    Next, RcptRequest, Server, ServerConfig, Stages, from_fn,
};

async fn start(stages: Stages) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let config = ServerConfig {
        hostname: "stages.test".into(),
        listeners: vec![ListenerConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            mode: ListenerMode::Relay,
        }],
        ..ServerConfig::default()
    };
    let server = Server::bind(config, stages).await.unwrap();
    let addr = server.local_addrs()[0].1;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Sends `input` and returns `"code status"` of every reply until the server closes or
/// `count` replies came.
async fn converse(addr: std::net::SocketAddr, input: &str, count: usize) -> Vec<String> {
    let mut c = RawClient::connect(addr).await;
    c.send(input.as_bytes()).await;
    let mut out = vec![code_of(&c.greeting)];
    out.extend(c.replies(count.saturating_sub(1)).await.iter().map(code_of));
    out
}

fn sink(
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
) -> impl tower::Service<
    DataRequest,
    Response = Decision,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Decision, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |req: DataRequest| {
        let messages = Arc::clone(&messages);
        async move {
            messages.lock().unwrap().push(req.message());
            Ok::<_, BoxError>(Decision::accept())
        }
    })
}

#[tokio::test]
async fn filters_decide_in_order_and_add_headers() {
    let messages = Arc::default();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (o1, o2) = (Arc::clone(&order), Arc::clone(&order));
    let inner = from_fn(move |req: RcptRequest, next: Next<RcptRequest>| {
        let order = Arc::clone(&o1);
        async move {
            order.lock().unwrap().push("inner");
            if req.to.to_string().contains("blocked") {
                return Ok(Decision::reject(
                    550,
                    EnhancedStatus::NOT_AUTHORIZED,
                    "blocked by inner",
                ));
            }
            next.run(req).await
        }
    });
    let outer = from_fn(move |req: RcptRequest, next: Next<RcptRequest>| {
        let order = Arc::clone(&o2);
        async move {
            order.lock().unwrap().push("outer");
            next.run(req).await
        }
    });
    let tag = from_fn(|mut req: DataRequest, next: Next<DataRequest>| async move {
        req.prepend_header("X-Filtered", "yes");
        next.run(req).await
    });
    let stages = Stages::new(sink(Arc::clone(&messages)))
        .rcpt_layer(inner)
        .rcpt_layer(outer)
        .data_layer(tag);
    let (addr, _stop) = start(stages).await;
    let replies = converse(
        addr,
        "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<ok@x.test>\r\nRCPT TO:<blocked@x.test>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n",
        7,
    )
    .await;
    assert_eq!(
        replies,
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "550 5.7.1",
            "354",
            "250 2.0.0"
        ]
    );
    assert_eq!(
        *order.lock().unwrap(),
        ["outer", "inner", "outer", "inner"],
        "the last layer added runs first"
    );
    let stored = messages.lock().unwrap();
    assert_eq!(stored[0], b"X-Filtered: yes\r\nSubject: s\r\n\r\nbody\r\n");
}

#[tokio::test]
async fn errors_defer_and_disconnect_closes() {
    let messages = Arc::default();
    let failing = from_fn(|_: MailRequest, _: Next<MailRequest>| async move {
        Err::<Decision, BoxError>("database down".into())
    });
    let (addr, _stop) = start(Stages::new(sink(Arc::clone(&messages))).mail_layer(failing)).await;
    let replies = converse(addr, "EHLO c\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\n", 4).await;
    assert_eq!(
        replies,
        ["220", "250", "451 4.3.0", "250 2.0.0"],
        "an Err is a temporary failure, the session goes on"
    );

    let banned = from_fn(
        |req: ConnectRequest, next: Next<ConnectRequest>| async move {
            if req.session.peer.ip().is_loopback() {
                return Ok(Decision::Disconnect(smtp_proto::Reply::new(
                    smtp_proto::ReplyCode::TRANSACTION_FAILED,
                    EnhancedStatus::NOT_AUTHORIZED,
                    "Go away",
                )));
            }
            next.run(req).await
        },
    );
    let (addr, _stop) = start(Stages::new(sink(messages)).connect_layer(banned)).await;
    let replies = converse(addr, "EHLO c\r\n", 3).await;
    assert_eq!(replies, ["554 5.7.1"], "greeting refused, then closed");
}
