//! XDP per-packet cost through BPF_PROG_TEST_RUN: the agent's `detector_xdp` against the
//! `detector_xdp_parse_only` baseline (the same header parsing, then XDP_PASS, no maps), both
//! loaded from the embedded object and measured interleaved in one run.
//!
//! Two paths are measured:
//! - **established flow**: the kernel runs one packet `repeat` (10⁶) times and reports the mean;
//!   after the first run the flow exists, so this is the per-packet update of a known flow
//!   (for the blocklisted packet: the drop; for the malformed one: the early return).
//! - **new flow**: `repeat = 1` over 60,000 distinct packets (each the first packet of its flow:
//!   a flow-table insert and a `new` record); the kernel's own per-run times are summed. The
//!   ring buffer is drained between runs, outside the timed part, so records are never lost. A
//!   second pass of 60,000 more distinct flows runs with the table nearly full (LRU evictions).
//!   The same packets with the same method on the bare program are the baseline, and the
//!   established path measured with `repeat = 1` shows what the per-run timer itself costs.
//!
//! In the same rounds, two step programs (`detector-ebpf/src/baseline.rs`) stop part way along
//! the full path, after the clock read and after the flow-table lookup: what each step costs is
//! a difference of medians measured side by side, not a share read off a profile.
//!
//! Needs root (loads eBPF). `cargo bench -p detector --bench xdp` (results in BENCHMARKS.md);
//! `cargo xtask bench xdp` runs it. `-- --profile NAME SECONDS` runs only the full program on
//! packet NAME (for `perf record`). Results also go to $DETECTOR_BENCH_OUT when set.

use std::{fmt::Write as _, time::Instant};

use aya::{
    maps::{HashMap, MapData, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use detector::ebpf::{self, maps, Sizes, XDP_PARSE_ONLY_PROGRAM, XDP_PROGRAM, XDP_STEP_PROGRAMS};
use detector_common::{
    block::{BlockEntry, BlockKey},
    flow::{stat, FlowConfig},
    packet::{
        ETH_P_8021Q, ETH_P_IPV4, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP,
        TCP_ACK, TCP_PSH, TCP_SYN,
    },
    testpkt::{eth, icmp4, ipv4, tcp, tcp4, udp4, udp6, v4key},
};

const A: [u8; 4] = [10, 1, 0, 1];
const B: [u8; 4] = [10, 1, 0, 2];
/// The blocklisted source.
const C: [u8; 4] = [10, 1, 0, 66];
const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;
const NEW_FLOWS: u32 = 60_000;

fn a6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[1] = 0x01;
    a[15] = last;
    a
}

/// The packet types of the benchmark, each with its own flow.
fn packets() -> Vec<(&'static str, Vec<u8>)> {
    let vlan_tcp = eth(
        ETH_P_IPV4,
        &[(ETH_P_8021Q, 100)],
        &ipv4(
            A,
            B,
            IPPROTO_TCP,
            &[],
            &tcp(40004, 443, 1, TCP_ACK, 1000, &[]),
        ),
    );
    // Hop-by-hop options, a type-0 routing header (no addresses) and destination options.
    let ext = [
        (IPPROTO_HOPOPTS, vec![1, 4, 0, 0, 0, 0]),
        (IPPROTO_ROUTING, vec![0, 0, 0, 0, 0, 0]),
        (IPPROTO_DSTOPTS, vec![1, 4, 0, 0, 0, 0]),
    ];
    // IPv4 header claiming 60 bytes (IHL 15) in a frame that ends after 20.
    let mut bad = ipv4(A, B, IPPROTO_TCP, &[], &[]);
    bad[0] = 0x4f;
    let malformed = eth(ETH_P_IPV4, &[], &bad);
    vec![
        ("TCP SYN", tcp4(A, 40001, B, 80, TCP_SYN, 1, 0)),
        (
            "TCP data (512 B)",
            tcp4(A, 40002, B, 80, TCP_ACK | TCP_PSH, 1000, 512),
        ),
        ("UDP (64 B)", udp4(A, 40003, B, 53, 64)),
        ("ICMP echo", icmp4(A, B, 8, 7, 1, 56)),
        (
            "IPv6 + 3 ext headers, UDP",
            udp6(a6(1), 40005, a6(2), 53, &ext, 64),
        ),
        ("VLAN-tagged TCP", vlan_tcp),
        ("malformed IPv4", malformed),
        ("blocklisted source", udp4(C, 40006, B, 53, 64)),
    ]
}

/// A distinct TCP SYN per `i` (source address and port vary): the first packet of a new flow.
fn syn_of(i: u32) -> Vec<u8> {
    let src = [10, 2 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
    tcp4(src, 1024 + (i % 60000) as u16, B, 80, TCP_SYN, i, 0)
}

/// The floor: an XDP program of two instructions (`r0 = XDP_PASS; exit`), loaded with a raw
/// `BPF_PROG_LOAD` (it is not in the object). Returns its fd.
fn load_floor() -> i32 {
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        rest: [u8; 64],
    }
    // mov64 r0, 2 (XDP_PASS); exit.
    let insns: [u64; 2] = [0xb7 | (2u64 << 32), 0x95];
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"xdp_return");
    let attr = ProgLoad {
        prog_type: 6, // BPF_PROG_TYPE_XDP
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        rest: [0; 64],
    };
    // SAFETY: BPF_PROG_LOAD (5) with a valid attr of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5,
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_PROG_LOAD: {}",
        std::io::Error::last_os_error()
    );
    fd as i32
}

