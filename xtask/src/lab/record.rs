//! The real agent on the victim's interface, and its output turned into the lab's recording: the
//! agent's flow and process records, each with a `"lab"` label object, zstd-compressed.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{BufRead, BufReader, BufWriter, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::{
    label::{LabLabel, Labeller, ProcRecord},
    topology::{log_tail, Proc, Topology, HOST_IF},
};

/// `detector run` attached to the victim's interface.
pub struct Agent {
    proc: Proc,
    /// Its JSON lines.
    pub out: PathBuf,
}

impl Agent {
    /// Starts the agent inside the victim's namespace and waits until it streams.
    pub fn start(bin: &Path, topo: &Topology, work: &Path) -> anyhow::Result<Self> {
        let out = work.join("agent.jsonl");
        let log = work.join("logs").join("agent.log");
        let mut cmd = topo.victim().ns.cmd(bin);
        cmd.args(["run", "--iface", HOST_IF])
            .args(isolation_args(bin, work)?)
            .arg("--output")
            .arg(&out)
            // Floods and scans make many records at once: room for bursts, so nothing is lost.
            .args([
                "--flow-ringbuf-bytes",
                "16777216",
                "--proc-ringbuf-bytes",
                "8388608",
                "--stats-interval",
                "5s",
            ])
            .env("DETECTOR_LOG", "info");
        let mut proc = Proc::spawn("victim:agent", &mut cmd, &log)?;
        let start = Instant::now();
        loop {
            // Ready once it says so (the wording has changed between versions), or once its
            // first stats line, written when its main loop starts, is out.
            let said = fs::read_to_string(&log).unwrap_or_default();
            let ready = READY_MESSAGES.iter().any(|m| said.contains(m))
                || fs::read_to_string(&out)
                    .unwrap_or_default()
                    .contains("\"type\":\"stats\"");
            if ready {
                return Ok(Self { proc, out });
            }
            if let Some(s) = proc.try_wait()? {
                bail!(
                    "the agent exited ({s}) before streaming:\n{}",
                    log_tail(&log)
                );
            }
            if super::interrupted() {
                bail!("interrupted by a signal: the lab was torn down");
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("the agent did not start within 60 s:\n{}", log_tail(&log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent with SIGINT (it flushes the flows still open) and checks it exited well;
    /// returns the warnings it logged.
    pub fn stop(mut self) -> anyhow::Result<Vec<String>> {
        self.proc.signal(libc::SIGINT);
        match self.proc.wait_timeout(Duration::from_secs(60))? {
            Some(s) if s.success() => Ok(fs::read_to_string(&self.proc.log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(" WARN "))
                .map(str::to_string)
                .collect()),
            Some(s) => bail!("the agent exited with {s}:\n{}", self.proc.log_tail()),
            None => bail!(
                "the agent did not stop within 60 s:\n{}",
                self.proc.log_tail()
            ),
        }
    }
}

/// What the agent logs when its main loop starts, in the versions seen so far.
const READY_MESSAGES: &[&str] = &[
    "streaming flow and process records",
    "detecting; records to",
];

/// Options that keep the agent inside the lab, for agent versions that have them (probed with
/// `run --help`): the built-in defaults rather than the host's configuration file, its own state
/// directory and control socket (an agent may be running on the host), no metrics listener, no
/// drops (the recording shows what the tools did, not what a policy blocked), alerts to a file.
fn isolation_args(bin: &Path, work: &Path) -> anyhow::Result<Vec<std::ffi::OsString>> {
    let help = super::topology::output(Command::new(bin).args(["run", "--help"]))?;
    let has = |flag: &str| {
        help.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .any(|w| w == flag)
    };
    let dir = work.join("agent");
    fs::create_dir_all(&dir)?;
    let config = dir.join("detector.toml");
    fs::write(&config, "# empty: the agent's built-in defaults\n")?;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for (flag, value) in [
        ("--config", config.into_os_string()),
        ("--state-dir", dir.join("state").into_os_string()),
        (
            "--control-socket",
            dir.join("control.sock").into_os_string(),
        ),
        ("--metrics-listen", "".into()),
        ("--drop", "off".into()),
        ("--events", dir.join("alerts.jsonl").into_os_string()),
    ] {
        if has(flag) {
            args.push(flag.into());
            args.push(value);
        }
    }
    Ok(args)
}

/// The fields of an agent line the labeller reads.
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    // flow
    #[serde(rename = "final", default)]
    is_final: bool,
    first_seen_ns: Option<u64>,
    src_addr: Option<IpAddr>,
    dst_addr: Option<IpAddr>,
    #[serde(default)]
    src_port: u16,
    #[serde(default)]
    dst_port: u16,
    #[serde(default)]
    proto: u8,
    #[serde(default)]
    icmp_type: u8,
    // process
    ts_ns: Option<u64>,
    #[serde(default)]
    pid: u32,
    #[serde(default)]
    ppid: u32,
    local_addr: Option<IpAddr>,
    peer_addr: Option<IpAddr>,
}

/// One flow: protocol, initiator address and port, responder address and port, first packet.
type FlowId = (u8, IpAddr, u16, IpAddr, u16, u64);

/// Counts of one recording.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Flow records written (all reasons).
    pub flow_records: u64,
    /// Flows, per label ("attack", "benign", "unattributed").
    pub flows: BTreeMap<String, u64>,
    /// Flows whose last record is not a final one (the agent should flush every flow when it
    /// stops; their last record stands in).
    pub flows_without_final: u64,
    /// Flows per session id.
    pub flows_per_session: BTreeMap<String, u64>,
    /// Process records written, per label.
    pub process_records: BTreeMap<String, u64>,
    /// Process records of the host's other processes, left out.
    pub process_records_foreign: u64,
    /// The agent's last `stats` line (its kernel counters, losses included).
    pub agent_stats: Option<serde_json::Value>,
}

/// Labels the agent's output into `dest` (zstd JSON lines: the agent's record as written, plus a
/// `"lab"` object), compressed at `level`.
///
/// Compression runs in the zstd tool rather than the zstd crate: xtask is built unoptimised,
/// and so is the crate's C code, which at high levels takes many minutes on a lab run's output.
/// On a 64 MB run: level 9 gives 3.8 MB in 2 s, level 19 2.9 MB in about 3 minutes.
pub fn write_recording(
    agent_out: &Path,
    labeller: &Labeller,
    services: &[(String, u32)],
    dest: &Path,
    level: u32,
) -> anyhow::Result<Summary> {
    let f = fs::File::open(agent_out)
        .with_context(|| format!("cannot open the agent's output {}", agent_out.display()))?;
    let mut lines = Vec::new();
    let mut parsed = Vec::new();
    for (n, l) in BufReader::new(f).lines().enumerate() {
        let l = l.with_context(|| format!("{}: line {}", agent_out.display(), n + 1))?;
        let p: Line = serde_json::from_str(&l)
            .with_context(|| format!("{}: line {} is not a record", agent_out.display(), n + 1))?;
        lines.push(l);
        parsed.push(p);
    }
    let mut summary = Summary::default();
    let mut labels: Vec<Option<LabLabel>> = vec![None; lines.len()];
    let mut last: HashMap<FlowId, (usize, bool)> = HashMap::new();
    let mut proc_idx = Vec::new();
    let mut procs = Vec::new();
    for (i, p) in parsed.iter().enumerate() {
        match p.kind.as_str() {
            "flow" => {
                let (Some(src), Some(dst), Some(t)) = (p.src_addr, p.dst_addr, p.first_seen_ns)
                else {
                    bail!(
                        "{}: line {}: flow record without addresses or time",
                        agent_out.display(),
                        i + 1
                    );
                };
                let l = labeller.flow(src, dst, p.proto, p.icmp_type, t);
                summary.flow_records += 1;
                // One flow: its 5-tuple and first packet (a later flow on the same 5-tuple
                // starts later).
                let id = (p.proto, src, p.src_port, dst, p.dst_port, t);
                let entry = last.entry(id).or_insert((i, false));
                if !entry.1 {
                    *entry = (i, p.is_final);
                }
                labels[i] = Some(l);
            }
            "process" => {
                proc_idx.push(i);
                procs.push(ProcRecord {
                    ts_ns: p.ts_ns.unwrap_or(0),
                    pid: p.pid,
                    ppid: p.ppid,
                    local: p.local_addr,
                    peer: p.peer_addr,
                });
            }
            "stats" => {
                summary.agent_stats = serde_json::from_str(&lines[i]).ok();
            }
            _ => {}
        }
    }
    for &(i, is_final) in last.values() {
        let l = labels[i].as_ref().expect("flow records are labelled");
        *summary.flows.entry(l.label.clone()).or_default() += 1;
        if let Some(s) = &l.session {
            *summary.flows_per_session.entry(s.clone()).or_default() += 1;
        }
        if !is_final {
            summary.flows_without_final += 1;
        }
    }
    for (i, l) in proc_idx.iter().zip(labeller.processes(&procs, services)) {
        match &l {
            Some(l) => *summary.process_records.entry(l.label.clone()).or_default() += 1,
            None => summary.process_records_foreign += 1,
        }
        labels[*i] = l;
    }
    let tmp = dest.with_extension("zst.tmp");
    let mut zstd = Command::new("zstd")
        .args(["-q", "-f", "-T0", &format!("-{level}"), "-o"])
        .arg(&tmp)
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot start zstd")?;
    let mut enc = BufWriter::new(zstd.stdin.take().context("zstd stdin")?);
    for (line, label) in lines.iter().zip(&labels) {
        let Some(label) = label else { continue };
        let body = line.trim_end();
        let Some(head) = body.strip_suffix('}') else {
            bail!("agent line is not a JSON object: {body}");
        };
        // The agent's bytes stay as they are; the label is appended as the last field.
        enc.write_all(head.as_bytes())?;
        enc.write_all(b",\"lab\":")?;
        serde_json::to_writer(&mut enc, label)?;
        enc.write_all(b"}\n")?;
    }
    enc.flush()?;
    drop(enc);
    let status = zstd.wait()?;
    if !status.success() {
        bail!("zstd failed ({status}) writing {}", tmp.display());
    }
    fs::rename(&tmp, dest).with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(summary)
}

/// Per variant: flows per session (min, max, mean) and the spread (max - min) / mean, the
/// measure behind the determinism tolerance in docs/lab.md.
pub fn spread_per_variant(
    sessions: &[(String, String)],
    flows: &BTreeMap<String, u64>,
) -> BTreeMap<String, serde_json::Value> {
    let mut per: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (id, variant) in sessions {
        per.entry(variant)
            .or_default()
            .push(flows.get(id).copied().unwrap_or(0));
    }
    per.into_iter()
        .map(|(v, counts)| {
            let min = counts.iter().copied().min().unwrap_or(0);
            let max = counts.iter().copied().max().unwrap_or(0);
            let mean = counts.iter().sum::<u64>() as f64 / counts.len().max(1) as f64;
            let spread = if mean > 0.0 {
                (max - min) as f64 / mean
            } else {
                0.0
            };
            (
                v.to_string(),
                serde_json::json!({
                    "sessions": counts,
                    "min": min,
                    "max": max,
                    "mean": (mean * 10.0).round() / 10.0,
                    "spread": (spread * 1000.0).round() / 1000.0,
                }),
            )
        })
        .collect()
}
