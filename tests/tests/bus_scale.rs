//! The fleet at scale, on this machine: N simulated agents — the agent's own publisher code
//! (`detector::fleet::Fleet`), one NATS connection and spool each, as tasks of one process —
//! against a three-node JetStream cluster (streams with three replicas) on the loopback of a
//! namespace of its own. Each agent sends `DETECTOR_BENCH_RATE` alerts a second (default 1)
//! and a heartbeat a second for `DETECTOR_BENCH_SECS` (default 30); an ordered consumer on the
//! events stream measures publish-to-consumer latency and counts what arrived. Prints the
//! figures for BENCHMARKS.md "Fleet". Not a pass/fail test beyond "nothing lost": run it by
//! name (`cargo test -p integration-tests --test integration -- --ignored bus_scale
//! --nocapture`); `DETECTOR_BENCH_AGENTS` (default 1000) sets N.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use detector::fleet::{Fleet, FleetMetrics, FleetSection, Heartbeat};
use futures_util::StreamExt;
use integration_tests::{nats::NatsServer, require_root, Netns};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// CPU seconds (user + system) and peak resident MiB of a process.
fn cpu_and_peak(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat; after the ")" they are the 12th and 13th.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm_kb / 1024.0)
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on this process (inherited by the servers).
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max.min(1 << 20);
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

#[test]
#[ignore = "benchmark (about a minute, root, nats-server): run by name, see the module docs"]
fn thousand_simulated_agents_on_a_three_node_cluster() {
    require_root();
    raise_fd_limit();
    let agents: usize = env_or("DETECTOR_BENCH_AGENTS", 1000);
    let secs: u64 = env_or("DETECTOR_BENCH_SECS", 30);
    let rate: f64 = env_or("DETECTOR_BENCH_RATE", 1.0);
    let ns = Netns::new("dtfb");
    let nats = NatsServer::start_cluster(&ns, "127.0.0.1", &[], 3);
    nats.init_streams(&ns, 3, 268_435_456);
    let pids = nats.pids();
    let cpu0: f64 = pids.iter().map(|p| cpu_and_peak(*p).0).sum();
    let urls = nats.urls.clone();
    let seed = nats.admin.seed_file.clone();
    let state = nats.dir.join("agents");
    let report = ns
        .spawn("bench", move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run(agents, secs, rate, urls, seed, state))
        })
        .join()
        .expect("bench");
    let cpu1: f64 = pids.iter().map(|p| cpu_and_peak(*p).0).sum();
    let peaks: Vec<String> = pids
        .iter()
        .map(|p| format!("{:.0}", cpu_and_peak(*p).1))
        .collect();
    eprintln!(
        "FLEET BENCH: {agents} agents, {rate} alerts/s each, {secs} s: {report}; servers: {:.1} CPU-s over the run ({:.0}% of one core), peak RSS {} MiB",
        cpu1 - cpu0,
        100.0 * (cpu1 - cpu0) / report.wall_s,
        peaks.join(" / ")
    );
    assert_eq!(report.lost, 0, "alerts lost");
}

#[derive(Debug)]
struct Report {
    sent: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    alerts_per_s: f64,
    heartbeats_per_s: f64,
    dropped: u64,
    wall_s: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} alerts sent ({:.0}/s) and {:.0} heartbeats/s; {} received, {} lost, {} duplicates, {} dropped by publishers; publish-to-consumer p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.sent, self.alerts_per_s, self.heartbeats_per_s, self.received, self.lost, self.duplicates, self.dropped, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