/// BPF_PROG_TEST_RUN on a raw program fd; mean ns per run as the kernel reports it.
fn run_fd(fd: i32, frame: &[u8], repeat: u32) -> f64 {
    #[repr(C)]
    struct Test {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = Test {
        prog_fd: fd as u32,
        retval: 0,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        duration: 0,
        ctx_size_in: 0,
        ctx_size_out: 0,
        ctx_in: 0,
        ctx_out: 0,
        flags: 0,
        cpu: 0,
        batch_size: 0,
        _pad: 0,
    };
    // SAFETY: BPF_PROG_TEST_RUN (10) with a valid attr; the buffers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            10,
            &mut attr as *mut Test,
            std::mem::size_of::<Test>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    attr.duration as f64
}

fn load() -> Ebpf {
    let mut ebpf = ebpf::load(None, &Sizes::default()).expect("load the eBPF object (root?)");
    ebpf::write_config(&mut ebpf, &FlowConfig::DEFAULT).expect("write config");
    ebpf::load_flow_programs(&mut ebpf).expect("load the flow programs");
    // The baselines: parse-only, and the steps between it and the full program.
    for name in std::iter::once(XDP_PARSE_ONLY_PROGRAM).chain(XDP_STEP_PROGRAMS) {
        let p: &mut Xdp = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("the object has no {name}"))
            .try_into()
            .unwrap();
        p.load().unwrap_or_else(|e| panic!("load {name}: {e:#}"));
    }
    let mut bl: HashMap<&mut MapData, BlockKey, BlockEntry> =
        HashMap::try_from(ebpf.map_mut(maps::BLOCKLIST).unwrap()).unwrap();
    bl.insert(
        BlockKey::source(4, &v4key(C)),
        BlockEntry {
            expires_ns: 0,
            hits: 0,
        },
        0,
    )
    .unwrap();
    // The agent moves the blocklist generation on with every entry; so does the benchmark, as
    // on a host with blocks (a flow's first packet pays the lookups, later ones use the answer
    // cached for the generation) — unless DETECTOR_BENCH_BLOCKLIST=off: a host that never
    // blocked anything (no lookups; the blocklisted packet then passes).
    if std::env::var("DETECTOR_BENCH_BLOCKLIST").as_deref() != Ok("off") {
        let mut gen: aya::maps::Array<&mut MapData, u32> =
            aya::maps::Array::try_from(ebpf.map_mut(maps::BLOCKLIST_GEN).unwrap()).unwrap();
        gen.set(0, 1, 0).unwrap();
    }
    ebpf
}

