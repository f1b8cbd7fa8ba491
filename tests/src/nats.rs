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

/// A JetStream server in a namespace; killed and its directory removed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    ns_path: PathBuf,
    pub dir: PathBuf,
    pub url: String,
    /// May do anything in the account (streams, reading): the operator's / trainer's key.
    pub admin: User,
    /// Host users by host id: publish only `detector.<host>.>`.
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
            users.push_str(&format!(
                "      {{ nkey: {}, permissions: {{ publish: {{ allow: [\"detector.{h}.>\"] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }} }}\n",
                u.public
            ));
        }
        let conf = format!(
            "listen: \"{ip}:4222\"\nserver_name: \"t1\"\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\naccounts {{\n  FLEET {{\n    jetstream: enabled\n    users: [\n{users}    ]\n  }}\n}}\n",
            dir.join("js").display()
        );
        fs::write(dir.join("nats.conf"), conf).unwrap();
        let mut s = Self {
            child: None,
            ns_path: ns.path(),
            dir,
            url: format!("nats://{ip}:4222"),
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

    /// Starts the server (again, on the same store) and waits until it listens.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = fs::File::create(self.dir.join(format!("{}.log", unique("nats")))).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path.display()))
            .arg("nats-server")
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let start = Instant::now();
        let addr = self.url.trim_start_matches("nats://").to_string();
        let ns = self.ns_path.clone();
        loop {
            let ok = Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .args([
                    "nc",
                    "-z",
                    "-w",
                    "1",
                    addr.split(':').next().unwrap(),
                    "4222",
                ])
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

    /// Stops the server (SIGTERM, then SIGKILL after 10 s).
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
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

    /// A `[fleet]` section that connects as the admin (for `detector fleet` commands).
    pub fn admin_config(&self) -> PathBuf {
        let p = self.dir.join("admin.toml");
        fs::write(
            &p,
            format!(
                "[fleet]\nservers = [\"{}\"]\nnkey_seed_file = \"{}\"\n",
                self.url,
                self.admin.seed_file.display()
            ),
        )
        .unwrap();
        p
    }

    /// Every message of `stream` as (subject, JSON payload), read as the admin from inside
    /// `ns` (the server's namespace).
    pub fn read_stream(&self, ns: &Netns, stream: &str) -> Vec<(String, serde_json::Value)> {
        let (url, seed, stream) = (
            self.url.clone(),
            fs::read_to_string(&self.admin.seed_file).unwrap(),
            stream.to_string(),
        );
        ns.spawn("read-stream", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = async_nats::ConnectOptions::new()
                    .nkey(seed)
                    .connect(url.as_str())
                    .await
                    .expect("connect as admin");
                let js = async_nats::jetstream::new(client);
                let mut s = js.get_stream(&stream).await.expect("stream");
                let info = s.info().await.expect("stream info").clone();
                let mut out = Vec::new();
                if info.state.messages == 0 {
                    return out;
                }
                for seq in info.state.first_sequence..=info.state.last_sequence {
                    if let Ok(m) = s.get_raw_message(seq).await {
                        let v = serde_json::from_slice(&m.payload).unwrap_or_default();
                        out.push((m.subject.to_string(), v));
                    }
                }
                out
            })
        })
        .join()
        .expect("stream reader")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