async fn run(
    agents: usize,
    secs: u64,
    rate: f64,
    urls: Vec<String>,
    seed: PathBuf,
    state: PathBuf,
) -> Report {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let client = async_nats::ConnectOptions::new()
        .nkey(std::fs::read_to_string(&seed).unwrap())
        .connect(urls.clone())
        .await
        .expect("consumer connects");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("DETECTOR_EVENTS").await.expect("stream");
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: "detector.*.alert".into(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64)>();
    tokio::spawn(async move {
        while let Some(Ok(m)) = messages.next().await {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            let id = v["id"].as_str().unwrap_or("").to_string();
            let lat = now_ns().saturating_sub(v["sent_ns"].as_u64().unwrap_or(0));
            if lat_tx.send((id, lat)).is_err() {
                break;
            }
        }
    });

    let metrics = Arc::new(FleetMetrics::default());
    let mut fleets = Vec::with_capacity(agents);
    for i in 0..agents {
        let cfg = FleetSection {
            servers: urls.clone(),
            host_id: format!("sim{i}"),
            nkey_seed_file: seed.clone(),
            ..Default::default()
        };
        fleets.push(Fleet::start(&cfg, &state.join(i.to_string()), metrics.clone(), None).unwrap());
    }
    // Until every connection is up.
    let start = Instant::now();
    while (metrics.connected.get() as usize) < agents.min(1)
        && start.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let t0 = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let senders: Vec<_> = fleets.iter().map(|f| f.sender.clone()).collect();
    let mut drivers = Vec::new();
    for (i, s) in senders.into_iter().enumerate() {
        drivers.push(tokio::spawn(async move {
            // Spread the agents over the period.
            tokio::time::sleep(period.mul_f64(i as f64 / agents as f64)).await;
            let mut tick = tokio::time::interval(period);
            let mut hb = tokio::time::interval(Duration::from_secs(1));
            let (mut n, mut beats) = (0u64, 0u64);
            let end = t0 + Duration::from_secs(secs);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if Instant::now() >= end { break; }
                        s.alert(&serde_json::json!({"type": "alert", "id": format!("sim{i}-{n}"), "sent_ns": now_ns()}));
                        n += 1;
                    }
                    _ = hb.tick() => {
                        s.heartbeat(&Heartbeat {
                            kind: "heartbeat".into(), host: s.host().to_string(), ts_ns: now_ns(),
                            uptime_s: 0, model: "bench".into(), agent_version: "bench".into(),
                            records_read: 0, alerts: n, fleet_dropped: 0, spool_entries: 0,
                        });
                        beats += 1;
                    }
                }
            }
            (n, beats)
        }));
    }
    let (mut sent, mut beats) = (0u64, 0u64);
    for d in drivers {
        let (n, b) = d.await.unwrap();
        sent += n;
        beats += b;
    }
    let send_s = t0.elapsed().as_secs_f64();
    let mut seen = HashSet::new();
    let mut lats = Vec::new();
    let mut duplicates = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.len() as u64) < sent && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), lat_rx.recv()).await {
            Ok(Some((id, lat))) => {
                if seen.insert(id) {
                    lats.push(lat);
                } else {
                    duplicates += 1;
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    while let Ok((id, lat)) = lat_rx.try_recv() {
        if seen.insert(id) {
            lats.push(lat);
        } else {
            duplicates += 1;
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    for f in fleets {
        drop(f.stop());
    }
    lats.sort_unstable();
    let pct = |q: f64| {
        lats.get(((lats.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |v| *v as f64 / 1e6)
    };
    Report {
        sent,
        received: seen.len() as u64,
        lost: sent.saturating_sub(seen.len() as u64),
        duplicates,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        alerts_per_s: sent as f64 / send_s,
        heartbeats_per_s: beats as f64 / send_s,
        dropped: metrics.dropped(),
        wall_s,
    }
}

/// `detector fleet train` on 10⁴ confirmed incidents (`DETECTOR_BENCH_INCIDENTS`), for
/// BENCHMARKS.md "Fleet": the corpus's attack captures replayed into live feature rows (each
/// capture one family; each incident a slice of 5 of its rows) and its benign captures into
/// the benign rows every incident carries (16 each), published as 100 hosts' incidents to a
/// single JetStream server in a namespace of its own; then the trainer, under `/usr/bin/time
/// -v`, reads them all, adapts one family after another and publishes one signed model. Prints
/// wall time, peak memory and the trainer's report; not a timed test. Run it by name:
/// `cargo test -p integration-tests --test integration -- --ignored bus_scale::trainer
/// --nocapture` (`DETECTOR_BIN` picks the detector binary, e.g. a release build).
#[test]
#[ignore = "benchmark: needs root (a namespace) and nats-server; run by name"]
fn trainer_on_ten_thousand_incidents() {
    use detector::{
        features::{Featurizer, LIVE_COUNT, LIVE_FEATURE_SET},
        fleet::IncidentEvent,
    };
    require_root();
    let n: usize = env_or("DETECTOR_BENCH_INCIDENTS", 10_000);
    let rows_of = |sub: &str| -> Vec<(String, Vec<Vec<f32>>)> {
        integration_tests::corpus_files(sub)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
            .filter_map(|p| {
                let mut f = Featurizer::default();
                let mut rows = Vec::new();
                detector::replay::replay_file(&p, &Default::default(), |k, s, r| {
                    let mut row = vec![0.0; LIVE_COUNT];
                    f.features(k, s, r, &mut row);
                    rows.push(row);
                    Ok(())
                })
                .ok()?;
                let stem = p.file_stem()?.to_string_lossy().into_owned();
                let family = stem.split("--").next()?.to_string();
                (!rows.is_empty()).then_some((family, rows))
            })
            .collect()
    };
    let attacks = rows_of("pcap/attack");
    let benign: Vec<Vec<f32>> = rows_of("pcap/benign")
        .into_iter()
        .flat_map(|(_, r)| r)
        .collect();
    eprintln!(
        "{} attack captures ({} rows), {} benign rows",
        attacks.len(),
        attacks.iter().map(|(_, r)| r.len()).sum::<usize>(),
        benign.len()
    );
    assert!(!attacks.is_empty() && benign.len() >= 64);

    let ns = Netns::new("dtbench");
    ns.sh("ip link set lo up");
    let nats = NatsServer::start(&ns, "127.0.0.1", &[]);
    nats.init_streams(&ns, 1, 512 << 20);
    let key = nats.dir.join("fleet.key");
    let out = std::process::Command::new(integration_tests::detector_bin())
        .args(["fleet", "keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());

    let incidents: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let (family, rows) = &attacks[i % attacks.len()];
            let start = (i / attacks.len() * 5) % rows.len();
            let rows: Vec<Vec<f32>> = rows.iter().cycle().skip(start).take(5).cloned().collect();
            let host = format!("host-{}", i % 100);
            let ev = IncidentEvent {
                kind: "incident".into(),
                host: host.clone(),
                ts_ns: now_ns(),
                family: family.clone(),
                flows: rows.len(),
                feature_set: LIVE_FEATURE_SET.into(),
                rows,
                model: "default".into(),
                benign: benign
                    .iter()
                    .cycle()
                    .skip(i * 16 % benign.len())
                    .take(16)
                    .cloned()
                    .collect(),
            };
            (
                format!("detector.{host}.incident"),
                serde_json::to_vec(&ev).unwrap(),
            )
        })
        .collect();
    let bytes: usize = incidents.iter().map(|(_, p)| p.len()).sum();
    let published = Instant::now();
    let seed = nats.admin.seed_file.clone();
    nats.as_user(&ns, &seed, move |js| {
        Box::pin(async move {
            for chunk in incidents.chunks(256) {
                let mut acks = Vec::new();
                for (s, p) in chunk {
                    acks.push(js.publish(s.clone(), p.clone().into()).await.unwrap());
                }
                for a in acks {
                    a.await.unwrap();
                }
            }
        })
    });
    eprintln!(
        "{n} incidents ({:.1} MiB of JSON) published in {:.1} s",
        bytes as f64 / (1 << 20) as f64,
        published.elapsed().as_secs_f64()
    );

    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["/usr/bin/time", "-v"])
        .arg(integration_tests::detector_bin())
        .args(["fleet", "train", "--key"])
        .arg(&key)
        .arg("--config")
        .arg(nats.admin_config())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let field = |name: &str| {
        stderr
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    };
    eprintln!(
        "fleet train on {n} incidents: {}; {}; {}\nreport: {}",
        field("Elapsed (wall clock)"),
        field("Maximum resident set size"),
        field("User time"),
        serde_json::json!({
            "incidents": report["train"]["incidents"],
            "adapted": report["train"]["adapted"],
            "refused": report["train"]["refused"],
            "skipped": report["train"]["skipped"].as_array().map(Vec::len),
            "seconds": report["train"]["seconds"],
            "published": report["train"]["published"]["version"],
            "bytes": report["train"]["published"]["bytes"],
        })
    );
    assert_eq!(report["train"]["incidents"], n, "every incident read");
}