/// Runs `prog` on `frame` `repeat` times; returns (mean ns per run as the kernel reports it,
/// XDP action).
fn run(ebpf: &mut Ebpf, prog: &str, frame: &[u8], repeat: u32) -> (f64, u32) {
    let p: &mut Xdp = ebpf.program_mut(prog).unwrap().try_into().unwrap();
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    (r.duration.as_nanos() as f64, r.return_value)
}

fn drain(ebpf: &mut Ebpf) -> u64 {
    let mut rb: RingBuf<&mut MapData> =
        RingBuf::try_from(ebpf.map_mut(maps::FLOW_EVENTS).unwrap()).unwrap();
    let mut n = 0;
    while let Some(item) = rb.next() {
        std::hint::black_box(&*item);
        n += 1;
    }
    n
}

fn stats(ebpf: &Ebpf) -> Vec<u64> {
    let map: aya::maps::PerCpuArray<&MapData, u64> =
        aya::maps::PerCpuArray::try_from(ebpf.map(maps::STATS).unwrap()).unwrap();
    (0..stat::COUNT)
        .map(|i| map.get(&i, 0).unwrap().iter().sum())
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Sum of the kernel's per-run times over `frames` (repeat = 1 each), ns per packet.
fn sum_runs(ebpf: &mut Ebpf, prog: &str, frames: impl Iterator<Item = Vec<u8>>) -> (f64, u64) {
    let mut total = 0f64;
    let mut n = 0u64;
    for f in frames {
        total += run(ebpf, prog, &f, 1).0;
        n += 1;
        if n.is_multiple_of(4096) {
            drain(ebpf);
        }
    }
    drain(ebpf);
    (total / n as f64, n)
}

/// What a kernel symbol in the profile is.
fn explain(sym: &str) -> &'static str {
    match sym {
        s if s.ends_with("_detector_xdp") || s.ends_with("_detector_xdp_parse_only") => {
            "the program's own instructions (JIT)"
        }
        s if s.starts_with("bpf_prog_") && s.ends_with("_memset") => {
            "BPF-to-BPF call to `memset`: a byte-at-a-time loop (`BlockKey`, new-flow and record paths)"
        }
        s if s.starts_with("bpf_prog_") && s.ends_with("_memcpy") => "a BPF-to-BPF call to `memcpy`",
        "htab_map_hash" => {
            "jhash of a hash-map key (FLOWS 40 B; BLOCKLIST 48 B ×2 on a flow side's first packet per blocklist generation)"
        }
        "lookup_nulls_elem_raw" | "__htab_map_lookup_elem" | "memcmp" | "htab_map_lookup_elem"
        | "htab_lru_map_lookup_elem" => "hash-map bucket walk / key compare",
        "read_tsc" | "ktime_get_mono_fast_ns" | "bpf_ktime_get_ns" => {
            "clock read (`bpf_ktime_get_ns`)"
        }
        "bpf_xdp_load_bytes" | "bpf_xdp_pointer" | "__pi_memcpy" | "memcpy" => {
            "packet reads beyond the linear part (`bpf_xdp_load_bytes` helper + copy)"
        }
        "bpf_xdp_get_buff_len" => "`bpf_xdp_get_buff_len` helper",
        "bpf_test_run" | "bpf_test_timer_continue" | "bpf_dispatcher_xdp_func"
        | "__local_bh_enable_ip" => "test-run harness",
        s if s.contains("ringbuf") || s.starts_with("irq_work") => "ring buffer reserve/submit",
        s if s.contains("lru") => "LRU flow table: insert / eviction",
        s if s.contains("htab") => "hash map (update/insert)",
        s if s.contains("spin_lock") || s.contains("spin_unlock") => "lock (map or ring buffer)",
        s if s.starts_with("bpf_prog_") && s.ends_with("_memcpy") => "a BPF-to-BPF call to `memcpy`",
        _ => "",
    }
}

