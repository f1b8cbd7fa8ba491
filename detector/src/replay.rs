//! `detector replay`: runs captures through the same parse-and-update code as the kernel
//! programs (`detector_common::flow::process_packet`), with capture timestamps, and writes the
//! same flow records as the live agent.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use detector_common::{
    flow::{
        process_packet, stat,
        user::{MemEnv, MemTable},
        FlowConfig, FlowEnv, FlowKey, FlowState, Reason, DEFAULT_TABLE_SIZE,
    },
    packet::{Captured, Parsed},
};

use crate::pcap::{self, PcapError};

/// How often, in capture time, idle flows are looked for: a quarter of the idle timeout, at
/// least a second. A flow's final record can come up to that much later than its expiry, which
/// changes no counter (a packet after the timeout ends the flow in `process_packet` anyway);
/// scanning every flow every second made replay of a large flood quadratic.
fn sweep_every(cfg: &FlowConfig) -> u64 {
    (cfg.idle_timeout_ns / 4).max(1_000_000_000)
}

/// What one capture gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileSummary {
    pub file: PathBuf,
    pub packets: u64,
    pub flows: u64,
    pub records: u64,
    pub malformed: u64,
    pub not_ip: u64,
    /// Set when the capture ended in the middle of a packet: what it says, and that the flows
    /// read so far were kept.
    pub truncated: Option<String>,
    /// Alerts written (`--detect`).
    pub alerts: u64,
    /// Records that reached a threshold on too little evidence (`--detect`; policy.min_evidence).
    pub thin_evidence: u64,
    /// Entries put into the flow table (`flows` less the closed entries a new SYN reused).
    pub table_inserts: u64,
    /// Flows evicted from the full flow table before their final record, as the agent's kernel
    /// table would have evicted them.
    pub table_evicted: u64,
}

/// Replays one capture with the kernel's default table size; `on_record` gets every record in
/// the order the kernel would emit them, ending with a `flush` record for each flow still open
/// at the end of the capture.
pub fn replay_file(
    path: &Path,
    cfg: &FlowConfig,
    on_record: impl FnMut(&FlowKey, &FlowState, Reason) -> anyhow::Result<()>,
) -> anyhow::Result<FileSummary> {
    replay_file_in(path, cfg, DEFAULT_TABLE_SIZE, on_record)
}

/// [`replay_file`] with a flow table of `table_size` flows (`flows.table_size`): when it is
/// full, the least recently seen flows are evicted without a final record, as the kernel's LRU
/// table evicts them in the agent.
pub fn replay_file_in(
    path: &Path,
    cfg: &FlowConfig,
    table_size: u32,
    mut on_record: impl FnMut(&FlowKey, &FlowState, Reason) -> anyhow::Result<()>,
) -> anyhow::Result<FileSummary> {
    let mut reader =
        pcap::Reader::open(path).with_context(|| format!("cannot replay {}", path.display()))?;
    let mut table = MemTable::bounded(table_size as usize);
    let mut env = MemEnv::default();
    let mut summary = FileSummary {
        file: path.to_path_buf(),
        ..FileSummary::default()
    };
    let mut next_sweep = 0u64;
    let mut now = 0u64;
    // A non-Ethernet packet's frame is built here, one buffer for the whole capture.
    let mut frame = Vec::new();
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e @ PcapError::Truncated { .. }) => {
                summary.truncated = Some(format!("{e}; the flows read so far are kept"));
                break;
            }
            Err(e) => return Err(e.into()),
        };
        if !crate::linktype::supported(packet.link_type) {
            bail!(
                "{}: link type {} ({}) is not supported: replay reads Ethernet, Linux cooked \
                 (SLL, SLL2), raw IP, BSD loopback (NULL, LOOP), PPP and Cisco HDLC captures",
                path.display(),
                packet.link_type,
                pcap::link_type_name(packet.link_type)
            );
        }
        now = packet.ts_ns;
        let (data, wire_len) = crate::linktype::as_ethernet(
            packet.link_type,
            packet.data,
            packet.wire_len,
            &mut frame,
        );
        let pkt = Captured { data, wire_len };
        process_packet(&pkt, now, cfg, &mut table, &mut env);
        for (k, s, r) in env.records.drain(..) {
            on_record(&k, &s, r)?;
        }
        if now >= next_sweep {
            expire_into(&mut table, now, cfg, false, &mut env, &mut on_record)?;
            next_sweep = now.saturating_add(sweep_every(cfg));
        }
    }
    expire_into(&mut table, now, cfg, true, &mut env, &mut on_record)?;
    summary.packets = env.stats[stat::PACKETS as usize];
    summary.flows = env.stats[stat::FLOWS_CREATED as usize];
    summary.records = env.stats[stat::RECORDS as usize];
    summary.malformed = env.stats[stat::MALFORMED as usize];
    summary.not_ip = env.stats[stat::NOT_IP as usize];
    summary.table_inserts = env.stats[stat::TABLE_INSERTS as usize];
    summary.table_evicted = table.evicted;
    Ok(summary)
}

