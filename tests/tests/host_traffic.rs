//! The agent attached to a veth in a network namespace, real traffic from the peer namespace:
//! the records' packet and byte counts per direction equal what was on the wire, and the
//! process events name the processes that made the connections.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use integration_tests::{final_flows, require_root, unique, Agent, Pair};
use serde_json::Value;

fn agent_on_b(pair: &Pair) -> Agent {
    Agent::start(&pair.b, &["--iface", &pair.b_if, "--idle-timeout", "120s"])
}

fn flow(
    flows: &std::collections::HashMap<(u64, String, u64, String, u64), Value>,
    k: (u64, String, u64, String, u64),
) -> &Value {
    flows
        .get(&k)
        .unwrap_or_else(|| panic!("no flow {k:?} among {:?}", flows.keys().collect::<Vec<_>>()))
}

fn port(n: u16) -> u16 {
    20000 + (std::process::id() % 20000) as u16 + n
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn ping_counts_are_exact_in_both_directions() {
    require_root();
    let pair = Pair::new();
    let agent = agent_on_b(&pair);
    pair.a.sh(&format!(
        "ping -c 5 -i 0.2 -s 100 {}",
        Ipv4Addr::from(pair.b_ip)
    ));
    let lines = agent.stop();
    let flows = final_flows(&lines);
    let a = Ipv4Addr::from(pair.a_ip).to_string();
    let b = Ipv4Addr::from(pair.b_ip).to_string();
    let f = flows
        .iter()
        .find(|(k, _)| k.0 == 1 && k.1 == a && k.3 == b)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no ICMP flow a→b in {lines:?}"));
    // 100 bytes of data + 8 ICMP + 20 IP = 128 bytes per packet.
    assert_eq!(
        (f["packets_fwd"].as_u64(), f["packets_rev"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(
        (f["bytes_fwd"].as_u64(), f["bytes_rev"].as_u64()),
        (Some(640), Some(640))
    );
    assert_eq!(f["icmp_type"], 8);
    assert_eq!(f["final"], true);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let first = f["first_seen_ns"].as_u64().unwrap();
    assert!(
        now.abs_diff(first) < 120_000_000_000,
        "first_seen {first} is not wall-clock time"
    );
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn udp_datagrams_are_counted_exactly() {
    require_root();
    let pair = Pair::new();
    let agent = agent_on_b(&pair);
    let b = SocketAddr::from((pair.b_ip, port(1)));
    let rx = pair
        .b
        .spawn("dt-udp-rx", move || UdpSocket::bind(b).unwrap());
    let rx_sock = rx.join().unwrap();
    let sizes: Vec<usize> = (1..=10).map(|i| i * 100).collect();
    let a = SocketAddr::from((pair.a_ip, port(2)));
    let sent = sizes.clone();
    pair.a
        .spawn("dt-udp-tx", move || {
            let s = UdpSocket::bind(a).unwrap();
            for n in sent {
                s.send_to(&vec![7u8; n], b).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .join()
        .unwrap();
    let mut buf = [0u8; 2000];
    rx_sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for _ in &sizes {
        rx_sock.recv_from(&mut buf).unwrap();
    }
    let lines = agent.stop();
    let flows = final_flows(&lines);
    let f = flow(
        &flows,
        (
            17,
            Ipv4Addr::from(pair.a_ip).to_string(),
            a.port() as u64,
            Ipv4Addr::from(pair.b_ip).to_string(),
            b.port() as u64,
        ),
    );
    let want_bytes: u64 = sizes.iter().map(|&n| (n + 28) as u64).sum();
    assert_eq!(f["packets_fwd"], 10);
    assert_eq!(f["bytes_fwd"], want_bytes);
    assert_eq!(f["payload_bytes_fwd"], sizes.iter().sum::<usize>() as u64);
    assert_eq!(
        (f["packets_rev"].as_u64(), f["bytes_rev"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(f["first_sizes"].as_array().unwrap().len(), 8);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn ipv6_exchange_is_counted_exactly() {
    require_root();
    let pair = Pair::new();
    let agent = agent_on_b(&pair);
    let b = SocketAddr::from((Ipv6Addr::from(pair.b_ip6), port(3)));
    let a = SocketAddr::from((Ipv6Addr::from(pair.a_ip6), port(4)));
    let (ready_tx, ready_rx) = mpsc::channel();
    let echo = pair.b.spawn("dt-echo6", move || {
        let s = UdpSocket::bind(b).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2000];
        for _ in 0..5 {
            let (n, from) = s.recv_from(&mut buf).unwrap();
            s.send_to(&buf[..n], from).unwrap();
        }
    });
    ready_rx.recv().unwrap();
    pair.a
        .spawn("dt-client6", move || {
            let s = UdpSocket::bind(a).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 2000];
            for _ in 0..5 {
                s.send_to(&[1u8; 200], b).unwrap();
                s.recv_from(&mut buf).unwrap();
            }
        })
        .join()
        .unwrap();
    echo.join().unwrap();
    let lines = agent.stop();
    let flows = final_flows(&lines);
    let f = flow(
        &flows,
        (
            17,
            Ipv6Addr::from(pair.a_ip6).to_string(),
            a.port() as u64,
            Ipv6Addr::from(pair.b_ip6).to_string(),
            b.port() as u64,
        ),
    );
    assert_eq!(f["family"], 6);
    assert_eq!(
        (f["packets_fwd"].as_u64(), f["packets_rev"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(
        (f["bytes_fwd"].as_u64(), f["bytes_rev"].as_u64()),
        (Some(5 * 248), Some(5 * 248))
    );
}

/// Per-direction (packets, IP bytes) of one TCP connection in a capture.
fn count_capture(path: &std::path::Path, client: SocketAddr) -> ([u64; 2], [u64; 2]) {
    let mut packets = [0u64; 2];
    let mut bytes = [0u64; 2];
    let mut r = detector::pcap::Reader::open(path).expect("open capture");
    while let Some(p) = r.next_packet().expect("read capture") {
        let Ok(parsed) = detector_common::packet::parse(&detector_common::packet::Captured {
            data: p.data,
            wire_len: p.wire_len,
        }) else {
            continue;
        };
        if parsed.key.proto != 6 {
            continue;
        }
        let src = if parsed.from_lo {
            parsed.key.port_lo
        } else {
            parsed.key.port_hi
        };
        let dir = usize::from(src != client.port());
        packets[dir] += 1;
        bytes[dir] += parsed.l3_len as u64;
    }
    (packets, bytes)
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn tcp_transfer_matches_the_wire_and_names_the_processes() {
    require_root();
    let pair = Pair::new();
    let agent = agent_on_b(&pair);
    let b = SocketAddr::from((pair.b_ip, port(5)));
    let capture = std::env::temp_dir().join(format!("{}.pcap", unique("dt-tcp")));
    // The sender's view of the wire, for the expected counts.
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.a.name,
            "tcpdump",
            "-i",
            &pair.a_if,
            "-U",
            // Without immediate mode libpcap holds packets in a ring-buffer block that SIGINT
            // discards.
            "--immediate-mode",
            "-n",
            "-w",
        ])
        .arg(&capture)
        .args(["tcp", "port", &b.port().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    {
        // tcpdump says "listening on" once its capture is open.
        let mut err = tcpdump.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            assert_eq!(
                err.read(&mut byte).unwrap(),
                1,
                "tcpdump exited: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.push(byte[0]);
        }
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    }

    const N: usize = 200_000;
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = pair.b.spawn("dt-server", move || {
        let l = TcpListener::bind(b).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, peer) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        (got.len(), peer)
    });
    ready_rx.recv().unwrap();
    let client = pair
        .a
        .spawn("dt-client", move || {
            let mut s = TcpStream::connect(b).unwrap();
            let local = s.local_addr().unwrap();
            s.write_all(&vec![0x5a; N]).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            local
        })
        .join()
        .unwrap();
    let (received, peer) = server.join().unwrap();
    assert_eq!(received, N);
    assert_eq!(peer, client);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    tcpdump.wait().unwrap();
    let lines = agent.stop();
    let (want_packets, want_bytes) = count_capture(&capture, client);
    let _ = std::fs::remove_file(&capture);

    let flows = final_flows(&lines);
    let a_ip = Ipv4Addr::from(pair.a_ip).to_string();
    let b_ip = Ipv4Addr::from(pair.b_ip).to_string();
    let f = flow(
        &flows,
        (
            6,
            a_ip.clone(),
            client.port() as u64,
            b_ip.clone(),
            b.port() as u64,
        ),
    );
    assert_eq!(f["payload_bytes_fwd"], N as u64);
    assert_eq!(
        [
            f["packets_fwd"].as_u64().unwrap(),
            f["packets_rev"].as_u64().unwrap()
        ],
        want_packets
    );
    assert_eq!(
        [
            f["bytes_fwd"].as_u64().unwrap(),
            f["bytes_rev"].as_u64().unwrap()
        ],
        want_bytes
    );
    assert_eq!(
        f["tcp_flags_fwd"].as_u64().unwrap() & 0x03,
        0x03,
        "SYN and FIN from the client"
    );
    let pid = std::process::id() as u64;
    assert_eq!(
        f["process"]["comm"], "dt-server",
        "the local end on b is the server: {f}"
    );
    assert_eq!(f["process"]["pid"], pid);

    let events: Vec<&Value> = lines.iter().filter(|l| l["type"] == "process").collect();
    let connect = events
        .iter()
        .find(|e| {
            e["event"] == "connect" && e["peer_port"] == b.port() && e["peer_addr"] == b_ip.as_str()
        })
        .unwrap_or_else(|| panic!("no connect event to {b} in {events:?}"));
    assert_eq!(connect["comm"], "dt-client");
    assert_eq!(connect["pid"], pid);
    assert_eq!(connect["result"], 0);
    let accept = events
        .iter()
        .find(|e| e["event"] == "accept" && e["comm"] == "dt-server" && e["pid"] == pid)
        .unwrap_or_else(|| panic!("no accept event by dt-server in {events:?}"));
    assert!(accept["result"].as_i64().unwrap() >= 0, "{accept}");
    assert_eq!(accept["peer_addr"], a_ip.as_str());
    assert_eq!(accept["peer_port"], client.port());
    let established = events
        .iter()
        .find(|e| {
            e["event"] == "tcp_state"
                && e["tcp_state"] == "ESTABLISHED"
                && e["local_port"] == b.port()
        })
        .unwrap_or_else(|| panic!("no ESTABLISHED event on the server side in {events:?}"));
    assert_eq!(established["comm"], "dt-server");
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn metrics_report_records_table_occupancy_and_held_back_records() {
    require_root();
    let pair = Pair::new();
    let listen = format!("127.0.0.1:{}", port(900));
    let agent = Agent::start(
        &pair.b,
        &["--iface", &pair.b_if, "--metrics-listen", &listen],
    );
    pair.a
        .sh(&format!("ping -c 3 -i 0.2 {}", Ipv4Addr::from(pair.b_ip)));
    // Occupancy comes from the sweep thread's walk, once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let text = pair
        .b
        .sh(&format!("curl -s --max-time 5 http://{listen}/metrics"));
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
    };
    assert!(value("detector_flow_records_total") >= 2.0, "{text}");
    assert!(
        value("detector_flow_table_entries") >= 1.0,
        "the ping's flow is in the table"
    );
    assert!(value("detector_flow_table_capacity") >= value("detector_flow_table_entries"));
    assert!(value("detector_thin_evidence_total") >= 0.0);
    assert!(value("detector_alerts_rate_limited_total") >= 0.0);
    agent.stop();
}
