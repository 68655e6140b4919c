//! Malformed RPC, config and plugins get clear errors and never take the agent down.

use std::time::Duration;

use serf_tests::{Node, RawRpc, field, map, next_net, stdout_ok, wasm};

fn error_of(header: &rmpv::Value) -> &str {
    field(header, "Error")
        .and_then(|e| e.as_str())
        .unwrap_or("<no Error>")
}

fn still_answers(node: &Node) {
    let text = stdout_ok(&node.go_cli(&["members"]));
    assert!(text.contains("alive"), "{text}");
}

#[test]
fn rpc_errors_follow_serfs_rules() {
    let node = Node::builder(next_net(), 1).start();

    // A command before the handshake: error, then the agent closes the connection.
    let mut rpc = RawRpc::connect(node.rpc);
    rpc.request("members", 0, None);
    let header = rpc.read().expect("an answer");
    assert_eq!(error_of(&header), "Handshake required");
    assert_eq!(field(&header, "Seq"), Some(&0.into()));
    assert_eq!(rpc.read(), None, "connection closed");

    // A wrong version leaves the connection open and un-handshaken.
    let mut rpc = RawRpc::connect(node.rpc);
    rpc.request("handshake", 1, Some(map(&[("Version", 2.into())])));
    assert_eq!(error_of(&rpc.read().unwrap()), "Unsupported IPC version");
    rpc.request("handshake", 2, Some(map(&[("Version", 1.into())])));
    assert_eq!(error_of(&rpc.read().unwrap()), "");
    rpc.request("handshake", 3, Some(map(&[("Version", 1.into())])));
    assert_eq!(
        error_of(&rpc.read().unwrap()),
        "Handshake already performed"
    );
    // An unknown command: error, then closed.
    rpc.request("nosuch", 4, None);
    let header = rpc.read().unwrap();
    assert_eq!(error_of(&header), "Unsupported command");
    assert_eq!(field(&header, "Seq"), Some(&4.into()));
    assert_eq!(rpc.read(), None);

    // Bodies of the wrong shape, garbage and truncated frames: closed, no answer, no panic.
    for bytes in [
        vec![0xc1],                         // never-used msgpack byte
        vec![0x82, 0xa7],                   // truncated, then EOF
        b"GET / HTTP/1.1\r\n\r\n".to_vec(), // not msgpack at all
        vec![0xdf, 0xff, 0xff, 0xff, 0xff], // a map claiming 4 billion entries
        vec![0xc6, 0x7f, 0xff, 0xff, 0xff], // a 2 GiB bin header
    ] {
        let mut rpc = RawRpc::connect(node.rpc);
        rpc.send_bytes(&bytes);
        let _ = rpc.stream_shutdown_write();
        assert_eq!(rpc.read(), None, "answered {bytes:02x?}");
    }
    let mut rpc = RawRpc::handshake(node.rpc);
    rpc.request("event", 1, Some(map(&[("Name", 7.into())])));
    assert_eq!(
        rpc.read(),
        None,
        "a body that does not decode closes the connection"
    );

    // Serf's own errors pass through.
    let mut rpc = RawRpc::handshake(node.rpc);
    rpc.request("monitor", 1, Some(map(&[("LogLevel", "LOUD".into())])));
    assert_eq!(error_of(&rpc.read().unwrap()), "Unknown log level: LOUD");
    rpc.request("stream", 2, Some(map(&[("Type", "bogus".into())])));
    assert_eq!(error_of(&rpc.read().unwrap()), "Invalid event filter");
    rpc.request(
        "respond",
        3,
        Some(map(&[("ID", 99.into()), ("Payload", rmpv::Value::Nil)])),
    );
    assert_eq!(
        error_of(&rpc.read().unwrap()),
        "No pending queries matching ID"
    );
    let big = rmpv::Value::Binary(vec![b'x'; 600]);
    rpc.request(
        "event",
        4,
        Some(map(&[
            ("Name", "big".into()),
            ("Payload", big),
            ("Coalesce", true.into()),
        ])),
    );
    assert_eq!(
        error_of(&rpc.read().unwrap()),
        "user event exceeds configured limit of 512 bytes before encoding"
    );
    rpc.request("query", 5, Some(map(&[("Name", "_serf_conflict".into())])));
    assert_eq!(
        error_of(&rpc.read().unwrap()),
        "Queries cannot contain the '_serf_' prefix"
    );
    still_answers(&node);
}

