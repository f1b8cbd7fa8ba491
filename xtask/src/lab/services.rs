//! Real services on the victim (OpenSSH with sftp, nginx with HTTP/2 on 443, vsftpd, two
//! dnsmasq, iperf3, two socat line services, Redis, Python's smtpd, chronyd as an NTP server),
//! each from the lab's own config files in its work folder, and the attackers' listeners (a DNS
//! server for the tunnelling zone, TCP sinks for beacons and uploads).
//!
//! Benign services listen on registered and ephemeral-range ports too (nginx on 8080 and 8443,
//! socat on 9000 and 50000, iperf3 on 5201-5204, DNS on 8600): real hosts run them, and a recording whose
//! every benign service sat on a well-known port would teach "a port above 1023 is an attack".
//!
//! The lab user exists only for the services: sshd, vsftpd and smbd run in a private mount
//! namespace where the lab's passwd/shadow/group and PAM files lie over /etc (a read-only
//! overlay), so the host's own accounts are never touched.

use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::{
    inputs::{self, LAB_PASSWORD, LAB_USER},
    topology::{output, victim_spec, LabHost, Netns, Proc, Role, Topology},
};

/// TCP port of the attackers' HTTP-like sink (beacons).
pub const SINK_HTTP_PORT: u16 = 8080;
/// TCP port of the attackers' raw sink (uploads): reads to EOF, answers "ok".
pub const SINK_RAW_PORT: u16 = 4444;
/// iperf3 servers on the victim (one test at a time each: a scenario using one runs on one
/// host only, so its sessions never overlap).
pub const IPERF_PORTS: [u16; 4] = [5201, 5202, 5203, 5204];
/// nginx's ports besides 80, serving the same site: plain HTTP and TLS (self-signed).
pub const WEB_ALT_PORTS: [u16; 2] = [8080, 8443];
/// socat on the victim: a line service (one "ok <line>" reply per request line) and a small
/// document service ("GET <path>" answers the page, then closes).
pub const LINE_PORT: u16 = 9000;
pub const FETCH_PORT: u16 = 50000;
/// A second dnsmasq on the victim, answering lab.test on a registered port.
pub const DNS_ALT_PORT: u16 = 8600;
/// nginx's TLS port with HTTP/2 (ALPN h2, and HTTP/1.1 for clients that do not offer it).
pub const H2_PORT: u16 = 443;
/// Redis (the database clients keep connections to).
pub const REDIS_PORT: u16 = 6379;
/// SMTP: Python's smtpd, accepting every message and printing it to its log.
pub const SMTP_PORT: u16 = 25;
/// NTP: chronyd serving its own clock (it never sets the machine's).
pub const NTP_PORT: u16 = 123;
/// SMB (Samba's smbd) on the victim and on every server: direct SMB and NetBIOS session.
pub const SMB_PORTS: [u16; 2] = [445, 139];
/// The vulnerable web application behind nginx's `/app/` (on 127.0.0.1 only: nginx proxies).
pub const WEBAPP_PORT: u16 = 8082;
/// TLS in front of the HTTP sink, on the attackers (C2 over HTTPS) and the servers (a
/// monitoring endpoint the victim pushes metrics to).
pub const SINK_TLS_PORT: u16 = 443;
/// The attackers' stratum mining pool (JSON lines over one long-lived TCP connection).
pub const STRATUM_PORT: u16 = 3333;
/// The attacker running iodined (IP over DNS) on port 53 instead of dnsmasq, its tunnel
/// domain, its end of the tunnel (the victim's iodine client takes the next address) and the
/// tunnel's password.
pub const IODINE_HOST: &str = "attacker2";
pub const IODINE_DOMAIN: &str = "tun.c2.test";
pub const IODINE_NET: &str = "10.99.0.1/27";
/// The tunnel's password (scenarios name it in their arguments).
pub const TUNNEL_PASSWORD: &str = "c2-tunnel-77";
const LAB_UID: u32 = 1777;
/// The vulnerable web application's source (Python 3's standard library only).
const WEBAPP: &str = include_str!("webapp.py");

/// The running services; dropping it stops them.
pub struct Services {
    procs: Vec<Proc>,
    sinks: Vec<Sink>,
    /// The client key `{key}` names.
    pub client_key: PathBuf,
}