/// Profiles `prog` with `perf record -g` attached to this process for `secs` seconds while
/// `work` runs it; attributes each sample taken inside the program (its own code or a kernel
/// function it called) to the innermost symbol. Returns (share % of the in-program samples,
/// symbol) for symbols at ≥ 1%, and the number of in-program samples; None without perf.
fn perf_profile(
    ebpf: &mut Ebpf,
    prog: &str,
    secs: u64,
    mut work: impl FnMut(&mut Ebpf),
) -> Option<(Vec<(f64, String)>, u64)> {
    use std::process::{Command, Stdio};
    let file = std::env::temp_dir().join(format!("detector-xdp-bench-{}.perf", std::process::id()));
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-g", "-e", "cpu-clock", "-F", "5000", "-p"])
        .arg(std::process::id().to_string())
        .arg("-o")
        .arg(&file)
        .args(["--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    loop {
        work(ebpf);
        if perf.try_wait().ok()?.is_some() {
            break;
        }
    }
    let out = Command::new("perf")
        .args(["script", "-F", "ip,sym", "-i"])
        .arg(&file)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    let suffix = format!("_{prog}");
    let mut counts: std::collections::HashMap<String, u64> = Default::default();
    let mut inside = 0u64;
    for sample in text.split("\n\n") {
        let frames: Vec<&str> = sample
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|s| s.split("+0x").next().unwrap_or(s))
            .collect();
        if frames
            .iter()
            .any(|f| f.starts_with("bpf_prog_") && f.ends_with(&suffix))
        {
            inside += 1;
            *counts.entry(frames[0].to_string()).or_default() += 1;
        }
    }
    if inside == 0 {
        return None;
    }
    let mut rows: Vec<(f64, String)> = counts
        .into_iter()
        .map(|(s, n)| (100.0 * n as f64 / inside as f64, s))
        .filter(|(pct, _)| *pct >= 1.0)
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    Some((rows, inside))
}