/// [`MemTable::expire`] with each final record handed to `on_record` as it is emitted, not
/// collected first: the end of a flood's capture flushes tens of thousands of flows, and
/// collecting them grew a vector of 300-byte records through fresh pages.
fn expire_into<F>(
    table: &mut MemTable,
    now: u64,
    cfg: &FlowConfig,
    all: bool,
    env: &mut MemEnv,
    on_record: &mut F,
) -> anyhow::Result<()>
where
    F: FnMut(&FlowKey, &FlowState, Reason) -> anyhow::Result<()>,
{
    let mut to = Forward {
        env,
        on_record,
        failed: None,
    };
    table.expire(now, cfg, all, &mut to);
    to.failed.map_or(Ok(()), Err)
}

/// A [`FlowEnv`] that hands records to a callback (the first error stops them) and counts
/// into a [`MemEnv`].
struct Forward<'a, F> {
    env: &'a mut MemEnv,
    on_record: &'a mut F,
    failed: Option<anyhow::Error>,
}

impl<F> FlowEnv for Forward<'_, F>
where
    F: FnMut(&FlowKey, &FlowState, Reason) -> anyhow::Result<()>,
{
    fn emit(&mut self, key: &FlowKey, state: &FlowState, reason: Reason) -> bool {
        if self.failed.is_none() {
            if let Err(e) = (self.on_record)(key, state, reason) {
                self.failed = Some(e);
            }
        }
        true
    }
    fn count(&mut self, stat: u32) {
        self.env.count(stat);
    }
    fn block_generation(&mut self) -> Option<u32> {
        self.env.block_generation()
    }
    fn blocked(&mut self, parsed: &Parsed, now_ns: u64) -> bool {
        self.env.blocked(parsed, now_ns)
    }
}

/// The final state of every flow of a capture (its last record), in emission order.
pub fn final_flows(
    path: &Path,
    cfg: &FlowConfig,
) -> anyhow::Result<(Vec<(FlowKey, FlowState)>, FileSummary)> {
    let mut out = Vec::new();
    let summary = replay_file(path, cfg, |k, s, r| {
        if r.is_final() {
            out.push((*k, *s));
        }
        Ok(())
    })?;
    Ok((out, summary))
}

/// Output of `detector replay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Every record, as the live agent writes them.
    Json,
    /// One row per flow (its final record): identifiers, then the model's feature columns.
    Csv,
}

/// Options of `detector replay`.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub files: Vec<PathBuf>,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub flow: FlowConfig,
    /// Flows the table holds (`flows.table_size` of the agent).
    pub table_size: u32,
    /// 1: flow logic and the rest in turn on one thread; 2 or more: the flow logic on a thread
    /// of its own; with detection, 3 or more: the context as well ([`detect_file_on`]). The
    /// output is the same.
    pub threads: usize,
}

/// Identifier columns that lead each CSV row (not model inputs).
const CSV_IDS: [&str; 9] = [
    "file",
    "src_addr",
    "src_port",
    "dst_addr",
    "dst_port",
    "proto",
    "vlan",
    "first_seen_ns",
    "last_seen_ns",
];