impl Services {
    /// (host, pid) of every service process, for attributing process records.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .map(|p| {
                let host = p.name.split(':').next().unwrap_or_default().to_string();
                (host, p.pid())
            })
            .collect()
    }

    /// Fails when a service has exited since it started.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(s) = p.try_wait()? {
                bail!("service {} exited ({s}):\n{}", p.name, p.log_tail());
            }
        }
        Ok(())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for s in &self.sinks {
            s.stop.store(true, Ordering::Relaxed);
        }
        for s in &mut self.sinks {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
        // Procs stop themselves when dropped.
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn mkdir(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Starts every service and waits until each listens.
pub fn start(topo: &Topology, work: &Path) -> anyhow::Result<Services> {
    let dir = work.join("victim");
    let logs = work.join("logs");
    mkdir(&dir, 0o755)?;
    mkdir(&logs, 0o755)?;
    let victim = topo.victim();
    let mut procs = Vec::new();
    let client_key = accounts(&dir)?;
    inputs::write_site(&dir.join("www"))?;
    tls_cert(&dir)?;

    procs.push(Proc::spawn(
        "victim:nginx",
        victim
            .ns
            .cmd("nginx")
            .args(["-c", &path_str(&nginx_conf(&dir)?)?]),
        &logs.join("nginx.log"),
    )?);
    let sshd = sshd_conf(&dir)?;
    procs.push(Proc::spawn(
        "victim:sshd",
        &mut with_lab_accounts(
            &victim.ns,
            &dir,
            &["/usr/sbin/sshd", "-D", "-e", "-f", &path_str(&sshd)?],
        ),
        &logs.join("sshd.log"),
    )?);
    let ftp = vsftpd_conf(&dir)?;
    procs.push(Proc::spawn(
        "victim:vsftpd",
        &mut with_lab_accounts(&victim.ns, &dir, &["/usr/sbin/vsftpd", &path_str(&ftp)?]),
        &logs.join("vsftpd.log"),
    )?);
    // The resolver on 53, and the same zone on a registered port (as a service-discovery
    // resolver, e.g. Consul's on 8600, serves it).
    let alt_dns = format!("port={DNS_ALT_PORT}");
    for (name, extra) in [("dnsmasq", None), ("dnsmasq-alt", Some(alt_dns.as_str()))] {
        let mut lines = vec![
            "address=/lab.test/10.77.0.2",
            "address=/lab.test/fd77::2",
            "mx-host=lab.test,mail.lab.test,10",
        ];
        lines.extend(extra);
        let dns = dnsmasq_conf(&dir.join(format!("{name}.conf")), victim, &lines)?;
        procs.push(Proc::spawn(
            &format!("victim:{name}"),
            victim.ns.cmd("dnsmasq").arg(format!("--conf-file={dns}")),
            &logs.join(format!("{name}-victim.log")),
        )?);
    }
    procs.push(Proc::spawn(
        "victim:redis",
        victim
            .ns
            .cmd("redis-server")
            .arg(path_str(&redis_conf(&dir)?)?),
        &logs.join("redis.log"),
    )?);
    // Python's smtpd (3.11 still has it): a real SMTP dialogue, messages printed to the log.
    procs.push(Proc::spawn(
        "victim:smtpd",
        victim
            .ns
            .cmd("/usr/bin/python3")
            .args(["-W", "ignore", "-m", "smtpd", "-n", "-c", "DebuggingServer"])
            .arg(format!("0.0.0.0:{SMTP_PORT}")),
        &logs.join("smtpd.log"),
    )?);
    // -x: serve time without ever adjusting the machine's clock.
    procs.push(Proc::spawn(
        "victim:chronyd",
        victim.ns.cmd("chronyd").args([
            "-d",
            "-x",
            "-u",
            "root",
            "-f",
            &path_str(&chrony_conf(&dir)?)?,
        ]),
        &logs.join("chronyd.log"),
    )?);
    for port in IPERF_PORTS {
        procs.push(Proc::spawn(
            &format!("victim:iperf3-{port}"),
            victim
                .ns
                .cmd("iperf3")
                .args(["-s", "-p", &port.to_string()]),
            &logs.join(format!("iperf3-{port}.log")),
        )?);
    }

    // The same vsftpd on the victim's IPv6 address, with vsftpd's own failed-login delay (3 s)
    // on top of PAM's (pam_unix waits about 2 s after a failure in both): brute force against
    // it is slow by itself.
    let ftp6 = vsftpd6_conf(&dir)?;
    procs.push(Proc::spawn(
        "victim:vsftpd6",
        &mut with_lab_accounts(&victim.ns, &dir, &["/usr/sbin/vsftpd", &path_str(&ftp6)?]),
        &logs.join("vsftpd6.log"),
    )?);
    let app = dir.join("webapp.py");
    write(&app, WEBAPP)?;
    procs.push(Proc::spawn(
        "victim:webapp",
        victim.ns.cmd("/usr/bin/python3").args([
            path_str(&app)?,
            "127.0.0.1".into(),
            WEBAPP_PORT.to_string(),
            path_str(&dir.join("webapp.db"))?,
        ]),
        &logs.join("webapp.log"),
    )?);
    procs.push(smbd(victim, &dir, &dir.join("smb"), "VICTIM", &logs)?);
    for (port, script) in [
        (LINE_PORT, line_service(&dir)?),
        (FETCH_PORT, fetch_service(&dir)?),
    ] {
        procs.push(Proc::spawn(
            &format!("victim:socat-{port}"),
            victim.ns.cmd("socat").args([
                // Errors only; -t: after the client's EOF, wait this long for the reply;
                // -T: drop a connection idle this long.
                "-d".to_string(),
                "-t".to_string(),
                "5".to_string(),
                "-T".to_string(),
                "15".to_string(),
                format!("TCP6-LISTEN:{port},ipv6only=0,reuseaddr,fork,backlog=128"),
                format!("EXEC:/bin/sh {}", path_str(&script)?),
            ]),
            &logs.join(format!("socat-{port}.log")),
        )?);
    }

    let mut sinks = Vec::new();
    let mut want: Vec<(&Netns, Vec<String>)> = vec![(&victim.ns, victim_ports())];
    // The servers: file shares the victim reaches (lateral movement, backups) and a monitoring
    // endpoint over HTTPS it pushes metrics to.
    for h in topo.hosts.iter().filter(|h| h.spec.role == Role::Server) {
        let base = work.join(h.spec.name);
        mkdir(&base, 0o755)?;
        procs.push(smbd(
            h,
            &dir,
            &base.join("smb"),
            &h.spec.name.to_uppercase(),
            &logs,
        )?);
        sinks.push(Sink::start(&h.ns, SINK_HTTP_PORT, SinkKind::Http)?);
        procs.push(tls_front(h, &base, "metrics.lab.test", &logs)?);
        want.push((&h.ns, ports(&["tcp:445", "tcp:139", "tcp:443", "tcp:8080"])));
    }
    // The attackers' side of beaconing, exfiltration, mining and tunnelling.
    for h in topo.hosts.iter().filter(|h| h.spec.role == Role::Attacker) {
        let base = work.join(h.spec.name);
        mkdir(&base, 0o755)?;
        if h.spec.name == IODINE_HOST {
            // IP over DNS: iodined answers its domain on port 53 (in place of dnsmasq here)
            // and ends the tunnel on a tun device of this namespace. -c: the client's address
            // may change (a relay may reorder); -f: foreground.
            procs.push(Proc::spawn(
                &format!("{}:iodined", h.spec.name),
                h.ns.cmd("iodined").args([
                    "-f",
                    "-c",
                    "-P",
                    TUNNEL_PASSWORD,
                    "-l",
                    &h.spec.v4.to_string(),
                    "-p",
                    "53",
                    IODINE_NET,
                    IODINE_DOMAIN,
                ]),
                &logs.join(format!("iodined-{}.log", h.spec.name)),
            )?);
        } else {
            let conf = work.join(format!("dnsmasq-{}.conf", h.spec.name));
            let answer = format!("address=/c2.test/{}", h.spec.v4);
            let dns = dnsmasq_conf(&conf, h, &[&answer])?;
            procs.push(Proc::spawn(
                &format!("{}:dnsmasq", h.spec.name),
                h.ns.cmd("dnsmasq").arg(format!("--conf-file={dns}")),
                &logs.join(format!("dnsmasq-{}.log", h.spec.name)),
            )?);
        }
        for (port, kind) in [
            (SINK_HTTP_PORT, SinkKind::Http),
            (SINK_RAW_PORT, SinkKind::Raw),
            (STRATUM_PORT, SinkKind::Stratum),
        ] {
            sinks.push(Sink::start(&h.ns, port, kind)?);
        }
        procs.push(tls_front(h, &base, "cdn-edge.c2.test", &logs)?);
        want.push((&h.ns, ports(&["udp:53", "tcp:443"])));
    }
    let mut services = Services {
        procs,
        sinks,
        client_key,
    };
    wait_listening(&want, &mut services)?;
    Ok(services)
}

fn ports(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Samba's smbd on `host`, with its shares under `base` and the lab's accounts (the lab user,
/// its password in Samba's own database): `files` (the lab user's documents), `public` (read
/// only, for guests), and the administrative shares `ADMIN$` and `C$` that remote
/// administration (psexec and its kind) writes to. Anonymous enumeration is allowed, as on
/// many file servers. NetBIOS name service is off (no nmbd).
fn smbd(
    host: &LabHost,
    accounts_dir: &Path,
    base: &Path,
    netbios: &str,
    logs: &Path,
) -> anyhow::Result<Proc> {
    mkdir(base, 0o755)?;
    let b = path_str(base)?;
    for d in ["private", "lock", "state", "cache", "pid", "ncalrpc"] {
        mkdir(&base.join(d), 0o755)?;
    }
    let seed = u64::from(host.spec.v4.octets()[3]);
    for (share, seed) in [
        ("files", seed),
        ("public", seed + 100),
        ("admin", seed + 200),
    ] {
        let d = base.join(share);
        inputs::write_share(&d, seed)?;
        // The lab user writes here (uploads); Samba runs as root and switches to it.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777))?;
    }
    let conf = base.join("smb.conf");
    write(
        &conf,
        &format!(
            "[global]\n  workgroup = LAB\n  netbios name = {netbios}\n  server string = file server\n\
             \x20 server role = standalone server\n  security = user\n  map to guest = bad user\n\
             \x20 guest account = nobody\n  restrict anonymous = 0\n\
             \x20 passdb backend = tdbsam:{b}/private/passdb.tdb\n  private dir = {b}/private\n\
             \x20 lock directory = {b}/lock\n  state directory = {b}/state\n\
             \x20 cache directory = {b}/cache\n  pid directory = {b}/pid\n  ncalrpc dir = {b}/ncalrpc\n\
             \x20 log level = 0\n  disable netbios = yes\n  smb ports = 445 139\n\
             \x20 load printers = no\n  printing = bsd\n  printcap name = /dev/null\n  disable spoolss = yes\n\
             [files]\n  path = {b}/files\n  read only = no\n  valid users = {LAB_USER}\n\
             [public]\n  path = {b}/public\n  read only = yes\n  guest ok = yes\n\
             [ADMIN$]\n  path = {b}/admin\n  read only = no\n  valid users = {LAB_USER}\n\
             [C$]\n  path = {b}/admin\n  read only = no\n  valid users = {LAB_USER}\n"
        ),
    )?;
    let conf = path_str(&conf)?;
    // The lab user's Samba password, then smbd in the foreground (its log on stdout).
    let script =
        "printf '%s\\n%s\\n' \"$1\" \"$1\" | smbpasswd -c \"$2\" -s -a \"$3\" >/dev/null && \
                  exec smbd --foreground --no-process-group --debug-stdout -s \"$2\"";
    Proc::spawn(
        &format!("{}:smbd", host.spec.name),
        &mut with_lab_accounts(
            &host.ns,
            accounts_dir,
            &["sh", "-c", script, "sh", LAB_PASSWORD, &conf, LAB_USER],
        ),
        &logs.join(format!("smbd-{}.log", host.spec.name)),
    )
}

/// TLS on port 443 of `host` in front of its HTTP sink (socat, one process per connection),
/// with a self-signed certificate for `name` made at lab start (clients use `-k`).
fn tls_front(host: &LabHost, base: &Path, name: &str, logs: &Path) -> anyhow::Result<Proc> {
    let (cert, key) = (base.join("tls-cert.pem"), base.join("tls-key.pem"));
    self_signed(name, &format!("DNS:{name}"), &cert, &key)?;
    Proc::spawn(
        &format!("{}:tls-{SINK_TLS_PORT}", host.spec.name),
        host.ns.cmd("socat").args([
            "-d".to_string(),
            format!(
                "OPENSSL-LISTEN:{SINK_TLS_PORT},pf=ip6,ipv6only=0,reuseaddr,fork,backlog=128,cert={},key={},verify=0",
                path_str(&cert)?,
                path_str(&key)?
            ),
            format!("TCP4:127.0.0.1:{SINK_HTTP_PORT}"),
        ]),
        &logs.join(format!("tls-{}.log", host.spec.name)),
    )
}

fn path_str(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_string)
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

/// What the victim listens on once its services are up.
fn victim_ports() -> Vec<String> {
    let mut want: Vec<String> = ["tcp:21", "tcp:22", "tcp:80", "udp:53"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    want.push(format!("udp:{DNS_ALT_PORT}"));
    want.push(format!("udp:{NTP_PORT}"));
    want.extend([H2_PORT, REDIS_PORT, SMTP_PORT, WEBAPP_PORT].map(|p| format!("tcp:{p}")));
    want.extend(
        IPERF_PORTS
            .iter()
            .chain(&WEB_ALT_PORTS)
            .chain(&[LINE_PORT, FETCH_PORT])
            .chain(&SMB_PORTS)
            .map(|p| format!("tcp:{p}")),
    );
    want
}

/// Waits until every namespace listens on its ports (`proto:port`), or fails with the log of a
/// service that exited.
fn wait_listening(want: &[(&Netns, Vec<String>)], services: &mut Services) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        services.check_running()?;
        let mut missing = Vec::new();
        for (ns, ports) in want {
            let ss = ns.run("ss", &["-Hlntu"])?;
            let listening: Vec<String> = ss
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let port = f.get(4)?.rsplit(':').next()?;
                    Some(format!("{}:{port}", f.first()?))
                })
                .collect();
            missing.extend(
                ports
                    .iter()
                    .filter(|w| !listening.contains(w))
                    .map(|w| format!("{}: {w}", ns.name)),
            );
        }
        if missing.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("services not listening after 20 s: {missing:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lab's accounts (root, service users and the lab user with a known password), PAM
/// config for vsftpd, the sshd host key and a client key the lab user accepts. Returns the
/// client key's path.
fn accounts(dir: &Path) -> anyhow::Result<PathBuf> {
    let etc = dir.join("etc");
    mkdir(&etc, 0o755)?;
    let home = dir.join("home").join(LAB_USER);
    mkdir(&home, 0o755)?;
    // The lab user owns its home so that an interactive session behaves normally.
    std::os::unix::fs::chown(&home, Some(LAB_UID), Some(LAB_UID))?;
    let home_s = path_str(&home)?;
    write(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:root:/root:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
             sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n\
             ftp:x:101:101:ftp:/srv/ftp:/usr/sbin/nologin\n\
             {LAB_USER}:x:{LAB_UID}:{LAB_UID}:lab:{home_s}:/bin/sh\n"
        ),
    )?;
    write(
        &etc.join("group"),
        &format!("root:x:0:\nnogroup:x:65534:\nftp:x:101:\n{LAB_USER}:x:{LAB_UID}:\n"),
    )?;
    // A fixed salt keeps the file identical between runs.
    let hash =
        output(Command::new("openssl").args(["passwd", "-6", "-salt", "dlabsalt", LAB_PASSWORD]))?;
    let shadow = etc.join("shadow");
    write(
        &shadow,
        &format!(
            "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n\
             ftp:*:19000:0:99999:7:::\n{LAB_USER}:{}:19000:0:99999:7:::\n",
            hash.trim()
        ),
    )?;
    fs::set_permissions(&shadow, fs::Permissions::from_mode(0o600))?;
    let pam = etc.join("pam.d");
    mkdir(&pam, 0o755)?;
    write(
        &pam.join("dlab-vsftpd"),
        "auth required pam_unix.so\naccount required pam_unix.so\nsession required pam_unix.so\n",
    )?;
    for key in ["host_key", "client_key"] {
        let p = dir.join(key);
        if !p.exists() {
            output(Command::new("ssh-keygen").args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "dlab",
                "-f",
                &path_str(&p)?,
            ]))?;
        }
    }
    fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
    // What scp and rsync sessions fetch: the site's package files, from the lab user's home.
    let files = home.join("files");
    if !files.exists() {
        std::os::unix::fs::symlink(dir.join("www").join("files"), &files)?;
    }
    // sshd's privilege-separation directory is compiled in; the Debian service creates it at
    // boot, which never happened here.
    mkdir(Path::new("/run/sshd"), 0o755)?;
    Ok(dir.join("client_key"))
}

/// `argv` inside the host's network namespace and a private mount namespace in which the
/// lab's account and PAM files (`dir/etc`: passwd, shadow, group, pam.d) lie over the host's
/// `/etc`: a read-only overlay, the lab's files on top. Not bind mounts of the four files: a
/// package installed on the host during a run replaces `/etc/passwd` (a new file renamed over
/// the old one), and the kernel then detaches mounts on the replaced file in every namespace,
/// so the services lost the lab user halfway through a recording. Renames inside `/etc` leave a
/// mount on `/etc` itself alone, and the lab's files stay on top.
fn with_lab_accounts(ns: &Netns, dir: &Path, argv: &[&str]) -> Command {
    let script = format!(
        "mount -t overlay dlab-etc -o 'lowerdir={}:/etc' /etc && exec \"$@\"",
        dir.join("etc").display()
    );
    let mut c = ns.cmd("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(script)
        .arg("sh")
        .args(argv);
    c
}

fn nginx_conf(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = path_str(dir)?;
    let ngx = dir.join("nginx");
    mkdir(&ngx, 0o755)?;
    write(
        &dir.join("htpasswd"),
        &format!("{LAB_USER}:{{PLAIN}}{LAB_PASSWORD}\n"),
    )?;
    // The form login: nginx cannot read a request body in `if`, but proxy_pass reads it before
    // building the upstream request, so a map over $request_body becomes a header that an
    // internal server answers from.
    let body = format!("user={LAB_USER}&pass={LAB_PASSWORD}");
    let conf = format!(
        r#"user root;
worker_processes 1;
pid {d}/nginx/nginx.pid;
error_log {d}/nginx/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    keepalive_timeout 15s;
    client_body_temp_path {d}/nginx/body;
    proxy_temp_path {d}/nginx/proxy;
    fastcgi_temp_path {d}/nginx/fastcgi;
    uwsgi_temp_path {d}/nginx/uwsgi;
    scgi_temp_path {d}/nginx/scgi;
    types {{ text/html html; application/octet-stream deb; }}
    map $request_body $login_ok {{ "{body}" "yes"; default "no"; }}
    server {{
        listen 80;
        listen [::]:80;
        listen 8080;
        listen [::]:8080;
        listen 8443 ssl;
        listen [::]:8443 ssl;
        listen {H2_PORT} ssl http2;
        listen [::]:{H2_PORT} ssl http2;
        ssl_certificate {d}/tls/cert.pem;
        ssl_certificate_key {d}/tls/key.pem;
        root {d}/www;
        location /private/ {{
            auth_basic "lab";
            auth_basic_user_file {d}/htpasswd;
        }}
        location = /login {{
            proxy_pass http://127.0.0.1:8081/check;
            proxy_set_header X-Login $login_ok;
        }}
        location /app {{
            proxy_pass http://127.0.0.1:{WEBAPP_PORT};
            proxy_set_header Host $host;
        }}
    }}
    server {{
        listen 127.0.0.1:8081;
        location = /check {{
            default_type text/html;
            if ($http_x_login = "yes") {{ return 200 "welcome\n"; }}
            return 200 "login failed\n";
        }}
    }}
}}
"#
    );
    let p = dir.join("nginx.conf");
    write(&p, &conf)?;
    Ok(p)
}

