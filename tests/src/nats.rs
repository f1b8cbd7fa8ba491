//! A real `nats-server` (Debian's, from `cargo xtask setup --test-tools`) with JetStream,
//! started as a plain process inside a test namespace, with per-host NKey users whose
//! permissions are those docs/fleet.md recommends; and a reader of its streams.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{unique, Netns};

/// One NKey user: its seed file (for the agent or the CLI) and public key (for the server).
pub struct User {
    pub seed_file: PathBuf,
    pub public: String,
}

/// A JetStream server (or a cluster of them on one address, ports 4222, 4223, ...) in a
/// namespace; killed and its directory removed when dropped.
pub struct NatsServer {
    children: Vec<Option<Child>>,
    ns_path: PathBuf,
    ip: String,
    pub dir: PathBuf,
    /// The first node's URL.
    pub url: String,
    /// Every node's URL.
    pub urls: Vec<String>,
    /// May do anything in the account (streams, reading): the operator's / trainer's key.
    pub admin: User,
    /// Host users by host id: publish only `detector.<host>.>`, and read the fleet model.
    pub hosts: Vec<(String, User)>,
}

/// Fails with the command that installs it when Debian's nats-server is not there.
pub fn require_nats_server() {
    let ok = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "nats-server is missing: run `cargo xtask setup --test-tools` as root first"
    );
}

fn new_user(dir: &Path, name: &str) -> User {
    let kp = nkeys::KeyPair::new_user();
    let seed_file = dir.join(format!("{name}.nk"));
    fs::write(&seed_file, kp.seed().expect("seed")).unwrap();
    User {
        seed_file,
        public: kp.public_key(),
    }
}

impl NatsServer {
    /// Writes the configuration (users for `hosts`) and starts the server on `ip:4222` in `ns`.
    pub fn start(ns: &Netns, ip: &str, hosts: &[&str]) -> Self {
        Self::start_cluster(ns, ip, hosts, 1)
    }

