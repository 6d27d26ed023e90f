//! The `per-core` runtime layout: the daemon's own single-threaded runtime and each further
//! worker accept on the same listening sockets, and a worker serves the sessions it
//! accepted by itself. Its own test binary: the workers are process-wide.

mod support;

use robustifier::front::workers::Workers;
use support::{Client, Running, SmtpBackend, config, tempdir};

/// Once the front-end has started, the runtime it was started on is no longer driven:
/// every session below can only have been accepted and served by the second worker.
#[test]
fn a_second_worker_serves_sessions_on_its_own() {
    let _workers = Workers::start(2).unwrap();
    // The first worker: the daemon's thread runs a single-threaded runtime.
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The client and the scripted back-end, on a thread of their own.
    let peers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let backend = peers.block_on(SmtpBackend::start());
    let text = config(&format!(
        "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = 25\npool = \"mx\"\n\
         [[pool]]\nname = \"mx\"\nidentity = \"none\"\n\
         backend = [{{ name = \"mx0\", address = \"{}\" }}]\n",
        backend.addr
    ));
    let fe = {
        let _in = first.enter();
        Running::start(&tempdir("runtime-layout"), &text)
    };
    // Drive the first runtime until the front-end accepts (its accept loops are spawned
    // on both workers then), and not after.
    first.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(500)).await });
    let addr = fe.addr("smtp");
    peers.block_on(async {
        for _ in 0..5 {
            let mut c = Client::connect(addr).await;
            let reply = c.send_message("rcpt@example.test", "hello").await;
            assert!(reply.starts_with("250"), "{reply}");
            assert!(c.ask("QUIT").await.starts_with("221"));
        }
    });
    assert_eq!(backend.messages().len(), 5);
    first.block_on(fe.stop());
}
