//! The control socket: a root-only unix socket (mode 0600, peer uid checked) speaking one JSON
//! request and one JSON response per line. `detector status`, `detector incident confirm`,
//! `detector model history|rollback` are its clients.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

/// Longest request accepted, bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What a client asks. Every variant has braces, even without fields: serde's
/// `deny_unknown_fields` does not reach unit variants, and `{"cmd":"status","x":1}` must be
/// refused like any other request with a field that means nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Attached programs, model, rates, drops, losses.
    Status {},
    /// Confirm an incident: the selected recent flows are attacks of `family`; the agent adapts
    /// its model from them.
    Incident {
        family: String,
        #[serde(default)]
        alert_ids: Vec<String>,
        #[serde(default)]
        source: Option<String>,
        /// Unix ns; with `until_ns`, selects flows first seen in [since, until].
        #[serde(default)]
        since_ns: Option<u64>,
        #[serde(default)]
        until_ns: Option<u64>,
    },
    /// Dismiss alerts: the selected recent flows were benign. Later alerts that look like them
    /// (in the serving model's embedding space) are not raised; the model does not change.
    Dismiss {
        #[serde(default)]
        alert_ids: Vec<String>,
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        since_ns: Option<u64>,
        #[serde(default)]
        until_ns: Option<u64>,
    },
    /// The dismissals in force, oldest first (without their exemplars).
    Dismissals {},
    /// Withdraw a dismissal: alerts like its flows are raised again.
    Undismiss { id: String },
    /// The models this host has used, newest first.
    ModelHistory {},
    /// Go back to the previous model.
    ModelRollback {},
}

/// A request with the channel its answer goes back on.
pub type Envelope = (Request, oneshot::Sender<Response>);

/// What the agent answers: one JSON object per line, `"ok": true` or `false` first.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Response {
    Failure(Failure),
    Status(Box<Status>),
    Dismissed(Dismissed),
    Dismissals(DismissalList),
    Withdrawn(Withdrawn),
    History(History),
    RolledBack(RolledBack),
    Adapted(Adapted),
}

/// A refused or failed request.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub ok: bool,
    pub error: String,
}

/// An error answer.
pub fn error(msg: impl std::fmt::Display) -> Response {
    Response::Failure(Failure {
        ok: false,
        error: msg.to_string(),
    })
}

/// `status`: what is attached, what serves, what was read, scored, blocked and lost.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub ok: bool,
    pub uptime_s: u64,
    pub attached: Vec<String>,
    /// The XDP mode each interface got.
    pub xdp: Vec<XdpStatus>,
    pub not_attached: Vec<String>,
    pub model: String,
    pub scoring_path: String,
    /// Why that path ("auto: CPU has avx512vnni; …" or the configured value).
    pub scoring_reason: String,
    pub policy: PolicyStatus,
    pub records_read: u64,
    pub records_per_s: f64,
    pub scored: u64,
    pub alerts_rate_limited: u64,
    pub thin_evidence: u64,
    pub blocks: Vec<BlockStatus>,
    /// The kernel's counters by name, summed over CPUs.
    pub kernel: std::collections::BTreeMap<String, u64>,
    /// Live flows the kernel's full flow table evicted before their final record (counted at
    /// each sweep: a lower bound, exact when the table is quiet).
    pub table_evicted: u64,
    pub tracked_sources: usize,
    pub recent_records: usize,
    pub adaptations: u64,
    /// Whether the serving model has this host's novelty prototypes.
    pub novelty: bool,
    pub warmup: WarmupStatus,
    /// Whether only what is attack-like and unusual for this host alerts.
    pub host_rule: bool,
    pub dismissals: usize,
    pub dismissed_alerts: u64,
    /// Records of the last baseline fit.
    pub baseline_rows: Option<usize>,
    /// The fleet publisher, when `[fleet]` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetStatus>,
}

/// One interface's XDP attachment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct XdpStatus {
    pub interface: String,
    /// "native" or "skb".
    pub mode: &'static str,
    /// Why native mode was refused, where `auto` fell back to generic mode.
    pub native_refused: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyStatus {
    pub drop: crate::config::DropMode,
    pub alert_threshold: f32,
    pub drop_threshold: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlockStatus {
    pub what: String,
    pub expires_unix_ns: u64,
    pub alert_id: String,
    pub family: String,
}

/// The host's warm-up (docs/model.md, "The host's baseline").
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WarmupStatus {
    pub done: bool,
    pub learned_s: u64,
    pub needed_s: u64,
}

/// `dismiss`: the dismissal made.
#[derive(Clone, Debug, Serialize)]
pub struct Dismissed {
    pub ok: bool,
    pub dismissal: String,
    pub flows: usize,
    pub dismissals: usize,
}

/// `dismissals`: those in force, without their exemplars.
#[derive(Clone, Debug, Serialize)]
pub struct DismissalList {
    pub ok: bool,
    pub dismissals: Vec<DismissalSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DismissalSummary {
    pub id: String,
    pub created_unix_ns: u64,
    pub selected: String,
    pub flows: usize,
    pub exemplars: usize,
}

/// `undismiss`: the dismissal withdrawn.
#[derive(Clone, Debug, Serialize)]
pub struct Withdrawn {
    pub ok: bool,
    pub withdrawn: String,
    pub dismissals: usize,
}

/// `model_history`.
#[derive(Clone, Debug, Serialize)]
pub struct History {
    pub ok: bool,
    pub current: String,
    pub base: String,
    pub history: Vec<crate::incidents::HistoryEntry>,
}

/// `model_rollback`: the model serving now.
#[derive(Clone, Debug, Serialize)]
pub struct RolledBack {
    pub ok: bool,
    pub model: String,
}

/// `incident`: the adapted model serving now, and the adaptation's report.
#[derive(Clone, Debug, Serialize)]
pub struct Adapted {
    pub ok: bool,
    pub model: String,
    pub family: String,
    pub flows: usize,
    pub report: serde_json::Value,
}

/// Parses one request line; the error says what is wrong with it.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))
}

/// Binds the socket (replacing a stale one), restricted to root.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        // A live agent answers; a stale socket from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use: another agent is running", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to root", path.display()))?;
    Ok(listener)
}

