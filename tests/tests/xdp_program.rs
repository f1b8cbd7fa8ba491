//! The real XDP program under BPF_PROG_TEST_RUN: crafted packets give the expected flow-map
//! entries, malformed ones are counted and passed, the blocklist drops exactly what it lists,
//! records reach the ring buffer, and a full ring buffer is counted, never silent. The
//! benchmark's baseline programs pass and change nothing.

use aya::maps::{HashMap, MapData};
use detector::ebpf::{maps, Sizes};
use detector_common::{
    block::{BlockEntry, BlockKey},
    flow::{
        process_packet, stat,
        user::{MemEnv, MemTable},
        FlowConfig, FlowKey, Reason,
    },
    packet::{
        parse, Captured, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST,
        TCP_SYN,
    },
    testpkt::*,
};
use integration_tests::{bump_block_generation, corpus_files, untimed, Loaded};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const A: [u8; 4] = [192, 168, 7, 1];
const B: [u8; 4] = [192, 168, 7, 2];
const C: [u8; 4] = [192, 168, 7, 3];

fn key_of(frame: &[u8]) -> FlowKey {
    parse(&Captured::whole(frame))
        .expect("test frame parses")
        .key
}

fn crafted() -> Vec<Vec<u8>> {
    let s6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let d6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let hop_dst = [
        (0u8, vec![1, 4, 0, 0, 0, 0]),
        (60u8, vec![1, 4, 0, 0, 0, 0]),
    ];
    vec![
        tcp4(A, 40000, B, 80, TCP_SYN, 100, 0),
        tcp4(B, 80, A, 40000, TCP_SYN | TCP_ACK, 900, 0),
        tcp4(A, 40000, B, 80, TCP_ACK, 101, 0),
        tcp4(A, 40000, B, 80, TCP_ACK | TCP_PSH, 101, 500),
        tcp4(B, 80, A, 40000, TCP_ACK | TCP_PSH, 901, 1400),
        udp4(A, 5353, B, 53, 33),
        udp4(B, 53, A, 5353, 120),
        icmp4(A, B, 8, 4242, 1, 56),
        icmp4(B, A, 0, 4242, 1, 56),
        udp6(s6, 1000, d6, 2000, &hop_dst, 10),
        udp6(d6, 2000, s6, 1000, &[], 20),
        icmp6(s6, d6, 128, 9, 1, 32),
        tcp4_vlan(42, A, 1111, C, 22, TCP_SYN),
        eth(
            ETH_P_IPV4,
            &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 7)],
            &ipv4(A, C, 17, &[1, 1, 1, 0], &udp(9, 10, &[0; 5])),
        ),
    ]
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn crafted_packets_produce_the_expected_flow_entries() {
    let mut prog = Loaded::default_config();
    let frames = crafted();
    for f in &frames {
        assert_eq!(prog.run(f), XDP_PASS);
    }
    let flows = prog.flows();

    // Exact expectations for the hand-checked flows.
    let tcp = &flows[&key_of(&frames[0])];
    assert_eq!(tcp.packets, [3, 2]);
    assert_eq!(tcp.bytes, [40 + 40 + 540, 40 + 1440]);
    assert_eq!(tcp.payload_bytes, [500, 1400]);
    assert_eq!(
        tcp.tcp_flags,
        [TCP_SYN | TCP_ACK | TCP_PSH, TCP_SYN | TCP_ACK | TCP_PSH]
    );
    assert_eq!((tcp.min_len, tcp.max_len), (40, 1440));
    assert_eq!(tcp.len_hist, [3, 0, 0, 1, 1]);
    assert_eq!(tcp.first_dirs, 0b10010);
    let udp = &flows[&key_of(&frames[5])];
    assert_eq!((udp.packets, udp.bytes), ([1, 1], [61, 148]));
    let icmp_key = key_of(&frames[7]);
    assert_eq!(
        (icmp_key.port_lo, icmp_key.port_hi, icmp_key.proto),
        (4242, 4242, 1)
    );
    assert_eq!(flows[&icmp_key].packets, [1, 1]);
    let v6 = &flows[&key_of(&frames[9])];
    assert_eq!(v6.packets, [1, 1]);
    assert_eq!(v6.bytes, [40 + 16 + 18, 40 + 28]);
    let vlan_key = key_of(&frames[12]);
    assert_eq!(vlan_key.vlan, 42);
    assert_eq!(flows[&vlan_key].tcp_flags, [TCP_SYN, 0]);
    let qinq_key = key_of(&frames[13]);
    assert_eq!(
        (qinq_key.vlan, qinq_key.port_lo, qinq_key.port_hi),
        (100, 9, 10)
    );

    // The kernel table equals the shared logic run in user space, field for field.
    let mut table = MemTable::default();
    let mut env = MemEnv::default();
    for f in &frames {
        process_packet(
            &Captured::whole(f),
            1,
            &FlowConfig::DEFAULT,
            &mut table,
            &mut env,
        );
    }
    assert_eq!(flows.len(), table.len());
    for (k, s) in table.iter() {
        assert_eq!(untimed(&flows[k]), untimed(s), "flow {k:?}");
    }
    let st = prog.stats();
    assert_eq!(st[stat::PACKETS as usize], frames.len() as u64);
    assert_eq!(st[stat::FLOWS_CREATED as usize], flows.len() as u64);
    assert_eq!(st[stat::MALFORMED as usize], 0);
}