/// Replays every file and writes the records; returns the per-file summaries.
pub fn run(opts: &ReplayOptions) -> anyhow::Result<Vec<FileSummary>> {
    use crate::{clock::TimeBase, features, output::JsonLines, record::FlowJson};

    let mut summaries = Vec::new();
    match opts.format {
        Format::Json => {
            let mut out = JsonLines::open(opts.output.as_deref())?;
            for file in &opts.files {
                let s = if opts.threads <= 1 {
                    replay_file_in(file, &opts.flow, opts.table_size, |k, st, r| {
                        out.write(&FlowJson::new(k, st, r, TimeBase::Unix))
                    })?
                } else {
                    replay_pipelined(file, &opts.flow, opts.table_size, |k, st, r, _| {
                        out.write(&FlowJson::new(k, st, r, TimeBase::Unix))
                    })?
                };
                out.flush()?;
                summaries.push(s);
            }
        }
        Format::Csv => {
            let sink: Box<dyn std::io::Write> = match opts.output.as_deref() {
                None => Box::new(std::io::stdout()),
                Some(p) if p == Path::new("-") => Box::new(std::io::stdout()),
                Some(p) => Box::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?,
                ),
            };
            let mut w = csv::Writer::from_writer(std::io::BufWriter::new(sink));
            let mut header: Vec<String> = CSV_IDS.iter().map(|s| s.to_string()).collect();
            header.extend(features::names());
            w.write_record(&header)?;
            let mut v = vec![0f32; features::COUNT];
            for file in &opts.files {
                let name = file.display().to_string();
                let s = replay_file_in(file, &opts.flow, opts.table_size, |k, st, r| {
                    if !r.is_final() {
                        return Ok(());
                    }
                    let j = FlowJson::new(k, st, r, TimeBase::Unix);
                    features::flow_features(k, st, &mut v);
                    let mut row = vec![
                        name.clone(),
                        j.src_addr.to_string(),
                        j.src_port.to_string(),
                        j.dst_addr.to_string(),
                        j.dst_port.to_string(),
                        j.proto.to_string(),
                        j.vlan.to_string(),
                        j.first_seen_ns.to_string(),
                        j.last_seen_ns.to_string(),
                    ];
                    row.extend(v.iter().map(|x| x.to_string()));
                    w.write_record(&row)?;
                    Ok(())
                })?;
                summaries.push(s);
            }
            w.flush().context("cannot write the CSV output")?;
        }
    }
    Ok(summaries)
}

/// The detector `replay --detect` runs over one capture: drops forced to shadow, fresh context
/// windows and cooldowns, Unix time; `recent` scored records kept (0 for replay itself).
pub fn offline_detector(
    model: std::sync::Arc<crate::model::Model>,
    version: String,
    cfg: &crate::config::Config,
    recent: usize,
) -> anyhow::Result<crate::detect::Detector> {
    use crate::{
        clock::TimeBase,
        detect::{DetectConfig, Detector},
        metrics::Metrics,
        model::ScorePath,
        policy::Policy,
    };
    let path: ScorePath = cfg
        .scoring
        .path
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    Detector::new(
        crate::detect::Serving {
            model,
            version,
            path,
        },
        Policy::new(cfg.policy.clone(), cfg.policy.allowlist.clone()),
        DetectConfig {
            batch_size: cfg.scoring.batch_size,
            forced_shadow: true,
            recent,
            context: cfg.context.tracker(),
            ..DetectConfig::default()
        },
        TimeBase::Unix,
        std::sync::Arc::new(Metrics::default()),
    )
}

/// `detector replay --detect`: the same context, scoring and policy code as the live agent
/// (drops forced to shadow), over captures; writes the alert events. Each capture starts with
/// fresh context windows and alert cooldowns.
pub fn detect(
    opts: &ReplayOptions,
    cfg: &crate::config::Config,
    baseline: &[PathBuf],
) -> anyhow::Result<Vec<FileSummary>> {
    use std::sync::Arc;

    use crate::{detect::ShadowActions, output::JsonLines};

    let (model, version) = crate::model::serving::base_model(&cfg.scoring.model)?;
    let (model, version) = if baseline.is_empty() {
        (Arc::new(model), version)
    } else {
        host_model(Arc::new(model), version, cfg, baseline, &opts.flow)?
    };
    let mut out = JsonLines::open(opts.output.as_deref())?;
    let mut summaries = Vec::new();
    for file in &opts.files {
        let mut det = offline_detector(model.clone(), version.clone(), cfg, 0)?;
        let mut act = ShadowActions {
            out: &mut out,
            alerts: 0,
        };
        let mut summary = detect_file_on(
            file,
            &opts.flow,
            opts.table_size,
            opts.threads,
            &mut det,
            &mut act,
        )?;
        summary.alerts = act.alerts;
        out.flush()?;
        summaries.push(summary);
        drop_aside(det);
    }
    Ok(summaries)
}