/// A self-signed certificate for nginx's TLS port (clients use `-k`), made at lab start.
fn tls_cert(dir: &Path) -> anyhow::Result<()> {
    let tls = dir.join("tls");
    mkdir(&tls, 0o755)?;
    let v = victim_spec();
    self_signed(
        "lab.test",
        &format!("DNS:lab.test,IP:{},IP:{}", v.v4, v.v6),
        &tls.join("cert.pem"),
        &tls.join("key.pem"),
    )
}

/// A self-signed P-256 certificate for `cn` with subjectAltName `san`.
fn self_signed(cn: &str, san: &str, cert: &Path, key: &Path) -> anyhow::Result<()> {
    output(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        &format!("/CN={cn}"),
        "-addext",
        &format!("subjectAltName={san}"),
        "-keyout",
        &path_str(key)?,
        "-out",
        &path_str(cert)?,
    ]))?;
    Ok(())
}

/// The line service's script (socat runs one per connection): "ok <line>" for every request
/// line, until the client closes its side.
fn line_service(dir: &Path) -> anyhow::Result<PathBuf> {
    let p = dir.join("line-service.sh");
    write(
        &p,
        "# one reply line per request line, until the client closes its side\n\
         while IFS= read -r line; do printf 'ok %s\\n' \"$line\"; done\n",
    )?;
    Ok(p)
}

