//! The few-shot loop, live: a model that never saw port scans (trained with the scan family
//! held out: `cargo xtask train-default --holdout-family scan --out
//! detector/models/test/holdout-scan.safetensors`) scores a first nmap session low; the
//! operator confirms it as an incident; the agent adapts, and a later scan session from
//! another attacker is flagged, while the benign client raises no alert.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
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

fn holdout_model() -> String {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../detector/models/test/holdout-scan.safetensors"
    );
    assert!(
        std::path::Path::new(p).is_file(),
        "{p} missing: run cargo xtask train-default --holdout-family scan --out {p}"
    );
    p.to_string()
}

/// A web-like service on the victim's port 80 answering "ok".
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
                    let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
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
                    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
                    let mut out = Vec::new();
                    let _ = s.read_to_end(&mut out);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .unwrap();
}

fn scan(lan: &Lan, from: usize, ports: &str) {
    let out = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &lan.hosts[from].name])
        .args([
            "nmap",
            "-n",
            "-Pn",
            "-sS",
            "-T4",
            "--max-retries",
            "0",
            "-p",
            ports,
            &lan.ip(VICTIM),
        ])
        .output()
        .expect("run nmap");
    assert!(
        out.status.success(),
        "nmap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn alerts_from(lines: &[Value], src: &str) -> usize {
    lines
        .iter()
        .filter(|l| l["type"] == "alert" && l["flow"]["src_addr"] == src)
        .count()
}

#[test]
fn a_confirmed_first_session_teaches_the_agent_the_family() {
    require_root();
    let model = holdout_model();
    let lan = Lan::new(4);
    let stop = Arc::new(AtomicBool::new(false));
    serve(&lan, stop.clone());
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

    // Benign traffic, then the first scan session: the held-out model does not flag it.
    browse(&lan, 150);
    scan(&lan, ATTACKER, "1-400");
    std::thread::sleep(Duration::from_millis(500));
    let before = agent.lines();
    assert_eq!(
        alerts_from(&before, &lan.ip(ATTACKER)),
        0,
        "the held-out model already flags the scan: the loop would show nothing"
    );

    // The operator confirms it.
    let out = dir.client(&[
        "incident",
        "confirm",
        "--family",
        "scan",
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

    // A later session of the same family, from another host: flagged.
    scan(&lan, SECOND_ATTACKER, "401-800");
    browse(&lan, 50);
    std::thread::sleep(Duration::from_millis(500));
    let history = dir.client(&["model", "history"]);
    assert!(history.status.success());
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(history["current"], "host-1");
    let lines = agent.stop();
    stop.store(true, Ordering::Relaxed);
    let flagged = lines
        .iter()
        .filter(|l| {
            l["type"] == "alert" && l["flow"]["src_addr"] == lan.ip(SECOND_ATTACKER).as_str()
        })
        .collect::<Vec<_>>();
    assert!(
        !flagged.is_empty(),
        "the second scan session is not flagged after adaptation"
    );
    assert!(flagged.iter().all(|a| a["model_version"] == "host-1"));
    assert_eq!(
        flagged[0]["family"], "scan",
        "alerts name the confirmed family"
    );
    // Benign traffic stays within the budget: the client raises no alert at all.
    assert_eq!(
        alerts_from(&lines, &lan.ip(CLIENT)),
        0,
        "the benign client alerted"
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