/// Frees a capture's detector on a thread of its own: after a flood its context windows are
/// tens of thousands of allocations, freed one by one, which the next capture (or the end of
/// the process, which frees everything at once) need not wait for.
fn drop_aside(det: crate::detect::Detector) {
    let spawned = std::thread::Builder::new()
        .name("replay-free".into())
        .spawn(move || drop(det));
    // Without a thread, `det` was dropped where the spawn failed: the same, only slower.
    let _ = spawned;
}

/// One capture through `det` (featurise, batch, score, decide), every decision to `actions`;
/// its summary, with the records held back for thin evidence. The flow logic runs on a thread
/// of its own where the machine has a second core ([`default_threads`]).
pub fn detect_file(
    file: &Path,
    flow: &FlowConfig,
    table_size: u32,
    det: &mut crate::detect::Detector,
    actions: &mut dyn crate::detect::Actions,
) -> anyhow::Result<FileSummary> {
    detect_file_on(file, flow, table_size, default_threads(), det, actions)
}

/// Threads `detector replay --detect` uses by default: three (flow logic, context, scoring;
/// [`detect_staged`]) where the machine has two cores or more, else one. On two cores the
/// three stages, about equal in CPU time on a spoofed flood, keep both cores busier than two
/// threads do, whose detection half was twice the flow logic's (BENCHMARKS.md "Replay").
pub fn default_threads() -> usize {
    match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        1 => 1,
        _ => 3,
    }
}

/// [`detect_file`] on `threads` threads: 1 runs the flow logic and detection in turn on this
/// thread; 2 runs the flow logic on a second thread, which hands its records over in chunks;
/// 3 or more run the context windows and features on a third ([`detect_staged`]). Either way
/// `det` sees the same records in the same order, in the same batches, and decides the same.
pub fn detect_file_on(
    file: &Path,
    flow: &FlowConfig,
    table_size: u32,
    threads: usize,
    det: &mut crate::detect::Detector,
    actions: &mut dyn crate::detect::Actions,
) -> anyhow::Result<FileSummary> {
    let thin_before = det.policy.thin_evidence;
    let replayed = match threads {
        0 | 1 => replay_file_in(file, flow, table_size, |k, s, r| {
            if det.push(k, s, r, None, Instant::now()) {
                det.flush(actions)?;
            }
            Ok(())
        }),
        2 => replay_pipelined(file, flow, table_size, |k, s, r, read_at| {
            if det.push(k, s, r, None, read_at) {
                det.flush(actions)?;
            }
            Ok(())
        }),
        _ => {
            // Records the detector already queued are scored first, in their order.
            det.flush(actions)?;
            let mut featurizer = det.take_featurizer();
            let staged = detect_staged(file, flow, table_size, &mut featurizer, det, actions);
            det.restore_featurizer(featurizer);
            staged
        }
    };
    // The records read before a capture's damage are scored too (a packet the reader cannot
    // take ends the file with an error): the last, partly filled batch is not lost.
    let flushed = det.flush(actions);
    let mut summary = replayed?;
    flushed?;
    summary.thin_evidence = det.policy.thin_evidence - thin_before;
    Ok(summary)
}

/// Featurised batches in flight between the context thread and detection in
/// [`detect_staged`].
const BATCHES_AHEAD: usize = 8;