/// The document service's script: one request line "GET <path>" (`/` or `/p/<n>.html` of the
/// site), answered with the page, or "not found"; then the connection closes.
fn fetch_service(dir: &Path) -> anyhow::Result<PathBuf> {
    let www = path_str(&dir.join("www"))?;
    let p = dir.join("fetch-service.sh");
    write(
        &p,
        &format!(
            r#"# "GET <path>": the site's page, or "not found"; then close
cd '{www}' || exit 1
read -r method path rest
f=
case "$path" in
    /) f=index.html ;;
    /p/*.html)
        n=${{path#/p/}}
        n=${{n%.html}}
        case "$n" in
            ''|*[!0-9]*) ;;
            *) f=p/$n.html ;;
        esac ;;
esac
if [ -n "$f" ] && [ -f "$f" ]; then cat "$f"; else echo "not found"; fi
"#
        ),
    )?;
    Ok(p)
}

fn redis_conf(dir: &Path) -> anyhow::Result<PathBuf> {
    let data = dir.join("redis");
    mkdir(&data, 0o755)?;
    let p = dir.join("redis.conf");
    write(
        &p,
        &format!(
            "bind 0.0.0.0 ::\nport {REDIS_PORT}\nprotected-mode no\ndaemonize no\nsave \"\"\n\
             appendonly no\ndir {}\nlogfile \"\"\nloglevel warning\ntimeout 0\n",
            path_str(&data)?
        ),
    )?;
    Ok(p)
}

/// chronyd as an NTP server with no upstream (its own clock, at stratum 8), no command socket.
fn chrony_conf(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = dir.join("chrony");
    mkdir(&d, 0o755)?;
    let d = path_str(&d)?;
    let p = dir.join("chrony.conf");
    write(
        &p,
        &format!(
            "port {NTP_PORT}\nallow all\nlocal stratum 8\ncmdport 0\nbindcmdaddress /\n\
             pidfile {d}/chronyd.pid\ndriftfile {d}/drift\n"
        ),
    )?;
    Ok(p)
}

fn sshd_conf(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = path_str(dir)?;
    let p = dir.join("sshd_config");
    write(
        &p,
        &format!(
            "Port 22\nListenAddress 0.0.0.0\nListenAddress ::\nHostKey {d}/host_key\n\
             PidFile none\nUsePAM no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
             PermitRootLogin no\nStrictModes no\nUseDNS no\nAuthorizedKeysFile {d}/authorized_keys\n\
             MaxStartups 100:30:200\nMaxAuthTries 6\nLogLevel ERROR\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n"
        ),
    )?;
    Ok(p)
}

fn vsftpd_conf(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = path_str(dir)?;
    mkdir(&dir.join("empty"), 0o755)?;
    let p = dir.join("vsftpd.conf");
    write(
        &p,
        &format!(
            "listen=YES\nlisten_ipv6=NO\nbackground=NO\nanonymous_enable=NO\nlocal_enable=YES\n\
             write_enable=NO\npam_service_name=dlab-vsftpd\nsecure_chroot_dir={d}/empty\n\
             xferlog_enable=NO\nseccomp_sandbox=NO\ncheck_shell=NO\ndelay_failed_login=0\n\
             max_login_fails=3\npasv_min_port=40000\npasv_max_port=40100\n"
        ),
    )?;
    Ok(p)
}

/// The second vsftpd: the victim's IPv6 address only, 3 s more delay after each failed login,
/// its own passive ports.
fn vsftpd6_conf(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = path_str(dir)?;
    let v6 = victim_spec().v6;
    let p = dir.join("vsftpd6.conf");
    write(
        &p,
        &format!(
            "listen=NO\nlisten_ipv6=YES\nlisten_address6={v6}\nbackground=NO\nanonymous_enable=NO\n\
             local_enable=YES\nwrite_enable=NO\npam_service_name=dlab-vsftpd\nsecure_chroot_dir={d}/empty\n\
             xferlog_enable=NO\nseccomp_sandbox=NO\ncheck_shell=NO\ndelay_failed_login=3\n\
             max_login_fails=3\npasv_min_port=40101\npasv_max_port=40200\n"
        ),
    )?;
    Ok(p)
}

/// A dnsmasq config answering only from `extra` lines (no upstream, no /etc/hosts): nothing is
/// ever forwarded out of the lab.
fn dnsmasq_conf(path: &Path, host: &LabHost, extra: &[&str]) -> anyhow::Result<String> {
    let mut conf = format!(
        "no-resolv\nno-hosts\nno-poll\nbind-interfaces\nlisten-address={}\nlisten-address={}\n\
         user=root\nno-daemon\npid-file=\ndns-forward-max=1000\n",
        host.spec.v4, host.spec.v6
    );
    for l in extra {
        conf.push_str(l);
        conf.push('\n');
    }
    write(path, &conf)?;
    path_str(path)
}

/// What a sink does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SinkKind {
    /// Answer 200 after the request headers (and body).
    Http,
    /// Read to EOF, then answer "ok".
    Raw,
    /// A stratum mining pool: answer each JSON-RPC line (subscribe, authorize, submit, ...)
    /// and push a new job (`mining.notify`) every 10 to 40 s, until the miner closes.
    Stratum,
}

/// A TCP listener inside a lab namespace, on a thread of this process (setns applies to the
/// calling thread only).
struct Sink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start(ns: &Netns, port: u16, kind: SinkKind) -> anyhow::Result<Self> {
        let handle = fs::File::open(ns.path())
            .with_context(|| format!("cannot open {}", ns.path().display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let name = ns.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sink-{port}"))
            .spawn(move || {
                // SAFETY: setns on this thread only, with a valid namespace fd.
                let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    let _ = tx.send(Err(format!(
                        "setns into {name}: {}",
                        std::io::Error::last_os_error()
                    )));
                    return;
                }
                let any = SocketAddr::new(IpAddr::from([0u16; 8]), port);
                let listener = match TcpListener::bind(any).and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok(l)
                }) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(format!("{name}: listen on {port}: {e}")));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                let mut accepted = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            accepted += 1;
                            let (stop, seed) = (flag.clone(), u64::from(port) << 32 | accepted);
                            std::thread::spawn(move || match kind {
                                SinkKind::Http => serve(s, true),
                                SinkKind::Raw => serve(s, false),
                                SinkKind::Stratum => serve_stratum(s, &stop, seed),
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => bail!("sink: {e}"),
            Err(_) => bail!("sink thread for port {port} died"),
        }
    }
}

fn serve(mut s: TcpStream, http: bool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 64 * 1024];
    let mut head = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if http {
                    head.extend_from_slice(&buf[..n]);
                    if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        let want = content_length(&head[..end]);
                        let mut have = head.len() - end - 4;
                        while have < want {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => have += n,
                            }
                        }
                        break;
                    }
                    if head.len() > 64 * 1024 {
                        break;
                    }
                }
            }
        }
    }
    let reply: &[u8] = if http {
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
    } else {
        b"ok\n"
    };
    let _ = s.write_all(reply);
}

/// One miner's connection to the stratum pool (see [`SinkKind::Stratum`]). Ends when the miner
/// closes, the lab stops, or after 15 minutes.
fn serve_stratum(mut s: TcpStream, stop: &AtomicBool, seed: u64) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(250)));
    let mut rng = inputs::Rng::new(seed);
    let hex = |n: usize, rng: &mut inputs::Rng| -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[rng.below(16) as usize]))
            .collect()
    };
    let started = Instant::now();
    let mut next_job: Option<Instant> = None;
    let mut job = 0u64;
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(900) {
        let mut out = String::new();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(req) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            let id = req["id"].clone();
            let result = match req["method"].as_str().unwrap_or_default() {
                "mining.subscribe" => {
                    next_job = Some(Instant::now());
                    serde_json::json!([
                        [
                            ["mining.set_difficulty", hex(8, &mut rng)],
                            ["mining.notify", hex(8, &mut rng)]
                        ],
                        hex(8, &mut rng),
                        4
                    ])
                }
                "mining.authorize" | "mining.submit" | "mining.extranonce.subscribe" => {
                    serde_json::json!(true)
                }
                _ => serde_json::json!({ "status": "KEEPALIVED" }),
            };
            out.push_str(
                &serde_json::json!({ "id": id, "result": result, "error": null }).to_string(),
            );
            out.push('\n');
        }
        if next_job.is_some_and(|t| Instant::now() >= t) {
            if job == 0 {
                out.push_str(
                    "{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[16384]}\n",
                );
            }
            job += 1;
            let notify = serde_json::json!({
                "id": null,
                "method": "mining.notify",
                "params": [
                    format!("{job:x}"), hex(64, &mut rng), hex(116, &mut rng), hex(60, &mut rng),
                    [hex(64, &mut rng), hex(64, &mut rng)], "20000000", "1703a30c",
                    hex(8, &mut rng), job % 4 == 1
                ]
            });
            out.push_str(&notify.to_string());
            out.push('\n');
            next_job = Some(Instant::now() + Duration::from_millis(10_000 + rng.below(30_000)));
        }
        if !out.is_empty() && s.write_all(out.as_bytes()).is_err() {
            break;
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_read_from_headers() {
        assert_eq!(
            content_length(b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 12"),
            12
        );
        assert_eq!(content_length(b"GET / HTTP/1.1\r\nHost: x"), 0);
    }
}