#[test]
fn rpc_auth_is_enforced_like_serf() {
    let node = Node::builder(next_net(), 1)
        .config("rpc_auth = \"s3cret\"")
        .start();
    let mut rpc = RawRpc::handshake(node.rpc);
    rpc.request("members", 1, None);
    assert_eq!(error_of(&rpc.read().unwrap()), "Authentication required");
    rpc.request("auth", 2, Some(map(&[("AuthKey", "wrong".into())])));
    assert_eq!(
        error_of(&rpc.read().unwrap()),
        "Invalid authentication token"
    );
    rpc.request("auth", 3, Some(map(&[("AuthKey", "s3cret".into())])));
    assert_eq!(error_of(&rpc.read().unwrap()), "");
    rpc.request("members", 4, None);
    assert_eq!(error_of(&rpc.read().unwrap()), "");
    assert!(rpc.read().is_some(), "members body");

    let denied = node.go_cli(&["members"]);
    assert!(!denied.status.success());
    let allowed = node.go_cli(&["members", "-rpc-auth=s3cret"]);
    assert!(stdout_ok(&allowed).contains("node1"));
    let ours = node.cli(&["members", "-rpc-auth=s3cret"]);
    assert!(stdout_ok(&ours).contains("node1"));
}

#[test]
fn a_malformed_config_names_the_key_and_line() {
    let mut node = Node::builder(next_net(), 1)
        .config("[plugin_defaults]\nfuel_per_event = \"plenty\"\n")
        .spawn();
    let status = node
        .wait_exit(Duration::from_secs(20))
        .expect("the agent refuses to start");
    assert!(!status.success());
    let log = node.log();
    assert!(log.contains("fuel_per_event"), "{log}");
    assert!(log.contains("line 8"), "{log}");

    let mut node = Node::builder(next_net(), 1)
        .config("gossip_nodes = 3\n")
        .spawn();
    let status = node
        .wait_exit(Duration::from_secs(20))
        .expect("the agent refuses to start");
    assert!(!status.success());
    assert!(
        node.log().contains("unknown field `gossip_nodes`"),
        "{}",
        node.log()
    );
}

#[test]
fn broken_plugins_get_clear_errors_and_the_rest_run() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.wasm");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let wrong_abi = dir.path().join("wrong.wasm");
    let module = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "serf_plugin_abi_v0")))"#,
    )
    .unwrap();
    std::fs::write(&wrong_abi, module).unwrap();
    let node = Node::builder(next_net(), 1)
        .raw_plugin_file("script.wasm", script)
        .raw_plugin_file("wrong.wasm", wrong_abi)
        .raw_plugin_file("upcase.wasm", wasm("upcase"))
        .config("[plugins.upcase]\nevents = \"query:upcase\"\n")
        .start();
    let log = node.log();
    assert!(
        log.contains("script.wasm is not a WebAssembly module"),
        "{log}"
    );
    assert!(log.contains("wrong.wasm is not a serf plugin"), "{log}");
    assert!(log.contains("serf_plugin_abi_v0"), "{log}");
    let text = stdout_ok(&node.go_cli(&["query", "-timeout=1s", "upcase", "ok"]));
    assert!(text.contains("Response from 'node1': OK"), "{text}");
    let info = node.info();
    assert!(
        info["plugin:script"]["state"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{info}"
    );
}

#[test]
fn garbled_gossip_packets_and_streams_are_dropped_and_counted() {
    use std::io::{Read, Write};

    let node = Node::builder(next_net(), 1).start();
    let socket = std::net::UdpSocket::bind((node.bind.ip(), 0)).expect("udp socket");
    let garbage: [&[u8]; 7] = [
        b"",
        &[0x00, 0xc1, 0xc1],             // ping that does not decode (7.20)
        &[0x0c, 0, 0, 0, 0, 0x00, 0x80], // wrong CRC
        &[0xf4, 0x03, b'a', b'b', b'c'], // a label header 0.9.4 does not know
        &[0x07, 0x05, 0x00],             // compound with a short length table
        &[0x09, 0x82, 0xa4, b'A', b'l', b'g', b'o'], // truncated compress wrapper
        &[0xff; 2000],                   // oversized nonsense
    ];
    for packet in garbage {
        socket.send_to(packet, node.bind).expect("send");
    }
    // Streams: a type that is not allowed, an encrypted frame to a plaintext agent, garbage.
    for stream in [
        &[0x03, 0x81, 0xa1, b'x', 0x01][..],
        &[0x0a, 0, 0, 0, 0x10],
        &[0x06, 0xc1],
    ] {
        let mut tcp = std::net::TcpStream::connect(node.bind).expect("tcp");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut frame = stream.to_vec();
        if stream[0] == 0x0a {
            frame.extend_from_slice(&[0; 16]);
        }
        tcp.write_all(&frame).expect("write");
        let _ = tcp.shutdown(std::net::Shutdown::Write);
        let mut reply = Vec::new();
        let _ = tcp.read_to_end(&mut reply);
    }
    let dropped = serf_tests::eventually(Duration::from_secs(10), || {
        let info = node.info();
        let dropped: u64 = info["gossip"]["packets_dropped"].as_str()?.parse().ok()?;
        (dropped >= 6).then_some(dropped)
    });
    assert!(dropped.is_some(), "{}", node.info());
    still_answers(&node);
    let members = stdout_ok(&node.cli(&["members"]));
    assert_eq!(members.lines().count(), 1, "{members}");
}