fn profile(name: &str, secs: f64) {
    let mut ebpf = load();
    let frame = packets()
        .into_iter()
        .find(|(n, _)| n.starts_with(name))
        .unwrap_or_else(|| panic!("no packet named {name}"))
        .1;
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        run(&mut ebpf, XDP_PROGRAM, &frame, REPEAT);
        runs += 1;
    }
    println!("{runs} × {REPEAT} runs of {XDP_PROGRAM} on {name:?}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        let name = args.get(i + 1).map(String::as_str).unwrap_or("TCP SYN");
        let secs = args.get(i + 2).and_then(|s| s.parse().ok()).unwrap_or(10.0);
        return profile(name, secs);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the XDP benchmark loads eBPF: run it as root (`cargo xtask bench xdp`)");
        std::process::exit(1);
    }
    let mut ebpf = load();
    let pkts = packets();
    let mut md = String::new();

    // Established path: one warm-up run creates the flow, then ROUNDS × (floor, bare, full)
    // with repeat = 10⁶, interleaved so that load on the machine hits all three alike.
    let floor_fd = load_floor();
    let mut floor = vec![Vec::new(); pkts.len()];
    let mut bare = vec![Vec::new(); pkts.len()];
    let mut full = vec![Vec::new(); pkts.len()];
    let mut steps = vec![vec![Vec::new(); pkts.len()]; XDP_STEP_PROGRAMS.len()];
    let mut actions = vec![(0u32, 0u32); pkts.len()];
    for (_, f) in &pkts {
        run(&mut ebpf, XDP_PROGRAM, f, 1);
    }
    let t0 = Instant::now();
    for _ in 0..ROUNDS {
        for (i, (_, f)) in pkts.iter().enumerate() {
            floor[i].push(run_fd(floor_fd, f, REPEAT));
            let (b, ab) = run(&mut ebpf, XDP_PARSE_ONLY_PROGRAM, f, REPEAT);
            for (s, name) in XDP_STEP_PROGRAMS.iter().enumerate() {
                steps[s][i].push(run(&mut ebpf, name, f, REPEAT).0);
            }
            let (x, ax) = run(&mut ebpf, XDP_PROGRAM, f, REPEAT);
            bare[i].push(b);
            full[i].push(x);
            actions[i] = (ab, ax);
        }
        drain(&mut ebpf);
    }
    let _ = writeln!(
        md,
        "Established flow (same packet, repeat = {REPEAT}; median of {ROUNDS} interleaved rounds, min in brackets; {:.1} s). \
         `empty` is a two-instruction XDP program (`return XDP_PASS`): the test-run floor.\n",
        t0.elapsed().as_secs_f64()
    );
    md.push_str("| packet | empty ns | bare parse-only ns | full detector_xdp ns | ratio full/bare | full − bare ns | action (full) | full Mpps/core |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    let action = |a: u32| match a {
        1 => "DROP",
        2 => "PASS",
        0 => "ABORTED",
        _ => "other",
    };
    let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    let mut syn_ns = (0.0, 0.0);
    for (i, (name, _)) in pkts.iter().enumerate() {
        let (emin, bmin, fmin) = (min(&floor[i]), min(&bare[i]), min(&full[i]));
        let e = median(&mut floor[i]);
        let b = median(&mut bare[i]);
        let f = median(&mut full[i]);
        if i == 0 {
            syn_ns = (b, f);
        }
        let _ = writeln!(
            md,
            "| {name} | {e:.1} [{emin:.0}] | {b:.1} [{bmin:.0}] | {f:.1} [{fmin:.0}] | {:.2}× | {:.1} | {} | {:.1} |",
            f / b,
            f - b,
            action(actions[i].1),
            1000.0 / f
        );
    }

    // The steps between the two programs, from the same rounds: what each step adds.
    let _ = writeln!(
        md,
        "\nThe same rounds, with two programs that stop part way along the full path \
         (`detector-ebpf/src/baseline.rs`): parsing plus the clock read, and plus the flow-table \
         lookup (no update). ns per packet, median [min]. What each step adds is given as the \
         difference of the medians, then of the minima (steadier when the machine is noisy).\n"
    );
    md.push_str(
        "| packet | parse-only | + clock | + flow lookup | full | clock adds | lookup adds | rest (update, counters, config) adds |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (i, (name, _)) in pkts.iter().enumerate() {
        let mut ladder = [
            bare[i].clone(),
            steps[0][i].clone(),
            steps[1][i].clone(),
            full[i].clone(),
        ];
        let mins: Vec<f64> = ladder.iter().map(|v| min(v)).collect();
        let meds: Vec<f64> = ladder.iter_mut().map(|v| median(v)).collect();
        let _ = write!(md, "| {name} |");
        for (m, lo) in meds.iter().zip(&mins) {
            let _ = write!(md, " {m:.0} [{lo:.0}] |");
        }
        for s in 1..4 {
            let _ = write!(
                md,
                " {:.0} / {:.0} |",
                meds[s] - meds[s - 1],
                mins[s] - mins[s - 1]
            );
        }
        md.push('\n');
    }

    // New-flow path: repeat = 1 per distinct packet; the kernel's per-run times summed.
    let t0 = Instant::now();
    let same = syn_of(u32::MAX);
    let (bare_same, _) = sum_runs(
        &mut ebpf,
        XDP_PARSE_ONLY_PROGRAM,
        (0..NEW_FLOWS).map(|_| same.clone()),
    );
    run(&mut ebpf, XDP_PROGRAM, &same, 1);
    let (full_same, _) = sum_runs(&mut ebpf, XDP_PROGRAM, (0..NEW_FLOWS).map(|_| same.clone()));
    let (bare_new, _) = sum_runs(
        &mut ebpf,
        XDP_PARSE_ONLY_PROGRAM,
        (0..NEW_FLOWS).map(syn_of),
    );
    let before = stats(&ebpf);
    let (full_new, n) = sum_runs(&mut ebpf, XDP_PROGRAM, (0..NEW_FLOWS).map(syn_of));
    let mid = stats(&ebpf);
    // The table (65,536 entries) now holds ~60k flows: the next 60k evict the oldest.
    let (bare_evict, _) = sum_runs(
        &mut ebpf,
        XDP_PARSE_ONLY_PROGRAM,
        (NEW_FLOWS..2 * NEW_FLOWS).map(syn_of),
    );
    let (full_evict, _) = sum_runs(
        &mut ebpf,
        XDP_PROGRAM,
        (NEW_FLOWS..2 * NEW_FLOWS).map(syn_of),
    );
    let after = stats(&ebpf);
    let d = |a: &[u64], b: &[u64], s: u32| b[s as usize] - a[s as usize];
    let _ = writeln!(
        md,
        "\nNew flows (repeat = 1 per packet, kernel per-run times summed over {n} packets; {:.1} s). \
         Each run is timed on its own, so the timer's cost is in every figure: the first row \
         measures the established path the same way for comparison.\n",
        t0.elapsed().as_secs_f64()
    );
    md.push_str(
        "| path (TCP SYN) | bare ns | full ns | ratio | full − bare ns |\n|---|---|---|---|---|\n",
    );
    for (what, b, f) in [
        (
            "established flow, repeat = 1 (timer overhead included)",
            bare_same,
            full_same,
        ),
        (
            "new flow: insert + `new` record (table not full)",
            bare_new,
            full_new,
        ),
        (
            "new flow, table full: LRU eviction + insert + record",
            bare_evict,
            full_evict,
        ),
    ] {
        let _ = writeln!(
            md,
            "| {what} | {b:.1} | {f:.1} | {:.2}× | {:.1} |",
            f / b,
            f - b
        );
    }
    let _ = writeln!(
        md,
        "\nKernel counters over the new-flow passes: flows created {} + {}, records {} + {}, ringbuf_full {} + {}, table_full {} + {}.",
        d(&before, &mid, stat::FLOWS_CREATED),
        d(&mid, &after, stat::FLOWS_CREATED),
        d(&before, &mid, stat::RECORDS),
        d(&mid, &after, stat::RECORDS),
        d(&before, &mid, stat::RINGBUF_FULL),
        d(&mid, &after, stat::RINGBUF_FULL),
        d(&before, &mid, stat::TABLE_FULL),
        d(&mid, &after, stat::TABLE_FULL),
    );
    if !args.iter().any(|a| a == "--no-perf") {
        let syn = pkts[0].1.clone();
        let mut next = 3 * NEW_FLOWS;
        let cases: [(&str, &str, f64, bool); 3] = [
            ("TCP SYN, established flow", XDP_PROGRAM, syn_ns.1, false),
            (
                "TCP SYN, established flow",
                XDP_PARSE_ONLY_PROGRAM,
                syn_ns.0,
                false,
            ),
            (
                "TCP SYN, new flow (table full: evictions)",
                XDP_PROGRAM,
                full_evict,
                true,
            ),
        ];
        for (what, prog, ns, new_flows) in cases {
            let profiled = perf_profile(&mut ebpf, prog, 4, |e| {
                if new_flows {
                    for _ in 0..1000 {
                        run(e, prog, &syn_of(next), 1);
                        next += 1;
                    }
                    drain(e);
                } else {
                    run(e, prog, &syn, REPEAT / 10);
                }
            });
            match profiled {
                None => {
                    let _ = writeln!(md, "\n(perf not available: no profile of {prog})");
                }
                Some((rows, samples)) => {
                    let _ = writeln!(
                        md,
                        "\nWhere `{prog}`'s time goes — {what}: `perf record -g -e cpu-clock` on this process for 4 s; \
                         the {samples} samples taken inside the program, by innermost symbol (≥ 1%); ns = share × {ns:.0} ns measured above:\n"
                    );
                    md.push_str("| symbol | what | share | ≈ ns/packet |\n|---|---|---|---|\n");
                    for (pct, sym) in rows {
                        let _ = writeln!(
                            md,
                            "| `{sym}` | {} | {pct:.1}% | {:.0} |",
                            explain(&sym),
                            pct / 100.0 * ns
                        );
                    }
                }
            }
        }
    }
    print!("{md}");
    if let Some(p) = std::env::var_os("DETECTOR_BENCH_OUT") {
        std::fs::write(&p, &md).expect("write DETECTOR_BENCH_OUT");
    }
}
