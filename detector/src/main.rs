//! The `detector` command line: a thin layer over the library.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use detector::{
    agent::{self, RunOptions},
    clock::parse_duration,
    ebpf::Sizes,
};
use detector_common::flow::FlowConfig;

/// Host-level anomaly detector: eBPF flow and process telemetry on XDP, TC and tracepoints.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attach to interfaces and tracepoints and stream flow and process records as JSON lines.
    ///
    /// Needs root (or CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON). Records go to stdout (or --output),
    /// logs to stderr. SIGINT or SIGTERM detaches everything and flushes the flows still open.
    Run(RunArgs),
    /// Run captures (pcap or pcapng, Ethernet) through the same flow logic as the kernel and
    /// write the same flow records, with capture timestamps.
    ///
    /// Files are read as streams (any size). A capture cut short is reported and the flows
    /// read until then are kept. Each file's flows are flushed at its end.
    Replay(ReplayArgs),
    /// Labelled datasets: import public flow datasets (CICFlowMeter, NF-v2, UNSW-NB15,
    /// NSL-KDD/KDD Cup 99) into the project's format, and summarise them.
    Dataset {
        #[command(subcommand)]
        command: detector::dataset::cli::DatasetCommand,
    },
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// Capture files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// json: every record, as the agent writes them; csv: one row per flow with the model's
    /// feature columns.
    #[arg(long, value_enum, default_value_t = detector::replay::Format::Json)]
    format: detector::replay::Format,
    /// Write here instead of stdout.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    #[command(flatten)]
    flow: FlowArgs,
}

/// Flow-table timing, shared by `run` and `replay`.
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
    /// Emit a `new` record on each flow's first packet (scans and spoofed floods are flows
    /// that never grow: without it they are seen only at their idle timeout).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    new_records: bool,
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
    /// Interface to attach to (repeatable). Default: the interface of the default route.
    #[arg(short, long = "iface", value_name = "NAME")]
    interfaces: Vec<String>,
    /// XDP attach mode: auto lets the kernel pick native mode where the driver has it.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    xdp_mode: XdpModeArg,
    /// Write JSON lines to this file (appended) instead of stdout ("-" is stdout).
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    #[command(flatten)]
    flow: FlowArgs,
    /// Flow-table entries in the kernel (least recently used flows are evicted beyond this).
    #[arg(long, default_value_t = 65536)]
    flow_table_size: u32,
    /// Flow ring-buffer size in bytes (power of two, at least a page).
    #[arg(long, default_value_t = 4 << 20)]
    flow_ringbuf_bytes: u32,
    /// Process-event ring-buffer size in bytes (power of two, at least a page).
    #[arg(long, default_value_t = 1 << 20)]
    proc_ringbuf_bytes: u32,
    /// How often idle flows are expired.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    sweep_interval: Duration,
    /// How often a {"type":"stats"} line with the kernel counters is written.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    stats_interval: Duration,
    /// Load this eBPF object instead of the one built into the binary.
    #[arg(long, value_name = "PATH")]
    ebpf_object: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpModeArg {
    Auto,
    Native,
    Skb,
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

fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.sweep_interval.is_zero() || args.stats_interval.is_zero() {
        anyhow::bail!("--sweep-interval and --stats-interval must be greater than zero");
    }
    let opts = RunOptions {
        interfaces: args.interfaces,
        xdp_mode: match args.xdp_mode {
            XdpModeArg::Auto => aya::programs::XdpMode::Default,
            XdpModeArg::Native => aya::programs::XdpMode::Driver,
            XdpModeArg::Skb => aya::programs::XdpMode::Skb,
        },
        output: args.output,
        flow: args.flow.config(),
        sizes: Sizes {
            flow_table: args.flow_table_size,
            flow_ringbuf: args.flow_ringbuf_bytes,
            proc_ringbuf: args.proc_ringbuf_bytes,
        },
        object: args.ebpf_object,
        sweep_interval: args.sweep_interval,
        stats_interval: args.stats_interval,
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
    };
    for s in detector::replay::run(&opts)? {
        tracing::info!(
            file = %s.file.display(),
            packets = s.packets,
            flows = s.flows,
            records = s.records,
            malformed = s.malformed,
            not_ip = s.not_ip,
            "replayed"
        );
        if let Some(t) = &s.truncated {
            tracing::warn!("{t}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Replay(args) => replay(args),
        Command::Dataset { command } => detector::dataset::cli::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
