//! Scenario files: `lab/scenarios/<name>.toml`, one tool run against the lab as data (tool,
//! arguments, hosts, duration, label, seed, sessions). docs/lab.md documents the format.
//!
//! Everything read from a file is checked here, and errors name the file and the field, so a
//! bad file stops the lab before any namespace exists.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::topology::{host_spec, Role};

/// Coarse attack families a scenario may name: the project's dataset vocabulary
/// (`detector::dataset::families::FAMILIES`, less `benign` and `other-attack`). The lab-dataset
/// helper checks names against the real table when it writes the dataset.
pub const ATTACK_FAMILIES: &[&str] = &[
    "scan",
    "dos",
    "ddos",
    "brute-force",
    "web-attack",
    "botnet",
    "infiltration",
    "exploit",
    "backdoor",
    "exfiltration",
    "beaconing",
    "lateral-movement",
];

/// Placeholders an argument may contain, with what they become.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    ("victim", "the victim's IPv4 address"),
    ("victim6", "the victim's IPv6 address"),
    (
        "peer",
        "IPv4 address of `peer` (scenarios run on the victim)",
    ),
    ("peer6", "IPv6 address of `peer`"),
    (
        "peers",
        "IPv4 addresses of every host in `peers` (or of `peer`), space-separated",
    ),
    ("peers6", "their IPv6 addresses, space-separated"),
    ("self", "IPv4 address of the host running the tool"),
    (
        "seed",
        "the session's seed (the scenario's seed + session index - 1)",
    ),
    ("session", "the session index, from 1"),
    (
        "work",
        "the session's working folder (also the tool's working directory)",
    ),
    ("lab_user", "the victim's login user"),
    ("lab_password", "that user's password"),
    ("key", "an SSH private key the victim's lab user accepts"),
    (
        "urls",
        "file: the victim's web pages as http://<v4> URLs, one per line, seeded order",
    ),
    ("urls6", "file: the same pages as http://[<v6>] URLs"),
    (
        "curl_urls",
        "file: a curl config (`-K`) fetching each page of {urls} to /dev/null",
    ),
    ("curl_urls6", "file: the same over IPv6"),
    (
        "pages",
        "file: the same pages as paths (`/`, `/p/<n>.html`), for any scheme, address and port",
    ),
    (
        "pauses",
        "file: 400 seeded think times in seconds (0.1 to 4), one per line",
    ),
    (
        "names",
        "file: dig batch lines (`name type`) of lab.test names, seeded order",
    ),
    (
        "tunnel_names",
        "file: dig batch lines of long random labels under c2.test (TXT)",
    ),
    (
        "users",
        "file: user names for brute force (the lab user among them)",
    ),
    (
        "passwords",
        "file: passwords for brute force, the real one last",
    ),
    ("exfil_file", "file: 24 MiB of seeded random bytes"),
];

/// Benign or attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Benign,
    Attack,
}

impl Label {
    /// The name used in labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Benign => "benign",
            Label::Attack => "attack",
        }
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: Option<String>,
    label: Label,
    family: String,
    variant: String,
    tool: String,
    #[serde(default)]
    args: Vec<String>,
    hosts: Vec<String>,
    peer: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    duration: String,
    sessions: u32,
    seed: u64,
    #[serde(default)]
    spoofed_sources: bool,
}