/// Serves clients until the listener fails; requests go to `tx`.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Envelope>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("control socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, tx).await {
                warn!("control client: {e:#}");
            }
        });
    }
}

async fn handle(stream: UnixStream, tx: mpsc::Sender<Envelope>) -> anyhow::Result<()> {
    let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
    let (rd, mut wr) = stream.into_split();
    let answer = if uid != 0 {
        info!(uid, "control socket: refused a non-root client");
        error(format!(
            "permission denied: the control socket is for root (you are uid {uid})"
        ))
    } else {
        let mut line = String::new();
        let mut limited = BufReader::new(rd.take(MAX_REQUEST as u64 + 1));
        let n = tokio::time::timeout(Duration::from_secs(10), limited.read_line(&mut line))
            .await
            .context("request timed out")??;
        if n > MAX_REQUEST {
            error(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            match parse_request(&line) {
                Err(e) => error(e),
                Ok(req) => {
                    let (otx, orx) = oneshot::channel();
                    if tx.send((req, otx)).await.is_err() {
                        error("the agent is stopping")
                    } else {
                        orx.await
                            .unwrap_or_else(|_| error("the agent dropped the request"))
                    }
                }
            }
        }
    };
    let mut text = serde_json::to_vec(&answer)?;
    text.push(b'\n');
    wr.write_all(&text).await?;
    wr.shutdown().await?;
    Ok(())
}

/// Client side: sends one request and returns the answer (an `ok: false` answer is an error).
pub fn call(socket: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to the agent at {} (is `detector run` running, and are you root?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    // The agent may answer (a refusal) and close before reading: the answer is what counts.
    let _ = s.write_all(&line);
    let mut answer = String::new();
    std::io::BufReader::new(&s).read_line(&mut answer)?;
    let v: serde_json::Value =
        serde_json::from_str(&answer).with_context(|| format!("the agent answered {answer:?}"))?;
    if v["ok"] == false {
        bail!("{}", v["error"].as_str().unwrap_or("the agent refused"));
    }
    Ok(v)
}

/// The socket path from the config file, unless given.
pub fn socket_path(given: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p),
        None => Ok(crate::config::Config::load(config)?.agent.control_socket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(parse_request(r#"{"cmd":"status"}"#), Ok(Request::Status {}));
        let r = parse_request(r#"{"cmd":"incident","family":"brute-force","source":"10.0.0.9"}"#)
            .unwrap();
        assert!(matches!(r, Request::Incident { ref family, .. } if family == "brute-force"));
        let r = parse_request(r#"{"cmd":"dismiss","alert_ids":["a-1"]}"#).unwrap();
        assert!(matches!(r, Request::Dismiss { ref alert_ids, .. } if alert_ids == &["a-1"]));
        assert!(parse_request("{").unwrap_err().starts_with("bad request"));
        assert!(parse_request(r#"{"cmd":"format_disk"}"#)
            .unwrap_err()
            .contains("unknown variant"));
        assert!(
            parse_request(r#"{"cmd":"incident","family":"x","sauce":"1.2.3.4"}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        // Requests without fields refuse them too.
        for line in [
            r#"{"cmd":"status","extra":1}"#,
            r#"{"cmd":"model_rollback","to":"host-1"}"#,
        ] {
            assert!(
                parse_request(line).unwrap_err().contains("unknown field"),
                "{line}"
            );
        }
        // What the client sends parses back to the same request.
        for r in [
            Request::Status {},
            Request::ModelHistory {},
            Request::ModelRollback {},
        ] {
            assert_eq!(parse_request(&serde_json::to_string(&r).unwrap()), Ok(r));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_socket_answers_root_and_survives_garbage() {
        let dir = std::env::temp_dir().join(format!("detector-ctl-{}", std::process::id()));
        let path = dir.join("control.sock");
        let listener = bind(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (tx, mut rx) = mpsc::channel::<Envelope>(4);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                // Any answer will do: the request's name travels in `model`.
                let _ = reply.send(Response::RolledBack(RolledBack {
                    ok: true,
                    model: format!("{req:?}"),
                }));
            }
        });
        let p = path.clone();
        let garbage = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"not json\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        let uid = unsafe { libc::geteuid() };
        if uid == 0 {
            assert!(garbage.contains("bad request"), "{garbage}");
            let p = path.clone();
            let v = tokio::task::spawn_blocking(move || call(&p, &Request::Status {}))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(v["model"], "Status");
        } else {
            assert!(garbage.contains("permission denied"), "{garbage}");
        }
        assert!(bind(&path)
            .unwrap_err()
            .to_string()
            .contains("another agent"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
