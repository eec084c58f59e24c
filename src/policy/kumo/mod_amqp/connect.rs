//! Opening a broker connection without lapin's leak on a refused connect.
//!
//! lapin (4.12) starts a connection's internal tasks before its I/O thread
//! opens the socket, and when that first TCP (or TLS) connect fails the
//! thread returns early without stopping them: two tasks and ~10 KB stay
//! alive for every refused attempt, forever (amqp-rs/lapin#368). A relay
//! retrying a broker that refuses connections for days would grow with every
//! attempt. So the socket is opened here first; lapin is only started on a
//! socket that is already connected, and a refused or failed connect never
//! reaches it. A failure after that (the AMQP handshake, a login refused)
//! ends lapin's I/O loop the normal way, which stops its tasks.

use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use std::sync::{Arc, Mutex};

/// Connects to `uri` (TLS with `tls` for `amqps://`) and opens the AMQP connection on it.
pub async fn connect(uri: &str, tls: OwnedTLSConfig) -> Result<Connection, lapin::Error> {
    let uri: AMQPUri = uri
        .parse()
        .map_err(|e: String| lapin::Error::from(std::io::Error::other(e)))?;
    let runtime = lapin::runtime::default_runtime()?;
    let stream = uri
        .connect_with_config_async(tls.as_ref(), &runtime)
        .await?;
    // lapin asks for the socket once per connection attempt; with its
    // default (no reconnection) that is once, and it gets this one.
    let opened = Arc::new(Mutex::new(Some(stream)));
    let props = ConnectionProperties::default().with_connection_name("amqp-relay".into());
    Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, runtime| {
            let ready = opened.lock().unwrap_or_else(|e| e.into_inner()).take();
            match ready {
                Some(stream) => Ok(stream),
                None => Ok(uri
                    .connect_with_config_async(tls.as_ref(), &runtime)
                    .await?),
            }
        },
        props,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_connect_leaves_no_task_behind() {
        let port = closed_port();
        let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        for _ in 0..200 {
            let err = connect(&uri, OwnedTLSConfig::default())
                .await
                .expect_err("nothing listens there");
            assert!(
                matches!(err.kind(), lapin::ErrorKind::IOError(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
                "{err}"
            );
        }
        // lapin's own connect leaves two tasks per refused attempt (400 here).
        assert_eq!(tasks(), before, "tasks left alive by 200 refused connects");
    }

    #[tokio::test]
    async fn a_bad_uri_is_an_error_that_says_so() {
        let err = connect("amqp://host:notaport/", OwnedTLSConfig::default())
            .await
            .expect_err("not a URI");
        assert!(err.to_string().contains("port"), "{err}");
    }
}