/// Headers are read straight from the frame's linear part, and through `bpf_xdp_load_bytes`
/// where they lie beyond it. BPF_PROG_TEST_RUN keeps at most a page (less head- and tailroom)
/// linear and puts the rest of a frags program's frame into fragments: with three 2 KiB IPv6
/// destination-options headers, the third of them and the UDP header start ~4.2 and ~6.2 KiB
/// in, so the parser must take the helper for them and still find the ports.
#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn headers_beyond_the_linear_part_are_read_across_fragments() {
    let s6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let d6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    // 2 + 2046 bytes: the largest extension header (length byte 255).
    let big = (60u8, vec![1u8; 2046]);
    let frame = udp6(s6, 7000, d6, 7001, &[big.clone(), big.clone(), big], 100);
    assert!(
        frame.len() > 6000,
        "the UDP header must lie past the first page"
    );
    let key = key_of(&frame);
    assert_eq!((key.port_lo, key.port_hi, key.proto), (7000, 7001, 17));

    let mut prog = Loaded::default_config();
    assert_eq!(prog.run(&frame), XDP_PASS);
    let flows = prog.flows();
    let state = flows
        .get(&key)
        .unwrap_or_else(|| panic!("no flow with the ports: {:?}", flows.keys()));
    assert_eq!(state.packets, [1, 0]);
    assert_eq!(state.payload_bytes, [100, 0]);
    assert_eq!(prog.stats()[stat::MALFORMED as usize], 0);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn malformed_packets_pass_uncounted_as_flows_and_are_counted() {
    let mut prog = Loaded::default_config();
    let good = udp4(A, 1, B, 2, 10);
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    let mut long_total = good.clone();
    long_total[16..18].copy_from_slice(&4000u16.to_be_bytes());
    let mut bad_doff = tcp4(A, 1, B, 2, TCP_SYN, 0, 0);
    bad_doff[14 + 20 + 12] = 0x30;
    let mut v6_truncated = udp6([1; 16], 1, [2; 16], 2, &[], 0);
    v6_truncated.truncate(14 + 30);
    let malformed = [
        good[..20].to_vec(),
        bad_ihl,
        long_total,
        bad_doff,
        v6_truncated,
        good[..14].to_vec(),
    ];
    for f in &malformed {
        assert_eq!(prog.run(f), XDP_PASS, "{f:02x?}");
    }
    let arp = eth(0x0806, &[], &[0u8; 28]);
    assert_eq!(prog.run(&arp), XDP_PASS);
    assert!(prog.flows().is_empty());
    let st = prog.stats();
    assert_eq!(st[stat::MALFORMED as usize], malformed.len() as u64);
    assert_eq!(st[stat::NOT_IP as usize], 1);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn only_blocklisted_traffic_is_dropped() {
    let mut prog = Loaded::default_config();
    let now = detector::clock::monotonic_ns();
    let a_to_b = udp4(A, 1000, B, 53, 10);
    let b_to_a = udp4(B, 53, A, 1000, 10);
    let c_to_b = udp4(C, 1000, B, 53, 10);
    let c_to_b_tcp = tcp4(C, 2000, B, 443, TCP_SYN, 1, 0);
    let b_to_c_tcp = tcp4(B, 443, C, 2000, TCP_SYN | TCP_ACK, 1, 0);
    {
        let mut bl: HashMap<&mut MapData, BlockKey, BlockEntry> =
            HashMap::try_from(prog.ebpf.map_mut(maps::BLOCKLIST).unwrap()).unwrap();
        bl.insert(
            BlockKey::source(4, &v4key(A)),
            BlockEntry {
                expires_ns: now + 600_000_000_000,
                hits: 0,
            },
            0,
        )
        .unwrap();
        bl.insert(
            BlockKey::flow(&key_of(&c_to_b_tcp)),
            BlockEntry {
                expires_ns: 0,
                hits: 0,
            },
            0,
        )
        .unwrap();
        // Expired long ago: must not drop.
        bl.insert(
            BlockKey::source(4, &v4key(C)),
            BlockEntry {
                expires_ns: 1,
                hits: 0,
            },
            0,
        )
        .unwrap();
    }
    // Entries are consulted only once user space has moved the blocklist generation on from 0
    // (the agent does after every entry it inserts); until then the program skips the lookups.
    let a_to_b_other = udp4(A, 1001, B, 53, 10);
    assert_eq!(
        prog.run(&a_to_b_other),
        XDP_PASS,
        "blocklist generation still 0"
    );
    bump_block_generation(&mut prog.ebpf);
    assert_eq!(prog.run(&a_to_b), XDP_DROP, "blocked source");
    assert_eq!(
        prog.run(&b_to_a),
        XDP_PASS,
        "replies to a blocked source are not from it"
    );
    assert_eq!(
        prog.run(&a_to_b),
        XDP_DROP,
        "the reply found the flow clear, not its blocked sender"
    );
    assert_eq!(prog.run(&c_to_b), XDP_PASS, "expired entry");
    assert_eq!(prog.run(&c_to_b_tcp), XDP_DROP, "blocked 5-tuple");
    assert_eq!(
        prog.run(&b_to_c_tcp),
        XDP_DROP,
        "both directions of a blocked 5-tuple"
    );
    assert_eq!(prog.stats()[stat::BLOCKED as usize], 4);
    let bl: HashMap<&MapData, BlockKey, BlockEntry> =
        HashMap::try_from(prog.ebpf.map(maps::BLOCKLIST).unwrap()).unwrap();
    assert_eq!(bl.get(&BlockKey::source(4, &v4key(A)), 0).unwrap().hits, 2);
    // Dropped packets never reach the flow table.
    let flows = prog.flows();
    assert!(!flows.contains_key(&key_of(&c_to_b_tcp)));
    assert_eq!(flows[&key_of(&b_to_a)].packets, [1, 0]);
}

/// A blocklist entry's hit count is exact when two CPUs drop its packets at once (the
/// program adds atomically; a plain increment lost counts here).
#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn blocklist_hits_are_exact_when_cpus_drop_at_once() {
    use aya::programs::{TestRun, TestRunOptions, Xdp};
    let mut prog = Loaded::default_config();
    {
        let mut bl: HashMap<&mut MapData, BlockKey, BlockEntry> =
            HashMap::try_from(prog.ebpf.map_mut(maps::BLOCKLIST).unwrap()).unwrap();
        let entry = BlockEntry {
            expires_ns: 0,
            hits: 0,
        };
        bl.insert(BlockKey::source(4, &v4key(A)), entry, 0).unwrap();
    }
    bump_block_generation(&mut prog.ebpf);
    const REPEAT: u32 = 500_000;
    let frame = udp4(A, 1000, B, 53, 10);
    let xdp: &Xdp = prog
        .ebpf
        .program(detector::ebpf::XDP_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut out = vec![0u8; frame.len() + 256];
                let r = xdp
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        data_out: Some(&mut out),
                        repeat: REPEAT,
                        ..TestRunOptions::default()
                    })
                    .expect("BPF_PROG_TEST_RUN");
                assert_eq!(r.return_value, XDP_DROP);
            });
        }
    });
    assert_eq!(prog.stats()[stat::BLOCKED as usize], 2 * REPEAT as u64);
    let bl: HashMap<&MapData, BlockKey, BlockEntry> =
        HashMap::try_from(prog.ebpf.map(maps::BLOCKLIST).unwrap()).unwrap();
    assert_eq!(
        bl.get(&BlockKey::source(4, &v4key(A)), 0).unwrap().hits,
        2 * REPEAT as u64,
        "hits lost between CPUs"
    );
}

