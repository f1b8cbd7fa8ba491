//! The `detector` command line: a thin layer over the library.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use detector::{
    agent::{self, RunOptions},
    clock::parse_duration,
    config::{Config, DropMode, Dur},
    control::{self, Request},
};
use detector_common::flow::FlowConfig;

/// Host-level anomaly detector: eBPF flow and process telemetry on XDP, TC and tracepoints,
/// scored by a small meta-learned model that adapts from the incidents you confirm.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: attach to interfaces and tracepoints, score every flow, act by policy.
    ///
    /// Needs root (or CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_RESOURCE...; see the
    /// systemd unit). Settings come from the configuration file (`detector config` prints the
    /// defaults); the options below override it. Alerts go to `agent.events` (stdout by
    /// default), flow/process/stats records to `agent.records` (stdout by default), logs to
    /// stderr. Drops are in shadow mode (logged, not enforced) until `policy.drop = "drop"`.
    /// SIGHUP reloads the configuration; SIGINT or SIGTERM detaches everything and flushes
    /// the flows still open.
    Run(Box<RunArgs>),
    /// Run captures (pcap or pcapng: Ethernet, Linux cooked, raw IP, BSD loopback, PPP or Cisco
    /// HDLC) through the same flow logic as the kernel and
    /// write the same flow records, with capture timestamps.
    ///
    /// Files are read as streams (any size). A capture cut short is reported and the flows
    /// read until then are kept. Each file's flows are flushed at its end. With --detect, the
    /// records also go through the agent's context, scoring and policy (drops reported as
    /// shadow drops), and the alerts are written instead of the records.
    Replay(ReplayArgs),
    #[cfg(feature = "trainer")]
    /// Labelled datasets: import public flow datasets (CICFlowMeter, NF-v2, UNSW-NB15,
    /// NSL-KDD/KDD Cup 99), build datasets from flow records, and summarise them.
    Dataset {
        #[command(subcommand)]
        command: detector::dataset::cli::DatasetCommand,
    },
    #[cfg(feature = "trainer")]
    /// Meta-train a model from labelled datasets.
    Train(detector::model::cli::TrainArgs),
    #[cfg(feature = "trainer")]
    /// Adapt a model to a few flows of one attack family (offline; the agent adapts itself
    /// through `detector incident confirm`).
    Adapt(detector::model::cli::AdaptArgs),
    #[cfg(feature = "trainer")]
    /// Measure detection quality by the protocol of EVALUATION.md (leave one family out,
    /// K-shot adaptation over many draws, five baselines, int8 gap, evasion); writes
    /// EVALUATION.md, JSON and plots.
    Eval(detector::model::cli::EvalArgs),
    #[cfg(feature = "trainer")]
    /// Off the lab: replay captures from other networks (the nDPI dev split, the shared corpus)
    /// through the agent's detection, out of the box and after a warm-up on each capture's first
    /// half; alert events per 1,000 benign flows, benign captures alerting, attacks caught.
    EvalOfflab(detector::offlab::OfflabArgs),
    /// Print the running agent's status: attached programs, model, rates, drops, losses.
    Status(ClientArgs),
    /// Incidents: tell the running agent which flows were an attack.
    Incident {
        #[command(subcommand)]
        command: IncidentCommand,
    },
    /// The running agent's models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// The fleet (NATS JetStream, `[fleet]`): declare its streams, see its hosts.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Print the default configuration (a complete, valid file to start from), or check one.
    Config {
        /// Check this file instead: parse, validate and print it with the defaults filled in.
        #[arg(long, value_name = "PATH")]
        check: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// The agent's control socket (default: agent.control_socket of the configuration).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Configuration file that names the socket.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum IncidentCommand {
    /// Confirm an incident: the selected recent flows are attacks of FAMILY. The agent adapts
    /// its model from them, checks that benign flows do not alert more than the budget
    /// allows (else it refuses and says why), keeps the previous model, and swaps.
    ///
    /// Select flows by alert id (all recent flows of that alert's source), by source address,
    /// and/or by a time window; given selectors must all match.
    Confirm {
        /// Attack family (e.g. brute-force, scan, exfiltration).
        #[arg(long)]
        family: String,
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Dismiss alerts as benign: later records that look like the selected ones that alerted
    /// (cosine 0.9 in the serving model's embedding space) are neither alerted on nor dropped,
    /// only counted (`dismissed_alerts` in the status and metrics). The model does not change.
    /// Dismissals persist in the state directory. A dismissal silences whatever looks like it,
    /// attack or not: select precisely.
    ///
    /// Select flows as for `confirm`: by alert id (all recent flows of that alert's source),
    /// by source address, and/or by a time window.
    Dismiss {
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The dismissals in force: id, when, what was selected, how many flows.
    Dismissals(ClientArgs),
    /// Withdraw a dismissal (by the id `dismiss` printed, or from `dismissals`): alerts like
    /// its flows are raised again.
    Undismiss {
        /// The dismissal's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Which recent flows an incident or a dismissal is about.
#[derive(clap::Args, Debug)]
struct Selection {
    /// An alert id from an alert event (repeatable).
    #[arg(long = "alert", value_name = "ID")]
    alerts: Vec<String>,
    /// The source address: the flows it opened and those opened towards it.
    #[arg(long)]
    source: Option<String>,
    /// Only flows that started within this long before now (e.g. 10m).
    #[arg(long, value_parser = parse_duration)]
    last: Option<Duration>,
}

#[derive(Subcommand, Debug)]
enum FleetCommand {
    /// Create the fleet's streams, or update their limits (once, with credentials that may
    /// manage streams; hosts' credentials may only publish).
    Init {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Copies of each stream (3 on a three-node cluster).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// Size of the alerts and incidents stream (bytes); the oldest go first.
        #[arg(long, default_value_t = 1 << 30)]
        max_bytes: i64,
        /// A repeated message id within this window is stored once (the longest outage a
        /// spool can resend across without duplicates).
        #[arg(long, value_parser = parse_duration, default_value = "10m")]
        duplicate_window: Duration,
    },
    /// The hosts seen: last heartbeat, serving model, what their publishers dropped, the
    /// fleet models they refused; and the current fleet model.
    Status(FleetArgs),
    /// Write a new Ed25519 signing key for fleet models (mode 0600) and `<FILE>.pub`; prints
    /// the public key, for agents' `fleet.model_public_key`.
    Keygen {
        /// The key file to create (it must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Adapt the fleet model from the confirmed incidents no model has considered yet (the
    /// agent's adaptation and false-alert check), sign it and publish it; nothing new, nothing
    /// published.
    Train {
        #[command(flatten)]
        fleet: FleetArgs,
        /// The signing key (`detector fleet keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Largest rise of the false-alert rate on the pooled benign rows; default:
        /// adaptation.fpr_budget of the configuration.
        #[arg(long)]
        fpr_budget: Option<f64>,
    },
    /// Move the fleet model pointer back (to the current version's parent, or to VERSION);
    /// agents follow through the same checks as for a new model.
    Rollback {
        #[command(flatten)]
        fleet: FleetArgs,
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
}

/// Where the fleet is: `[fleet]` of the configuration, with overrides.
#[derive(clap::Args, Debug)]
struct FleetArgs {
    /// Configuration file with a [fleet] section (default: /etc/detector/detector.toml).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// NATS server (repeatable); replaces fleet.servers.
    #[arg(long = "server", value_name = "URL")]
    servers: Vec<String>,
    /// NATS credentials file; replaces fleet.credentials.
    #[arg(long, value_name = "PATH")]
    credentials: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// The models this host has used, and the current one.
    History(ClientArgs),
    /// Go back to the previous model.
    Rollback(ClientArgs),
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// Capture files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// json: every record, as the agent writes them; csv: one row per flow with the flow
    /// feature columns.
    #[arg(long, value_enum, default_value_t = detector::replay::Format::Json)]
    format: detector::replay::Format,
    /// Write here instead of stdout.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Detect: score the records with the agent's code and policy, write alerts.
    #[arg(long)]
    detect: bool,
    /// Configuration (model, thresholds, policy) for --detect; default: the agent's file if
    /// present, else the defaults.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// With --detect (repeatable): a capture of this host's normal traffic, replayed first as the agent's
    /// warm-up: the host's baseline is fitted on their quiet records, and only what is both
    /// attack-like and unusual for this host alerts in FILE….
    #[arg(long, value_name = "CAPTURE", requires = "detect")]
    baseline: Vec<PathBuf>,
    /// Threads: 1 runs everything on one; 2 runs the flow logic on a thread of its own,
    /// beside the detection (or the JSON records; --format csv uses one); 3 or more, with
    /// --detect, also give the context windows and features a thread of their own, between
    /// the flow logic and the scoring. The output is the same either way. Default: 3 where the
    /// machine has two cores or more (the three stages share them; fastest on two cores), else 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(flatten)]
    flow: FlowArgs,
}

/// Flow-table timing for `replay`.
#[derive(clap::Args, Debug)]
struct FlowArgs {
    /// A flow without packets for this long is over and gets its final record.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    idle_timeout: Duration,
    /// A running flow gets a new record each time it has been active this long.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    active_timeout: Duration,
    /// Emit an early record when a flow reaches this many packets (0 = never).
    #[arg(long, default_value_t = 8)]
    early_packets: u32,
    /// Emit a `new` record on each flow's first packet.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    new_records: bool,
    /// Flows the table holds, as the agent's kernel table (flows.table_size): when it is full,
    /// the least recently seen flows are evicted without a final record, as in the agent.
    #[arg(long, default_value_t = detector_common::flow::DEFAULT_TABLE_SIZE,
          value_parser = clap::value_parser!(u32).range(1..))]
    flow_table_size: u32,
}

impl FlowArgs {
    fn config(&self) -> FlowConfig {
        FlowConfig {
            active_timeout_ns: self.active_timeout.as_nanos().clamp(1, u64::MAX as u128) as u64,
            idle_timeout_ns: self.idle_timeout.as_nanos().clamp(1, u64::MAX as u128) as u64,
            early_packets: self.early_packets,
            new_records: self.new_records as u32,
        }
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Configuration file (default: /etc/detector/detector.toml if it exists, else defaults).
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Interface to attach to (repeatable; overrides agent.interfaces). Default: the
    /// interface of the default route.
    #[arg(short, long = "iface", value_name = "NAME")]
    interfaces: Vec<String>,
    /// XDP attach mode (agent.xdp_mode): auto tries native (driver) mode on each interface
    /// and falls back to generic (skb) mode where the driver refuses it; native fails there
    /// instead; skb is generic mode everywhere. The log and `detector status` say which mode
    /// each interface got.
    #[arg(long, value_parser = ["auto", "native", "skb"])]
    xdp_mode: Option<String>,
    /// Flow, process and stats records (agent.records): a file (appended), "-" for stdout,
    /// "" for none.
    #[arg(short, long, value_name = "PATH")]
    output: Option<String>,
    /// Alert events (agent.events): a file (appended) or "-" for stdout.
    #[arg(long, value_name = "PATH")]
    events: Option<String>,
    /// A model file to score with (scoring.model); default: the host's newest adapted model,
    /// else the embedded one.
    #[arg(long, value_name = "PATH")]
    model: Option<String>,
    /// Drop action (policy.drop): off, shadow (log only) or drop (enforce in XDP).
    #[arg(long, value_parser = ["off", "shadow", "drop"])]
    drop: Option<String>,
    /// State directory (agent.state_dir): host models, incidents, blocklist.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Control socket (agent.control_socket).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Prometheus metrics address (agent.metrics_listen); "" turns them off.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// flows.idle_timeout.
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// flows.active_timeout.
    #[arg(long, value_parser = parse_duration)]
    active_timeout: Option<Duration>,
    /// flows.early_packets (0 = no early records).
    #[arg(long)]
    early_packets: Option<u32>,
    /// flows.new_records.
    #[arg(long, action = clap::ArgAction::Set, value_name = "BOOL")]
    new_records: Option<bool>,
    /// flows.table_size: kernel flow-table entries (least recently used are evicted beyond).
    #[arg(long)]
    flow_table_size: Option<u32>,
    /// flows.ringbuf_bytes (power of two, at least a page).
    #[arg(long)]
    flow_ringbuf_bytes: Option<u32>,
    /// flows.proc_ringbuf_bytes (power of two, at least a page).
    #[arg(long)]
    proc_ringbuf_bytes: Option<u32>,
    /// How often idle flows and expired blocks are looked for.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    sweep_interval: Duration,
    /// How often a {"type":"stats"} line with the kernel counters is written.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    stats_interval: Duration,
    /// Load this eBPF object instead of the one built into the binary.
    #[arg(long, value_name = "PATH")]
    ebpf_object: Option<PathBuf>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DETECTOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The configuration file to use: the one named, else the default path if it exists.
fn config_file(given: Option<PathBuf>) -> Option<PathBuf> {
    given.or_else(|| {
        let p = PathBuf::from(detector::config::DEFAULT_PATH);
        p.exists().then_some(p)
    })
}

/// `detector fleet ...`.
fn fleet(command: FleetCommand) -> anyhow::Result<()> {
    use detector::fleet::{models, streams};
    let config = |a: FleetArgs| -> anyhow::Result<Config> {
        let mut c = Config::load(config_file(a.config).as_deref())?;
        let f = &mut c.fleet;
        if !a.servers.is_empty() {
            f.servers = a.servers;
        }
        if let Some(c) = a.credentials {
            f.credentials = c;
            f.nkey_seed_file = PathBuf::new();
        }
        f.validate()?;
        Ok(c)
    };
    let section = |a: FleetArgs| config(a).map(|c| c.fleet);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        FleetCommand::Init {
            fleet,
            replicas,
            max_bytes,
            duplicate_window,
        } => {
            let f = section(fleet)?;
            let limits = streams::StreamLimits {
                replicas,
                events_bytes: max_bytes,
                duplicate_window,
                ..Default::default()
            };
            let done = rt.block_on(streams::init(&f, &limits))?;
            print(&serde_json::json!({ "ok": true, "streams": done }))
        }
        FleetCommand::Status(a) => {
            let f = section(a)?;
            let (hosts, model) = rt.block_on(streams::status(&f))?;
            print(&serde_json::json!({ "ok": true, "hosts": hosts, "model": model }))
        }
        FleetCommand::Keygen { out } => {
            let public = models::keygen(&out)?;
            print(&serde_json::json!({
                "ok": true,
                "key": out,
                "public_key": public,
                "public_key_file": format!("{}.pub", out.display()),
            }))
        }
        FleetCommand::Train {
            fleet,
            key,
            fpr_budget,
        } => {
            let c = config(fleet)?;
            let key = models::SigningKey::load(&key)?;
            let (base, _) = detector::model::serving::base_model(&c.scoring.model)?;
            let budget = fpr_budget.unwrap_or(c.adaptation.fpr_budget);
            let report = rt.block_on(async {
                let client = streams::connect_now(&c.fleet).await?;
                models::train(client, &key, base, budget).await
            })?;
            print(&serde_json::json!({ "ok": true, "train": report }))
        }
        FleetCommand::Rollback { fleet, to } => {
            let f = section(fleet)?;
            let p = rt.block_on(async {
                let client = streams::connect_now(&f).await?;
                models::rollback(client, to.as_deref()).await
            })?;
            print(&serde_json::json!({ "ok": true, "model": p }))
        }
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    if a.sweep_interval.is_zero() || a.stats_interval.is_zero() {
        anyhow::bail!("--sweep-interval and --stats-interval must be greater than zero");
    }
    let path = config_file(a.config);
    let mut cfg = Config::load(path.as_deref())?;
    if !a.interfaces.is_empty() {
        cfg.agent.interfaces = a.interfaces;
    }
    macro_rules! set {
        ($opt:expr, $field:expr) => {
            if let Some(v) = $opt {
                $field = v;
            }
        };
    }
    set!(a.xdp_mode, cfg.agent.xdp_mode);
    set!(a.output, cfg.agent.records);
    set!(a.events, cfg.agent.events);
    set!(a.model, cfg.scoring.model);
    set!(a.state_dir, cfg.agent.state_dir);
    set!(a.control_socket, cfg.agent.control_socket);
    set!(a.metrics_listen, cfg.agent.metrics_listen);
    set!(a.idle_timeout.map(Dur), cfg.flows.idle_timeout);
    set!(a.active_timeout.map(Dur), cfg.flows.active_timeout);
    set!(a.early_packets, cfg.flows.early_packets);
    set!(a.new_records, cfg.flows.new_records);
    set!(a.flow_table_size, cfg.flows.table_size);
    set!(a.flow_ringbuf_bytes, cfg.flows.ringbuf_bytes);
    set!(a.proc_ringbuf_bytes, cfg.flows.proc_ringbuf_bytes);
    if let Some(d) = a.drop {
        cfg.policy.drop = match d.as_str() {
            "off" => DropMode::Off,
            "drop" => DropMode::Drop,
            _ => DropMode::Shadow,
        };
    }
    cfg.validate().map_err(|e| e.context("invalid options"))?;
    let opts = RunOptions {
        config: cfg,
        config_path: path,
        object: a.ebpf_object,
        sweep_interval: a.sweep_interval,
        stats_interval: a.stats_interval,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(agent::run(opts))
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let opts = detector::replay::ReplayOptions {
        files: args.files,
        format: args.format,
        output: args.output,
        flow: args.flow.config(),
        table_size: args.flow.flow_table_size,
        threads: args
            .threads
            .map_or_else(detector::replay::default_threads, usize::from),
    };
    let summaries = if args.detect {
        let cfg = Config::load(config_file(args.config).as_deref())?;
        detector::replay::detect(&opts, &cfg, &args.baseline)?
    } else {
        detector::replay::run(&opts)?
    };
    for s in summaries {
        tracing::info!(
            file = %s.file.display(),
            packets = s.packets,
            flows = s.flows,
            records = s.records,
            malformed = s.malformed,
            not_ip = s.not_ip,
            alerts = s.alerts,
            thin_evidence = s.thin_evidence,
            table_evicted = s.table_evicted,
            "replayed"
        );
        if s.table_evicted > 0 {
            tracing::warn!(
                "{}: the flow table ({} flows) was full: {} flows were evicted before their \
                 final record, as the agent's table would have evicted them; \
                 --flow-table-size raises it",
                s.file.display(),
                args.flow.flow_table_size,
                s.table_evicted
            );
        }
        if let Some(t) = &s.truncated {
            tracing::warn!("{t}");
        }
    }
    Ok(())
}

fn client(c: &ClientArgs, req: &Request) -> anyhow::Result<serde_json::Value> {
    let socket = control::socket_path(c.socket.clone(), config_file(c.config.clone()).as_deref())?;
    control::call(&socket, req)
}

fn print(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // Like other Unix tools, end quietly when the reader of our output goes away
        // (`detector dataset stats ... | head`). The agent keeps Rust's default (SIGPIPE
        // ignored) so that a closed output is an error it reports, not a silent death.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_logging();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Replay(args) => replay(args),
        #[cfg(feature = "trainer")]
        Command::Dataset { command } => detector::dataset::cli::run(command),
        #[cfg(feature = "trainer")]
        Command::Train(args) => detector::model::cli::train(args),
        #[cfg(feature = "trainer")]
        Command::Adapt(args) => detector::model::cli::adapt_cmd(args),
        #[cfg(feature = "trainer")]
        Command::Eval(args) => detector::model::cli::eval(args),
        #[cfg(feature = "trainer")]
        Command::EvalOfflab(args) => detector::offlab::cli(args),
        Command::Status(c) => client(&c, &Request::Status {}).and_then(|v| print(&v)),
        Command::Incident { command } => {
            let (c, req) = match command {
                IncidentCommand::Confirm {
                    family,
                    selection: s,
                    client,
                } => (
                    client,
                    Request::Incident {
                        family,
                        alert_ids: s.alerts,
                        source: s.source,
                        since_ns: s.last.map(since_now),
                        until_ns: None,
                    },
                ),
                IncidentCommand::Dismiss {
                    selection: s,
                    client,
                } => (
                    client,
                    Request::Dismiss {
                        alert_ids: s.alerts,
                        source: s.source,
                        since_ns: s.last.map(since_now),
                        until_ns: None,
                    },
                ),
                IncidentCommand::Dismissals(client) => (client, Request::Dismissals {}),
                IncidentCommand::Undismiss { id, client } => (client, Request::Undismiss { id }),
            };
            client(&c, &req).and_then(|v| print(&v))
        }
        Command::Model {
            command: ModelCommand::History(c),
        } => client(&c, &Request::ModelHistory {}).and_then(|v| print(&v)),
        Command::Model {
            command: ModelCommand::Rollback(c),
        } => client(&c, &Request::ModelRollback {}).and_then(|v| print(&v)),
        Command::Fleet { command } => fleet(command),
        Command::Config { check } => match check {
            None => {
                print!("{}", Config::defaults_toml());
                Ok(())
            }
            Some(p) => Config::load(Some(&p)).map(|c| {
                print!("{}", toml::to_string_pretty(&c).unwrap_or_default());
            }),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Unix ns `d` before now.
fn since_now(d: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(d).as_nanos() as u64
}