/// A checked scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// The file name without `.toml`.
    pub name: String,
    pub file: PathBuf,
    pub description: String,
    pub label: Label,
    pub family: String,
    pub variant: String,
    pub tool: String,
    pub args: Vec<String>,
    /// Where the tool runs; sessions rotate over them (see [`plan`]).
    pub hosts: Vec<String>,
    /// The lab host at the other end when the tool runs on the victim (a compromised victim
    /// beaconing or exfiltrating to it); flows are attributed through its address. With
    /// `peers`, the first of them.
    pub peer: Option<String>,
    /// Every host at the other end of a scenario that runs on the victim (`peers = [...]` in the
    /// file, or `[peer]`): a session reaching several hosts in a row (lateral movement). The
    /// session runs in the first one's queue; flows with any of them are its flows.
    pub peers: Vec<String>,
    /// Longest a session may run: the tool is stopped then.
    #[serde(serialize_with = "ser_duration")]
    pub duration: Duration,
    pub sessions: u32,
    pub seed: u64,
    /// The tool sends from random source addresses: flows from addresses of no lab host in this
    /// session's time window belong to it.
    pub spoofed_sources: bool,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// Parses "500ms", "20s", "2m", "1m 30s" (humantime's units); a bare number is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}): write e.g. 500ms, 20s, 2m or 1m 30s"))
}