/// The tables the kernel programs fill per flow, socket, process or pending syscall are LRU:
/// an entry nobody removes (a flow never swept, a syscall whose exit never came) cannot fill
/// them for good.
#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn per_flow_and_per_thread_tables_are_bounded_lru_maps() {
    let prog = Loaded::default_config();
    for name in ["FLOWS", "SOCKETS", "SK_OWNERS", "PARENTS", "PENDING"] {
        let map = prog
            .ebpf
            .map(name)
            .unwrap_or_else(|| panic!("the object has no {name} map"));
        assert!(
            matches!(map, aya::maps::Map::LruHashMap(_)),
            "{name} is not an LRU map"
        );
    }
}

/// A flow's sides are looked up in the blocklist once per generation of it: an entry inserted
/// mid-flow drops the flow's next packet once the generation moves on (as the agent does with
/// every insert), and not before — which shows the answer really is cached.
#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn a_block_inserted_mid_flow_drops_from_the_next_generation() {
    let mut prog = Loaded::default_config();
    let a_to_b = tcp4(A, 40000, B, 80, TCP_ACK, 1, 10);
    let b_to_a = tcp4(B, 80, A, 40000, TCP_ACK, 1, 10);
    bump_block_generation(&mut prog.ebpf);
    for f in [&a_to_b, &b_to_a, &a_to_b] {
        assert_eq!(prog.run(f), XDP_PASS, "nothing blocked yet");
    }
    {
        let mut bl: HashMap<&mut MapData, BlockKey, BlockEntry> =
            HashMap::try_from(prog.ebpf.map_mut(maps::BLOCKLIST).unwrap()).unwrap();
        bl.insert(
            BlockKey::source(4, &v4key(A)),
            BlockEntry {
                expires_ns: 0,
                hits: 0,
            },
            0,
        )
        .unwrap();
    }
    assert_eq!(
        prog.run(&a_to_b),
        XDP_PASS,
        "same generation: the flow's cached answer stands"
    );
    bump_block_generation(&mut prog.ebpf);
    assert_eq!(
        prog.run(&a_to_b),
        XDP_DROP,
        "next generation: looked up again"
    );
    assert_eq!(prog.run(&b_to_a), XDP_PASS, "the other side is not blocked");
    assert_eq!(prog.run(&a_to_b), XDP_DROP, "and stays dropped");
    let flows = prog.flows();
    assert_eq!(flows[&key_of(&a_to_b)].packets, [3, 2]);
    assert_eq!(prog.stats()[stat::BLOCKED as usize], 2);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn edge_corpus_packets_are_never_dropped_or_aborted() {
    let mut prog = Loaded::default_config();
    let mut sent = 0u64;
    for file in corpus_files("pcap/edge") {
        let mut reader = match detector::pcap::Reader::open(&file) {
            Ok(r) => r,
            Err(e) => panic!("{}: {e}", file.display()),
        };
        loop {
            match reader.next_packet() {
                Ok(Some(p)) => {
                    // BPF_PROG_TEST_RUN needs at least an Ethernet header.
                    if p.data.len() < 14 {
                        continue;
                    }
                    let verdict = prog.run(p.data);
                    assert_eq!(
                        verdict,
                        XDP_PASS,
                        "{} packet {}",
                        file.display(),
                        reader.packets_read()
                    );
                    sent += 1;
                }
                Ok(None) => break,
                // The truncated capture ends early; what was read still counts.
                Err(detector::pcap::PcapError::Truncated { .. }) => break,
                Err(e) => panic!("{}: {e}", file.display()),
            }
        }
    }
    let st = prog.stats();
    assert_eq!(st[stat::PACKETS as usize], sent);
    assert_eq!(st[stat::BLOCKED as usize], 0);
    for (k, s) in prog.flows() {
        assert!(
            s.total_packets() > 0 && s.min_len <= s.max_len,
            "{k:?} {s:?}"
        );
        assert_eq!(
            s.len_hist.iter().map(|&h| h as u64).sum::<u64>(),
            s.total_packets(),
            "{k:?}"
        );
    }
    assert_ne!(XDP_ABORTED, XDP_PASS);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn early_fin_and_rst_records_reach_the_ring_buffer() {
    let mut prog = Loaded::default_config();
    for i in 0..8u32 {
        assert_eq!(
            prog.run(&tcp4(A, 5000, B, 80, TCP_ACK, 1 + i * 10, 10)),
            XDP_PASS
        );
    }
    prog.run(&tcp4(A, 5000, B, 80, TCP_FIN | TCP_ACK, 81, 0));
    prog.run(&tcp4(B, 80, A, 5000, TCP_FIN | TCP_ACK, 1, 0));
    prog.run(&tcp4(C, 6000, B, 80, TCP_SYN, 1, 0));
    prog.run(&tcp4(B, 80, C, 6000, TCP_RST | TCP_ACK, 0, 0));
    let recs = prog.records();
    let got: Vec<(u8, u64)> = recs
        .iter()
        .map(|r| (r.reason, r.state.total_packets()))
        .collect();
    assert_eq!(
        got,
        [
            (Reason::New as u8, 1),
            (Reason::Early as u8, 8),
            (Reason::Fin as u8, 10),
            (Reason::New as u8, 1),
            (Reason::Rst as u8, 2)
        ]
    );
    assert_eq!(recs[0].key, key_of(&tcp4(A, 5000, B, 80, TCP_ACK, 0, 0)));
    assert_eq!(prog.stats()[stat::RECORDS as usize], 5);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn a_full_ring_buffer_counts_every_lost_record() {
    let sizes = Sizes {
        flow_ringbuf: 4096,
        ..Sizes::default()
    };
    let mut prog = Loaded::new(&sizes, &FlowConfig::DEFAULT);
    // Each RST on a new flow emits one record; nobody reads the ring buffer meanwhile.
    let n = 200u16;
    for i in 0..n {
        prog.run(&tcp4(A, 10000 + i, B, 80, TCP_RST, 1, 0));
    }
    let st = prog.stats();
    let lost = st[stat::RINGBUF_FULL as usize];
    let emitted = st[stat::RECORDS as usize];
    assert!(lost > 0, "a 4 KiB ring buffer cannot hold {n} records");
    assert_eq!(
        emitted + lost,
        n as u64,
        "every record is either delivered or counted as lost"
    );
    assert_eq!(
        prog.records().len() as u64,
        emitted,
        "what the counter says was delivered is there"
    );
}

/// The benchmark's baselines (`cargo xtask bench xdp`) pass the verifier, pass every packet and
/// leave the flow table, the counters and the ring buffer as they were: the parse-only program
/// touches no map, the two step programs read the clock and look flows up without creating or
/// changing any. A step that wrote would make the benchmark's differences lie.
#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn benchmark_baselines_pass_every_packet_and_change_no_state() {
    use aya::programs::Xdp;
    use detector::ebpf::{XDP_PARSE_ONLY_PROGRAM, XDP_STEP_PROGRAMS};

    let mut l = Loaded::default_config();
    // One flow exists, so that the lookup step also finds something.
    let first = tcp4(A, 40000, B, 80, TCP_SYN, 100, 0);
    assert_eq!(l.run(&first), XDP_PASS);
    let _ = l.records();
    let (flows, stats) = (l.flows(), l.stats());
    let mut frames = crafted();
    frames.push(first);
    frames.push(vec![0xff; 20]);
    for name in std::iter::once(XDP_PARSE_ONLY_PROGRAM).chain(XDP_STEP_PROGRAMS) {
        let prog: &mut Xdp = l.ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load()
            .unwrap_or_else(|e| panic!("{name} fails the verifier: {e:#}"));
        // Each frame three times: a later run sees whatever an earlier one left.
        for f in frames.iter().flat_map(|f| [f; 3]) {
            assert_eq!(l.run_program(name, f), XDP_PASS, "{name}");
        }
    }
    assert_eq!(l.flows(), flows, "a baseline changed the flow table");
    assert_eq!(l.stats(), stats, "a baseline counted something");
    assert!(l.records().is_empty(), "a baseline emitted a record");
}
