//! Traffic the agent tests make inside their namespaces: a web service and its clients (the
//! benign side), a listener and beaconing towards it (a C2 channel), an nmap scan, and filters
//! over the agent's alert events.
//!
//! The benign exchange is a real HTTP request and a 1.2 KB page, as the lab's benign clients
//! make, not a bare ping-pong of a few bytes that no real service sees.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::Value;

use crate::{Lan, Netns};

/// The request every client sends.
const REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: victim\r\nUser-Agent: curl/8.14\r\nAccept: */*\r\n\r\n";

/// The page the web service answers: a 1.2 KB HTML document.
pub fn web_page() -> Vec<u8> {
    let body = "<p>detector test page</p>\n".repeat(48);
    format!(
        "HTTP/1.1 200 OK\r\nServer: dt\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A web service listening on `addr` inside a namespace, answering every connection with
/// [`web_page`]; it stops when dropped.
pub struct WebService {
    stop: Arc<AtomicBool>,
}

impl WebService {
    /// Starts the service; returns once it listens.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        ns.spawn("dt-web", move || {
            let l = TcpListener::bind(addr).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 512];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(&web_page());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        rx.recv().unwrap();
        Self { stop }
    }
}

impl Drop for WebService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One request from a namespace; true when the whole page came back.
pub fn web_get(ns: &Netns, addr: SocketAddr) -> bool {
    ns.spawn("dt-client", move || get(addr)).join().unwrap()
}

/// A [`WebService`] on one host of a [`Lan`], and requests to it from the others.
pub struct LanService {
    _web: WebService,
    host: usize,
    pub port: u16,
}

impl LanService {
    /// Starts the service on `host`'s address and `port`; it stops when dropped.
    pub fn start(lan: &Lan, host: usize, port: u16) -> Self {
        let addr = SocketAddr::from((lan.ips[host], port));
        Self {
            _web: WebService::start(&lan.hosts[host], addr),
            host,
            port,
        }
    }

    /// One request from host `from`; true when it got the page.
    pub fn request(&self, lan: &Lan, from: usize) -> bool {
        web_get(
            &lan.hosts[from],
            SocketAddr::from((lan.ips[self.host], self.port)),
        )
    }
}

/// `n` requests from a namespace, 20 ms apart (failures ignored).
pub fn browse(ns: &Netns, addr: SocketAddr, n: usize) {
    ns.spawn("dt-browser", move || {
        for _ in 0..n {
            get(addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .join()
    .unwrap();
}

fn get(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(REQUEST);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out == web_page()
}

/// A listener on `addr` inside a namespace that takes whatever is sent to it (an attacker's
/// C2 or drop port); returns once it listens and runs until the namespace goes.
pub fn sink(ns: &Netns, addr: SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn("dt-sink", move || {
        let l = TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        for mut c in l.incoming().flatten() {
            let _ = std::io::copy(&mut c, &mut std::io::sink());
        }
    });
    rx.recv().unwrap();
}

/// A beaconing session from a namespace: `count` calls to `to` every `gap`, a short message
/// over a new connection each time.
pub fn beacon(ns: &Netns, to: SocketAddr, count: usize, gap: Duration) {
    ns.spawn("dt-beacon", move || {
        for i in 0..count {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
            s.write_all(format!("beacon 601 {i}\n").as_bytes()).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let _ = s.read_to_end(&mut Vec::new());
            std::thread::sleep(gap);
        }
    })
    .join()
    .unwrap();
}

/// A bounded nmap SYN scan of ports 1-1000 of `target` from a namespace (one minute at most,
/// no retries); fails the test when nmap fails.
pub fn nmap_syn_scan(ns: &Netns, target: &str) {
    let out = std::process::Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &ns.name])
        .args([
            "nmap",
            "-n",
            "-Pn",
            "-sS",
            "-T4",
            "--max-retries",
            "0",
            "-p",
            "1-1000",
            target,
        ])
        .output()
        .expect("run nmap");
    assert!(
        out.status.success(),
        "nmap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Alert events whose flow was initiated by `src`.
pub fn alerts_from<'a>(lines: &'a [Value], src: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["type"] == "alert" && l["flow"]["src_addr"] == src)
        .collect()
}

/// Alert events on flows to or from `addr`.
pub fn alerts_about<'a>(lines: &'a [Value], addr: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| {
            l["type"] == "alert" && (l["flow"]["src_addr"] == addr || l["flow"]["dst_addr"] == addr)
        })
        .collect()
}