/// [`detect_file_on`] in three stages, each on a thread of its own: the flow logic
/// ([`replay_pipelined`]), the context windows and features (`featurizer`, filling batches of
/// the detector's size), and scoring and the policy (`det`, on this thread). Each stage sees
/// every record in order, so the batches and decisions are those of one thread.
fn detect_staged(
    file: &Path,
    flow: &FlowConfig,
    table_size: u32,
    featurizer: &mut crate::features::Featurizer,
    det: &mut crate::detect::Detector,
    actions: &mut dyn crate::detect::Actions,
) -> anyhow::Result<FileSummary> {
    use crate::detect::Batch;

    let size = det.batch_size().max(1);
    handed_over(
        "replay-context",
        "context",
        BATCHES_AHEAD,
        |h| {
            let mut batch = Batch::with_capacity(size);
            let replayed = replay_pipelined(file, flow, table_size, |k, s, r, read_at| {
                batch.push(featurizer, k, s, r, None, read_at);
                if batch.len() >= size {
                    batch = h.pass(std::mem::take(&mut batch), || Batch::with_capacity(size))?;
                }
                Ok(())
            });
            if !batch.is_empty() {
                h.finish(batch);
            }
            replayed
        },
        // Leaves the batch empty once scored, for the context thread to fill again.
        |batch| det.score_batch(batch, actions),
    )
}

/// The producer's end of [`handed_over`]: full buffers go to the consumer, emptied ones come
/// back to be filled again, so that a capture reuses a few buffers.
struct Handoff<B> {
    full: std::sync::mpsc::SyncSender<B>,
    emptied: std::sync::mpsc::Receiver<B>,
}

impl<B> Handoff<B> {
    /// Hands `full` over and returns a buffer to fill next: one the consumer emptied, or
    /// `new()`. Waits while the consumer is the hand-over's depth behind; fails only when the
    /// consumer stopped on an error of its own (which [`handed_over`] returns).
    fn pass(&self, full: B, new: impl FnOnce() -> B) -> anyhow::Result<B> {
        let next = self.emptied.try_recv().unwrap_or_else(|_| new());
        self.full
            .send(full)
            .map_err(|_| anyhow::anyhow!("detection stopped"))?;
        Ok(next)
    }

    /// Hands the last, partly filled, buffer over.
    fn finish(&self, last: B) {
        // A consumer that stopped has its own error to report.
        let _ = self.full.send(last);
    }
}

/// Runs `produce` on a thread of its own (named `thread`, `what` in errors) and `consume` on
/// this one, on every buffer the producer passes, in the order passed; at most `depth` buffers
/// wait between them, so memory stays bounded whatever the capture's size. An error from
/// `consume` stops the producer at its next hand-over and is returned; else the producer's
/// result.
fn handed_over<B: Send, T: Send>(
    thread: &str,
    what: &str,
    depth: usize,
    produce: impl FnOnce(Handoff<B>) -> anyhow::Result<T> + Send,
    mut consume: impl FnMut(&mut B) -> anyhow::Result<()>,
) -> anyhow::Result<T> {
    use std::sync::mpsc;

    let (full, full_rx) = mpsc::sync_channel::<B>(depth);
    let (emptied_tx, emptied) = mpsc::channel::<B>();
    std::thread::scope(|scope| {
        let producer = std::thread::Builder::new()
            .name(thread.into())
            .spawn_scoped(scope, move || produce(Handoff { full, emptied }))
            .with_context(|| format!("cannot start the {what} thread"))?;
        let consumed = (|| {
            for mut b in full_rx {
                consume(&mut b)?;
                let _ = emptied_tx.send(b);
            }
            anyhow::Ok(())
        })();
        // On an error here the receiver is gone, so the producer stops at its next hand-over.
        let produced = producer
            .join()
            .map_err(|_| anyhow::anyhow!("the {what} thread panicked"))?;
        consumed?;
        produced
    })
}

/// One flow record as the flow logic emitted it.
type Record = (FlowKey, FlowState, Reason);

/// Records handed from the flow-logic thread to the caller's at a time: large enough that the
/// hand-over costs nothing per record, small enough that both threads start at once.
const CHUNK: usize = 512;

/// Chunks in flight between the threads; the flow logic waits when the caller is this far
/// behind, so memory stays bounded whatever the capture's size.
const CHUNKS_AHEAD: usize = 8;

