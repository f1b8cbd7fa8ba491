//! Every integration test, one module per file, in one binary: a binary per file linked the
//! whole detector crate (candle included) twenty-odd times. Tests that need root are
//! `#[ignore]`d with the reason; `cargo xtask test` runs them all (`-- --include-ignored`), and
//! a name filter picks a module: `cargo test -p integration-tests --test integration lab::`.

mod agent_policy;
mod bad_input;
mod bus_scale;
mod capabilities;
mod capture_digest;
mod dataset_export;
mod dismiss;
mod dismiss_corpus;
mod exhaustion;
mod faults;
mod few_shot;
mod fleet;
mod fuzz_regressions;
mod fuzz_xdp;
mod host_baseline;
mod host_traffic;
mod lab;
mod metamorphic;
mod packaging;
mod parity;
mod replay_alerts;
mod replay_cli;
mod replay_detect;
mod xdp_attach;
mod xdp_program;