/// Expands `{name}` placeholders with `lookup`; `{{` and `}}` are literal braces.
pub fn expand(
    text: &str,
    mut lookup: impl FnMut(&str) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            bail!("unmatched `}}` (write `}}}}` for a literal brace)");
        } else {
            let end = tail
                .find('}')
                .context("unclosed `{` (write `{{` for a literal brace)")?;
            let name = &tail[1..end];
            match lookup(name)? {
                Some(v) => out.push_str(&v),
                None => bail!(
                    "unknown placeholder `{{{name}}}` (known: {})",
                    PLACEHOLDERS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Reads and checks one scenario file.
pub fn load_file(path: &Path) -> anyhow::Result<Scenario> {
    let f = path.display();
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {f}"))?;
    let raw: RawScenario = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{f}: {e}"))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let field = |name: &str, msg: String| anyhow::anyhow!("{f}: field `{name}`: {msg}");
    if !valid_name(&name) {
        bail!(
            "{f}: the file name must be lowercase letters, digits and '-' (it names the scenario)"
        );
    }
    if !valid_name(&raw.variant) {
        return Err(field(
            "variant",
            format!("`{}`: use lowercase letters, digits and '-'", raw.variant),
        ));
    }
    match raw.label {
        Label::Benign if raw.family != "benign" => {
            return Err(field(
                "family",
                format!("`{}`: a benign scenario's family is `benign`", raw.family),
            ))
        }
        Label::Attack if !ATTACK_FAMILIES.contains(&raw.family.as_str()) => {
            return Err(field(
                "family",
                format!(
                    "`{}` is not an attack family (one of: {})",
                    raw.family,
                    ATTACK_FAMILIES.join(", ")
                ),
            ))
        }
        _ => {}
    }
    if raw.tool.trim().is_empty() || raw.tool.contains(char::is_whitespace) {
        return Err(field(
            "tool",
            "name one program (arguments go in `args`)".into(),
        ));
    }
    if raw.hosts.is_empty() {
        return Err(field("hosts", "name at least one host".into()));
    }
    let wanted = match raw.label {
        Label::Benign => Role::BenignClient,
        Label::Attack => Role::Attacker,
    };
    let on_victim = raw.hosts.iter().any(|h| h == "victim");
    for (i, h) in raw.hosts.iter().enumerate() {
        let Some(spec) = host_spec(h) else {
            return Err(field(
                &format!("hosts[{i}]"),
                format!(
                    "no host `{h}` (hosts: {})",
                    super::topology::HOSTS
                        .iter()
                        .map(|h| h.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if on_victim && spec.role != Role::Victim {
            return Err(field(
                "hosts",
                "a scenario that runs on the victim runs only there".into(),
            ));
        }
        if !on_victim && spec.role != wanted {
            return Err(field(
                &format!("hosts[{i}]"),
                format!(
                    "`{h}` is a {} host; a {} scenario runs on {} hosts",
                    spec.role.as_str(),
                    raw.label.as_str(),
                    wanted.as_str()
                ),
            ));
        }
    }
    let peers: Vec<String> = match (&raw.peer, raw.peers.is_empty()) {
        (Some(_), false) => {
            return Err(field(
                "peers",
                "name either `peer` (one host) or `peers` (several), not both".into(),
            ))
        }
        (Some(p), true) => vec![p.clone()],
        (None, _) => raw.peers.clone(),
    };
    let peer_field = if raw.peer.is_some() { "peer" } else { "peers" };
    match (peers.is_empty(), on_victim) {
        (true, true) => {
            return Err(field(
                "peer",
                "a scenario that runs on the victim names the lab host at the other end".into(),
            ))
        }
        (false, false) => {
            return Err(field(
                peer_field,
                "only scenarios that run on the victim have a peer".into(),
            ))
        }
        _ => {}
    }
    for (i, p) in peers.iter().enumerate() {
        let name = if raw.peer.is_some() {
            "peer".to_string()
        } else {
            format!("peers[{i}]")
        };
        match host_spec(p) {
            // The victim's own network (file servers) may be at the other end of either.
            Some(s) if s.role == wanted || s.role == Role::Server => {}
            Some(s) => {
                return Err(field(
                    &name,
                    format!(
                        "`{p}` is a {} host; the peer of a {} scenario is a {} or server host",
                        s.role.as_str(),
                        raw.label.as_str(),
                        wanted.as_str()
                    ),
                ))
            }
            None => return Err(field(&name, format!("no host `{p}`"))),
        }
        if peers[..i].contains(p) {
            return Err(field(&name, format!("`{p}` is named twice")));
        }
    }
    if raw.spoofed_sources && raw.label != Label::Attack {
        return Err(field(
            "spoofed_sources",
            "only attacks spoof their sources".into(),
        ));
    }
    let duration = parse_duration(&raw.duration).map_err(|e| field("duration", e))?;
    if duration < Duration::from_secs(1) || duration > Duration::from_secs(600) {
        return Err(field(
            "duration",
            format!("`{}`: must be between 1s and 10m", raw.duration),
        ));
    }
    if !(1..=50).contains(&raw.sessions) {
        return Err(field(
            "sessions",
            format!("{}: must be between 1 and 50", raw.sessions),
        ));
    }
    // Check placeholders now with dummy values, so a typo fails before the lab starts.
    for (i, a) in raw.args.iter().enumerate() {
        let known = |n: &str| Ok(PLACEHOLDERS.iter().any(|(p, _)| *p == n).then(String::new));
        expand(a, known).map_err(|e| field(&format!("args[{i}]"), format!("{e:#}")))?;
        let wants_peer = ["{peer}", "{peer6}", "{peers}", "{peers6}"]
            .iter()
            .any(|p| a.contains(p));
        if wants_peer && peers.is_empty() {
            return Err(field(
                &format!("args[{i}]"),
                "`{peer}` needs a `peer` host".into(),
            ));
        }
    }
    Ok(Scenario {
        name,
        file: path.to_path_buf(),
        description: raw.description.unwrap_or_default(),
        label: raw.label,
        family: raw.family,
        variant: raw.variant,
        tool: raw.tool,
        args: raw.args,
        hosts: raw.hosts,
        peer: peers.first().cloned(),
        peers,
        duration,
        sessions: raw.sessions,
        seed: raw.seed,
        spoofed_sources: raw.spoofed_sources,
    })
}

/// Reads every `*.toml` in `dir` (sorted by name) and checks them together: one error message
/// lists every bad file.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Scenario>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list scenarios in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no scenario files (*.toml) in {}", dir.display());
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for f in &files {
        match load_file(f) {
            Ok(s) => out.push(s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("bad scenario files:\n  {}", errors.join("\n  "));
    }
    check_set(&out)?;
    Ok(out)
}

/// Rules across scenarios: variants are unique (they name the rows of the dataset), and all
/// spoofing scenarios share one host, whose sessions run one at a time, so a flow from an unknown
/// address has exactly one session it can belong to.
pub fn check_set(scenarios: &[Scenario]) -> anyhow::Result<()> {
    let mut variants: HashMap<&str, &Scenario> = HashMap::new();
    for s in scenarios {
        if let Some(other) = variants.insert(&s.variant, s) {
            bail!(
                "{}: field `variant`: `{}` is also the variant of {}",
                s.file.display(),
                s.variant,
                other.file.display()
            );
        }
    }
    // A host reached as a second or later peer is not a queue of its own: every session that
    // reaches it runs in one queue (that of the scenarios' first peer), so one session at a
    // time can claim its flows.
    let queues: Vec<(&str, &Scenario)> = scenarios
        .iter()
        .flat_map(|s| {
            let qs: Vec<&str> = match s.peers.first() {
                Some(p) => vec![p.as_str()],
                None => s.hosts.iter().map(String::as_str).collect(),
            };
            qs.into_iter().map(move |q| (q, s))
        })
        .collect();
    let mut second: HashMap<&str, (&str, &Scenario)> = HashMap::new();
    for s in scenarios {
        for p in s.peers.iter().skip(1) {
            if let Some((_, other)) = queues.iter().find(|(q, _)| q == p) {
                bail!(
                    "{}: field `peers`: `{p}` is a later peer here, but {} runs its sessions in `{p}`'s own queue",
                    s.file.display(),
                    other.file.display()
                );
            }
            let q = s.peers[0].as_str();
            match second.insert(p, (q, s)) {
                Some((oq, other)) if oq != q => bail!(
                    "{}: field `peers`: `{p}` is also a later peer of {}, whose first peer is `{oq}`, not `{q}`",
                    s.file.display(),
                    other.file.display()
                ),
                _ => {}
            }
        }
    }
    let mut spoof_host: Option<(&str, &Scenario)> = None;
    for s in scenarios.iter().filter(|s| s.spoofed_sources) {
        if s.hosts.len() != 1 {
            bail!(
                "{}: field `hosts`: a scenario with spoofed_sources runs on exactly one host",
                s.file.display()
            );
        }
        match spoof_host {
            None => spoof_host = Some((&s.hosts[0], s)),
            Some((h, other)) if h != s.hosts[0] => bail!(
                "{}: field `hosts`: spoofing scenarios must all run on one host ({} runs on `{h}`)",
                s.file.display(),
                other.file.display()
            ),
            _ => {}
        }
    }
    Ok(())
}

/// Keeps the scenarios named in `names` (all when empty); an unknown name is an error that lists
/// the known ones.
pub fn select(all: Vec<Scenario>, names: &[String]) -> anyhow::Result<Vec<Scenario>> {
    if names.is_empty() {
        return Ok(all);
    }
    for n in names {
        if !all.iter().any(|s| &s.name == n) {
            bail!(
                "no scenario `{n}` (known: {})",
                all.iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(all
        .into_iter()
        .filter(|s| names.contains(&s.name))
        .collect())
}

/// One planned run of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedSession {
    /// `<scenario>/<index>`: unique within a recording.
    pub id: String,
    /// Index into the scenario list.
    #[serde(skip)]
    pub scenario: usize,
    /// From 1.
    pub index: u32,
    /// Where the tool runs.
    pub host: String,
    /// The lab host whose addresses identify this session's flows: the tool's host, or the peer
    /// of a scenario that runs on the victim. Sessions of one queue run one after another.
    pub queue: String,
    pub seed: u64,
}

/// Sessions per queue host, in run order: round-robin over the scenarios (every scenario's
/// first session, then every second, ...), so one queue mixes its scenarios over time.
pub fn plan(
    scenarios: &[Scenario],
    sessions_override: Option<u32>,
) -> BTreeMap<String, Vec<PlannedSession>> {
    let mut all = Vec::new();
    for (si, s) in scenarios.iter().enumerate() {
        let n = sessions_override.unwrap_or(s.sessions);
        for index in 1..=n {
            // Offset by the scenario's position, so the first sessions of all scenarios do not
            // all land on the first host.
            let host = s.hosts[(index as usize - 1 + si) % s.hosts.len()].clone();
            let queue = s.peers.first().cloned().unwrap_or_else(|| host.clone());
            all.push(PlannedSession {
                id: format!("{}/{index}", s.name),
                scenario: si,
                index,
                host,
                queue,
                seed: s.seed.wrapping_add(u64::from(index) - 1),
            });
        }
    }
    all.sort_by_key(|a| (a.index, a.scenario));
    let mut queues: BTreeMap<String, Vec<PlannedSession>> = BTreeMap::new();
    for p in all {
        queues.entry(p.queue.clone()).or_default().push(p);
    }
    queues
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn tmp(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-scenario-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    const GOOD: &str = r#"
label = "attack"
family = "scan"
variant = "nmap-syn"
tool = "nmap"
args = ["-sS", "{victim}"]
hosts = ["attacker1"]
duration = "20s"
sessions = 3
seed = 7
"#;

    #[test]
    fn a_good_file_loads() {
        let d = tmp("good");
        let s = load_file(&write(&d, "scan-syn.toml", GOOD)).unwrap();
        assert_eq!(s.name, "scan-syn");
        assert_eq!(s.duration, Duration::from_secs(20));
        assert_eq!(s.label, Label::Attack);
    }

    fn err_of(name: &str, text: &str) -> String {
        let d = tmp(name);
        format!("{:#}", load_file(&write(&d, "x.toml", text)).unwrap_err())
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let e = err_of("unknown-field", &format!("{GOOD}\ncolour = 1\n"));
        assert!(e.contains("x.toml") && e.contains("colour"), "{e}");
        let e = err_of("bad-host", &GOOD.replace("attacker1", "attacker9"));
        assert!(e.contains("hosts[0]") && e.contains("attacker9"), "{e}");
        let e = err_of("bad-role", &GOOD.replace("attacker1", "client1"));
        assert!(e.contains("hosts[0]") && e.contains("benign-client"), "{e}");
        let e = err_of("bad-family", &GOOD.replace("\"scan\"", "\"scam\""));
        assert!(e.contains("`family`") && e.contains("scam"), "{e}");
        let e = err_of("bad-duration", &GOOD.replace("20s", "20 parsecs"));
        assert!(e.contains("`duration`"), "{e}");
        let e = err_of("long", &GOOD.replace("20s", "1h"));
        assert!(e.contains("`duration`"), "{e}");
        let e = err_of("placeholder", &GOOD.replace("{victim}", "{vicitm}"));
        assert!(e.contains("args[1]") && e.contains("vicitm"), "{e}");
        let e = err_of("brace", &GOOD.replace("{victim}", "{victim"));
        assert!(e.contains("args[1]") && e.contains("unclosed"), "{e}");
        let e = err_of("sessions", &GOOD.replace("sessions = 3", "sessions = 0"));
        assert!(e.contains("`sessions`"), "{e}");
        let e = err_of("type", &GOOD.replace("seed = 7", "seed = \"seven\""));
        assert!(e.contains("x.toml") && e.contains("seed"), "{e}");
        let e = err_of("missing", &GOOD.replace("tool = \"nmap\"", ""));
        assert!(e.contains("tool"), "{e}");
        let e = err_of("peer", &GOOD.replace("[\"attacker1\"]", "[\"victim\"]"));
        assert!(e.contains("`peer`"), "{e}");
        let e = err_of(
            "benign-family",
            &GOOD
                .replace("\"attack\"", "\"benign\"")
                .replace("attacker1", "client1"),
        );
        assert!(e.contains("`family`"), "{e}");
        let e = err_of("not-toml", "label = ");
        assert!(e.contains("x.toml"), "{e}");
    }

    const ON_VICTIM: &str = r#"
label = "attack"
family = "lateral-movement"
variant = "psexec"
tool = "sh"
args = ["-c", "for h in {peers}; do echo $h; done"]
hosts = ["victim"]
peers = ["server1", "server2"]
duration = "20s"
sessions = 2
seed = 9
"#;

    #[test]
    fn a_victim_scenario_may_reach_several_peers() {
        let d = tmp("peers");
        let s = load_file(&write(&d, "lateral.toml", ON_VICTIM)).unwrap();
        assert_eq!(s.peer.as_deref(), Some("server1"));
        assert_eq!(s.peers, ["server1", "server2"]);
        let q = plan(&[s], None);
        assert_eq!(q["server1"].len(), 2, "{q:?}");
        assert!(!q.contains_key("server2"));
        let e = err_of(
            "both",
            &ON_VICTIM.replace(
                "hosts = [\"victim\"]",
                "hosts = [\"victim\"]\npeer = \"server3\"",
            ),
        );
        assert!(e.contains("`peers`") && e.contains("not both"), "{e}");
        let e = err_of("twice", &ON_VICTIM.replace("\"server2\"]", "\"server1\"]"));
        assert!(e.contains("peers[1]") && e.contains("twice"), "{e}");
        // A benign scenario may reach a server too, but not an attacker.
        let benign = ON_VICTIM
            .replace("\"attack\"", "\"benign\"")
            .replace("\"lateral-movement\"", "\"benign\"");
        load_file(&write(&d, "backup.toml", &benign)).unwrap();
        let e = err_of(
            "attacker-peer",
            &benign.replace("\"server2\"", "\"attacker1\""),
        );
        assert!(e.contains("peers[1]") && e.contains("attacker"), "{e}");
        // A later peer is nobody's queue.
        let d = tmp("peer-queues");
        write(&d, "a.toml", ON_VICTIM);
        write(
            &d,
            "b.toml",
            &ON_VICTIM
                .replace("psexec", "backup")
                .replace("[\"server1\", \"server2\"]", "[\"server2\"]"),
        );
        let e = format!("{:#}", load_dir(&d).unwrap_err());
        assert!(e.contains("`server2`") && e.contains("queue"), "{e}");
    }

    #[test]
    fn expand_handles_braces_and_unknown_names() {
        let look = |n: &str| Ok((n == "victim").then(|| "10.77.0.2".to_string()));
        assert_eq!(expand("a{victim}b", look).unwrap(), "a10.77.0.2b");
        assert_eq!(expand("{{x}} {victim}", look).unwrap(), "{x} 10.77.0.2");
        assert!(expand("{nope}", look).is_err());
        assert!(expand("}", look).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("1s 500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn set_rules_and_plan() {
        let d = tmp("set");
        write(&d, "a.toml", GOOD);
        write(&d, "b.toml", GOOD);
        let e = format!("{:#}", load_dir(&d).unwrap_err());
        assert!(e.contains("variant") && e.contains("nmap-syn"), "{e}");
        write(
            &d,
            "b.toml",
            &GOOD
                .replace("nmap-syn", "other")
                .replace("[\"attacker1\"]", "[\"attacker1\", \"attacker2\"]"),
        );
        let all = load_dir(&d).unwrap();
        let q = plan(&all, None);
        assert_eq!(q["attacker1"].len(), 4);
        assert_eq!(q["attacker2"].len(), 2);
        let ids: Vec<&str> = q["attacker1"].iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["a/1", "a/2", "b/2", "a/3"]);
        assert_eq!(q["attacker1"][1].seed, 8);
        assert_eq!(plan(&all, Some(1))["attacker1"].len(), 1);
        assert!(select(all, &["zzz".into()]).is_err());
    }

    #[test]
    fn the_committed_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/scenarios");
        let all = load_dir(&dir).unwrap();
        let mut per_family: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &all {
            *per_family.entry(&s.family).or_default() += 1;
        }
        for fam in [
            "scan",
            "dos",
            "brute-force",
            "exfiltration",
            "beaconing",
            "web-attack",
            "lateral-movement",
            "benign",
        ] {
            assert!(
                per_family.get(fam).copied().unwrap_or(0) >= 2,
                "family {fam} needs at least two variants: {per_family:?}"
            );
        }
    }
}
