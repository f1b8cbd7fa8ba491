//! The few-shot loop, live: a model that never saw beaconing (trained with that family held
//! out: `cargo xtask train-default --holdout-family beaconing --out
//! detector/models/test/holdout-beaconing.safetensors`) does not flag a first beaconing session
//! (the victim calling an attacker's port every half second); the operator confirms it as an
//! incident by the attacker's address; the agent adapts, and a later session towards another
//! attacker is flagged, while the benign client raises no alert.
//!
//! (Beaconing rather than a port scan or an upload: a model without the scan family still flags
//! nmap from what scans share with the floods it learned, and one without exfiltration still
//! flags a large upload to an odd port; beacons look like any small request, one by one.)

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use integration_tests::{require_root, Agent, AgentDir, Lan};
use serde_json::Value;

const VICTIM: usize = 0;
const ATTACKER: usize = 1;
const CLIENT: usize = 2;
const SECOND_ATTACKER: usize = 3;
/// The attackers' listening port (as the lab's beacon-tcp scenario), and beacons per session.
const C2_PORT: u16 = 4444;
const BEACONS: usize = 12;

fn holdout_model() -> String {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../detector/models/test/holdout-beaconing.safetensors"
    );
    assert!(
        std::path::Path::new(p).is_file(),
        "{p} missing: run cargo xtask train-default --holdout-family beaconing --out {p}"
    );
    p.to_string()
}

/// A web service on the victim's port 80 answering a 1.2 KB page.
fn serve(lan: &Lan, stop: Arc<AtomicBool>) {
    let addr = SocketAddr::from((lan.ips[VICTIM], 80));
    let (tx, rx) = std::sync::mpsc::channel();
    lan.hosts[VICTIM].spawn("dt-web", move || {
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let mut buf = [0u8; 256];
                    let _ = c.read(&mut buf);
                    let body = "<p>detector test page</p>\n".repeat(48);
                    let _ = c.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nServer: dt\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    rx.recv().unwrap();
}

/// `n` sequential requests from the benign client.
fn browse(lan: &Lan, n: usize) {
    let addr = SocketAddr::from((lan.ips[VICTIM], 80));
    lan.hosts[CLIENT]
        .spawn("dt-browser", move || {
            for _ in 0..n {
                if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    let _ = s.write_all(
                        b"GET / HTTP/1.1\r\nHost: victim\r\nUser-Agent: curl/8.14\r\nAccept: */*\r\n\r\n",
                    );
                    let mut out = Vec::new();
                    let _ = s.read_to_end(&mut out);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .unwrap();
}

/// A listener on an attacker that takes whatever is sent to its port.
fn listen(lan: &Lan, host: usize) {
    let addr = SocketAddr::from((lan.ips[host], C2_PORT));
    let (tx, rx) = std::sync::mpsc::channel();
    lan.hosts[host].spawn("dt-c2", move || {
        let l = TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        for mut c in l.incoming().flatten() {
            let _ = std::io::copy(&mut c, &mut std::io::sink());
        }
    });
    rx.recv().unwrap();
}

/// One beaconing session: the compromised victim calls `to` every half second, a short
/// message over a new connection each time.
fn beacon(lan: &Lan, to: usize) {
    let addr = SocketAddr::from((lan.ips[to], C2_PORT));
    lan.hosts[VICTIM]
        .spawn("dt-beacon", move || {
            for i in 0..BEACONS {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
                s.write_all(format!("beacon 601 {i}\n").as_bytes()).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let _ = s.read_to_end(&mut Vec::new());
                std::thread::sleep(Duration::from_millis(500));
            }
        })
        .join()
        .unwrap();
}

/// Alerts on flows to or from `addr`.
fn alerts_about<'a>(lines: &'a [Value], addr: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| {
            l["type"] == "alert" && (l["flow"]["src_addr"] == addr || l["flow"]["dst_addr"] == addr)
        })
        .collect()
}

#[test]
fn a_confirmed_first_session_teaches_the_agent_the_family() {
    require_root();
    let model = holdout_model();
    let lan = Lan::new(4);
    let stop = Arc::new(AtomicBool::new(false));
    serve(&lan, stop.clone());
    listen(&lan, ATTACKER);
    listen(&lan, SECOND_ATTACKER);
    let dir = AgentDir::new();
    let agent = Agent::start_in(
        &lan.hosts[VICTIM],
        &dir,
        &[
            "--iface",
            &lan.ifaces[VICTIM],
            "--drop",
            "off",
            "--model",
            &model,
        ],
    );

    // Benign traffic, then the first beaconing session: the held-out model does not flag it.
    browse(&lan, 150);
    beacon(&lan, ATTACKER);
    std::thread::sleep(Duration::from_millis(500));
    let before = agent.lines();
    let early = alerts_about(&before, &lan.ip(ATTACKER));
    assert!(
        early.is_empty(),
        "the held-out model already flags the beacons: the loop would show nothing: {:?}",
        early.first()
    );

    // The operator confirms it.
    let out = dir.client(&[
        "incident",
        "confirm",
        "--family",
        "beaconing",
        "--source",
        &lan.ip(ATTACKER),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "incident confirm failed: {stderr}");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["model"], "host-1", "{answer}");
    assert!(answer["flows"].as_u64().unwrap() >= 1);
    assert!(
        answer["report"]["fpr_after"].as_f64().unwrap()
            <= answer["report"]["fpr_before"].as_f64().unwrap() + 0.001,
        "{answer}"
    );

    // A later session of the same family, towards another attacker: flagged.
    beacon(&lan, SECOND_ATTACKER);
    browse(&lan, 50);
    std::thread::sleep(Duration::from_millis(500));
    let history = dir.client(&["model", "history"]);
    assert!(history.status.success());
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(history["current"], "host-1");
    let lines = agent.stop();
    stop.store(true, Ordering::Relaxed);
    let flagged = alerts_about(&lines, &lan.ip(SECOND_ATTACKER));
    assert!(
        !flagged.is_empty(),
        "the second beaconing session is not flagged after adaptation"
    );
    assert!(flagged.iter().all(|a| a["model_version"] == "host-1"));
    assert_eq!(
        flagged[0]["family"], "beaconing",
        "alerts name the confirmed family"
    );
    // Benign traffic stays within the budget: the client raises no alert at all.
    let client = alerts_about(&lines, &lan.ip(CLIENT));
    assert!(
        client.is_empty(),
        "the benign client alerted: {:?}",
        client.first()
    );
    // The adapted model survives a restart.
    let mut again = Agent::start_in(
        &lan.hosts[VICTIM],
        &dir,
        &[
            "--iface",
            &lan.ifaces[VICTIM],
            "--drop",
            "off",
            "--model",
            &model,
        ],
    );
    again.wait_for_log("model=host-1", Duration::from_secs(5));
    drop(again);
}