    /// [`NatsServer::start`] with `nodes` servers clustered (client ports 4222.., routes
    /// 6222..), each with its own JetStream store.
    pub fn start_cluster(ns: &Netns, ip: &str, hosts: &[&str], nodes: usize) -> Self {
        require_nats_server();
        let dir = std::env::temp_dir().join(unique("detector-nats-"));
        fs::create_dir_all(dir.join("js")).unwrap();
        let admin = new_user(&dir, "admin");
        let hosts: Vec<(String, User)> = hosts
            .iter()
            .map(|h| (h.to_string(), new_user(&dir, h)))
            .collect();
        let mut users = format!("      {{ nkey: {} }}\n", admin.public);
        for (h, u) in &hosts {
            // Its own subjects, and reading (not writing) the fleet model: docs/fleet.md.
            let allow: Vec<String> = detector::fleet::models::host_publish_allow(h)
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect();
            users.push_str(&format!(
                "      {{ nkey: {}, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }} }}\n",
                u.public,
                allow.join(", ")
            ));
        }
        for i in 0..nodes {
            let cluster = if nodes > 1 {
                let routes: Vec<String> = (0..nodes)
                    .filter(|j| *j != i)
                    .map(|j| format!("\"nats-route://{ip}:{}\"", 6222 + j))
                    .collect();
                format!(
                    "cluster {{\n  name: \"detector-test\"\n  listen: \"{ip}:{}\"\n  routes: [{}]\n}}\n",
                    6222 + i,
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let conf = format!(
                "listen: \"{ip}:{}\"\nserver_name: \"t{i}\"\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n{cluster}accounts {{\n  FLEET {{\n    jetstream: enabled\n    users: [\n{users}    ]\n  }}\n}}\n",
                4222 + i,
                dir.join("js").join(format!("n{i}")).display()
            );
            fs::write(dir.join(format!("nats{i}.conf")), conf).unwrap();
        }
        let urls: Vec<String> = (0..nodes)
            .map(|i| format!("nats://{ip}:{}", 4222 + i))
            .collect();
        let mut s = Self {
            children: (0..nodes).map(|_| None).collect(),
            ns_path: ns.path(),
            ip: ip.to_string(),
            dir,
            url: urls[0].clone(),
            urls,
            admin,
            hosts,
        };
        s.resume();
        s
    }

    /// The seed file of host `h`'s user.
    pub fn host_seed(&self, h: &str) -> &Path {
        &self
            .hosts
            .iter()
            .find(|(n, _)| n == h)
            .expect("host")
            .1
            .seed_file
    }

    /// Starts every node that is not running (again, on its store) and waits until they listen.
    pub fn resume(&mut self) {
        for i in 0..self.children.len() {
            if self.children[i].is_none() {
                self.resume_node(i);
            }
        }
    }

    /// Starts node `i` (again, on its store) and waits until it listens.
    pub fn resume_node(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "already running");
        let log = fs::File::create(self.dir.join(format!("{}.log", unique("nats")))).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path.display()))
            .arg("nats-server")
            .arg("-c")
            .arg(self.dir.join(format!("nats{i}.conf")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.children[i] = Some(child);
        let start = Instant::now();
        let port = (4222 + i).to_string();
        let addr = format!("{}:{port}", self.ip);
        let ns = self.ns_path.clone();
        loop {
            let ok = Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .args(["nc", "-z", "-w", "1", &self.ip, &port])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nats-server did not listen on {addr}: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops every node (SIGTERM, then SIGKILL after 10 s).
    pub fn pause(&mut self) {
        for i in 0..self.children.len() {
            self.pause_node(i);
        }
    }

    /// Kills node `i` at once (SIGKILL: no goodbye to its peers or clients).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The node (index) the client from `peer_ip` is connected to, if any.
    pub fn node_of_client(&self, ns: &Netns, peer_ip: &str) -> Option<usize> {
        let out = ns.sh("ss -Htn state established");
        out.lines().find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let (local, peer) = (cols.get(2)?, cols.get(3)?);
            let port: usize = local.rsplit(':').next()?.parse().ok()?;
            let node = port.checked_sub(4222)?;
            (node < self.children.len() && peer.rsplit_once(':')?.0 == peer_ip).then_some(node)
        })
    }

    /// Stops node `i` (SIGTERM, then SIGKILL after 10 s).
    pub fn pause_node(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The running nodes' process ids (nsenter execs the server: same process).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// Every log the server wrote.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                out.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// `detector fleet <args>` as the admin, run inside the broker's namespace `ns`.
    pub fn fleet_cli(&self, ns: &Netns, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(crate::detector_bin())
            .arg("fleet")
            .args(args)
            .arg("--config")
            .arg(self.admin_config())
            .output()
            .expect("run detector fleet")
    }

    /// `detector fleet init --replicas n --max-bytes b`, retried for up to a minute while a
    /// new cluster elects its leaders.
    pub fn init_streams(&self, ns: &Netns, replicas: usize, max_bytes: u64) {
        let start = Instant::now();
        let (n, b) = (replicas.to_string(), max_bytes.to_string());
        loop {
            let out = self.fleet_cli(ns, &["init", "--max-bytes", &b, "--replicas", &n]);
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "detector fleet init: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// A `[fleet]` section that connects as the admin (for `detector fleet` commands).
    pub fn admin_config(&self) -> PathBuf {
        let p = self.dir.join("admin.toml");
        fs::write(
            &p,
            format!(
                "[fleet]\nservers = {}\nnkey_seed_file = \"{}\"\n",
                self.servers_toml(),
                self.admin.seed_file.display()
            ),
        )
        .unwrap();
        p
    }

    /// The nodes' URLs as a TOML array.
    pub fn servers_toml(&self) -> String {
        let quoted: Vec<String> = self.urls.iter().map(|u| format!("\"{u}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Runs `f` with a JetStream context connected as the user of the NKey seed file `seed`,
    /// from inside `ns` (the server's namespace), on a thread of its own.
    pub fn as_user<T: Send + 'static>(
        &self,
        ns: &Netns,
        seed: &Path,
        f: impl FnOnce(
                async_nats::jetstream::Context,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
            + Send
            + 'static,
    ) -> T {
        let (urls, seed) = (self.urls.clone(), fs::read_to_string(seed).unwrap());
        ns.spawn("as-user", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = async_nats::ConnectOptions::new()
                    .nkey(seed.trim().to_string())
                    .connect(urls)
                    .await
                    .expect("connect");
                f(async_nats::jetstream::new(client)).await
            })
        })
        .join()
        .expect("as-user thread")
    }

    /// Every message of `stream` as (subject, JSON payload), read as the admin from inside
    /// `ns` (the server's namespace).
    pub fn read_stream(&self, ns: &Netns, stream: &str) -> Vec<(String, serde_json::Value)> {
        let (urls, seed, stream) = (
            self.urls.clone(),
            fs::read_to_string(&self.admin.seed_file).unwrap(),
            stream.to_string(),
        );
        ns.spawn("read-stream", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // Retried: right after a node is killed the stream may have no leader for a while.
            let start = Instant::now();
            loop {
                match rt.block_on(read_all(&urls, &seed, &stream)) {
                    Ok(out) => return out,
                    Err(e) if start.elapsed() < Duration::from_secs(30) => {
                        eprintln!("reading {stream}: {e}; again");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(e) => panic!("cannot read {stream}: {e}"),
                }
            }
        })
        .join()
        .expect("stream reader")
    }
}

/// Every message of `stream`, or the first error.
async fn read_all(
    urls: &[String],
    seed: &str,
    stream: &str,
) -> Result<Vec<(String, serde_json::Value)>, String> {
    let client = async_nats::ConnectOptions::new()
        .nkey(seed.to_string())
        .connect(urls.to_vec())
        .await
        .map_err(|e| format!("connect as admin: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let info = s.info().await.map_err(|e| e.to_string())?.clone();
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = s
            .get_raw_message(seq)
            .await
            .map_err(|e| format!("message {seq}: {e}"))?;
        let v = serde_json::from_slice(&m.payload).unwrap_or_default();
        out.push((m.subject.to_string(), v));
    }
    Ok(out)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        for c in self.children.iter_mut() {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