/// [`replay_file_in`] with the flow logic on a thread of its own: `on_record` runs on this
/// thread, with every record in the same order, and the time its chunk was handed over. A
/// capture that fails part way gives its records up to the failure, then the error, as
/// [`replay_file_in`] does; an error from `on_record` stops the flow logic and is returned.
pub fn replay_pipelined(
    path: &Path,
    cfg: &FlowConfig,
    table_size: u32,
    mut on_record: impl FnMut(&FlowKey, &FlowState, Reason, Instant) -> anyhow::Result<()>,
) -> anyhow::Result<FileSummary> {
    handed_over(
        "replay-flows",
        "flow-logic",
        CHUNKS_AHEAD,
        |h| {
            let mut chunk: Vec<Record> = Vec::with_capacity(CHUNK);
            let replayed = replay_file_in(path, cfg, table_size, |k, s, r| {
                chunk.push((*k, *s, r));
                if chunk.len() >= CHUNK {
                    chunk = h.pass(std::mem::take(&mut chunk), || Vec::with_capacity(CHUNK))?;
                }
                Ok(())
            });
            if !chunk.is_empty() {
                h.finish(chunk);
            }
            replayed
        },
        |chunk| {
            let read_at = Instant::now();
            for (k, s, r) in chunk.iter() {
                on_record(k, s, *r, read_at)?;
            }
            chunk.clear();
            Ok(())
        },
    )
}

/// The model with this host's baseline, fitted as at the end of the agent's warm-up on the
/// quiet records of `captures` (the host's normal traffic, replayed in order through one
/// detector).
pub fn host_model(
    model: std::sync::Arc<crate::model::Model>,
    version: String,
    cfg: &crate::config::Config,
    captures: &[PathBuf],
    flow: &FlowConfig,
) -> anyhow::Result<(std::sync::Arc<crate::model::Model>, String)> {
    let mut det = offline_detector(model, version, cfg, cfg.adaptation.recent_records)?;
    // Warm-up alerts are not reported.
    let mut ignored = crate::detect::CollectedAlerts::default();
    for file in captures {
        detect_file(file, flow, cfg.flows.table_size, &mut det, &mut ignored)?;
    }
    let min = crate::model::novelty::MIN_ROWS;
    if !crate::baseline::fit_now(&mut det, min, cfg.adaptation.host_novelty_quantile)? {
        bail!(
            "the baseline captures gave fewer than {min} quiet records: too little of this host's traffic to learn it from"
        );
    }
    tracing::info!(
        captures = captures.len(),
        "fitted the host baseline from the --baseline captures"
    );
    Ok((det.model().clone(), det.model_version.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::CollectedAlerts;

    /// Two corpus captures in a row through one detector (as `--baseline` captures go): on
    /// three threads the context windows travel to their own thread and back, so the second
    /// capture's alerts, and the windows left behind, are those of one thread.
    #[test]
    fn three_stages_carry_the_context_from_file_to_file_and_alert_as_one_thread() {
        let attack = crate::dataset::test_util::shared_dir().join("corpus/pcap/attack");
        let file = |tail: &str| {
            std::fs::read_dir(&attack)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.to_string_lossy().ends_with(tail))
                .unwrap()
        };
        // The same SYN flood twice: the second pass scores on windows the first filled.
        let flood = file("flood-syn--input.pcap");
        let cfg = crate::config::Config::default();
        let (model, version) = crate::model::serving::base_model("").unwrap();
        let model = std::sync::Arc::new(model);
        let run = |threads: usize| {
            let mut det = offline_detector(model.clone(), version.clone(), &cfg, 0).unwrap();
            let mut alerts = CollectedAlerts::default();
            for f in [&flood, &flood] {
                detect_file_on(
                    f,
                    &FlowConfig::DEFAULT,
                    detector_common::flow::DEFAULT_TABLE_SIZE,
                    threads,
                    &mut det,
                    &mut alerts,
                )
                .unwrap();
            }
            let alerts: Vec<serde_json::Value> = alerts
                .alerts
                .iter()
                .map(|a| {
                    let mut v = serde_json::to_value(a).unwrap();
                    v["id"] = serde_json::Value::Null;
                    v
                })
                .collect();
            (alerts, det.tracked())
        };
        let one = run(1);
        let three = run(3);
        assert!(!one.0.is_empty(), "the flood alerts");
        assert!(one.1 .0 > 0, "the flood left sources in the windows");
        assert_eq!(one.1, three.1, "windows left behind");
        assert_eq!(one.0, three.0, "alerts");
    }
}
