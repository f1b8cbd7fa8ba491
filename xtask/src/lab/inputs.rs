//! Generated data: the victim's web site (fixed), and the per-session files scenarios name with
//! placeholders (`{urls}`, `{passwords}`, ...), all from seeds so that two runs are alike.

use std::{
    fs,
    io::Write,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::Context;

/// The lab user on the victim (ssh, ftp, web basic auth and form login).
pub const LAB_USER: &str = "lab";
/// Its password: the last entry of `{passwords}`, so brute force tries the whole list first.
pub const LAB_PASSWORD: &str = "tr0ub4dor-77";
/// Pages of the victim's site: /p/<i>.html.
pub const PAGES: usize = 400;
/// Large files: /files/pkg-<i>.deb, i in 1..=BIG_FILES.
pub const BIG_FILES: usize = 4;
const BIG_FILE_BYTES: usize = 8 << 20;
const EXFIL_BYTES: usize = 24 << 20;
/// Lines of `{pauses}`.
const PAUSES: usize = 400;
/// The site is the same in every lab run.
const SITE_SEED: u64 = 0x005e_ed0f_5173;

/// splitmix64: small, fast and enough for test data (no cryptographic use).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0); the tiny modulo bias does not matter here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "alpha", "bridge", "config", "daemon", "engine", "filter", "gateway", "host", "index",
    "kernel", "ledger", "mirror", "network", "object", "packet", "queue", "router", "socket",
    "tunnel", "update", "vector", "window", "archive", "backup", "cluster", "deploy", "export",
    "firmware", "graph", "handler", "invoice", "journal", "metrics", "notice", "policy", "report",
];

/// Writes the victim's web root: an index linking every page, pages of 1–60 KB, a login form,
/// a basic-auth area and large package-like files.
pub fn write_site(www: &Path) -> anyhow::Result<()> {
    let mut rng = Rng::new(SITE_SEED);
    for d in ["p", "files", "private"] {
        fs::create_dir_all(www.join(d))?;
    }
    let mut index = String::from("<html><head><title>lab</title></head><body><h1>lab</h1>\n");
    for i in 0..PAGES {
        index.push_str(&format!("<a href=\"/p/{i}.html\">page {i}</a><br>\n"));
        let size = 1024 + rng.below(59 * 1024) as usize;
        let mut page = format!("<html><head><title>page {i}</title></head><body><p>\n");
        while page.len() < size {
            page.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
            page.push(if rng.below(12) == 0 { '\n' } else { ' ' });
        }
        // Two links onward, so a recursive crawler finds the pages too.
        page.push_str(&format!(
            "</p><a href=\"/p/{}.html\">next</a> <a href=\"/p/{}.html\">other</a></body></html>\n",
            (i + 1) % PAGES,
            rng.below(PAGES as u64)
        ));
        fs::write(www.join(format!("p/{i}.html")), page)?;
    }
    index.push_str("<a href=\"/login.html\">login</a></body></html>\n");
    fs::write(www.join("index.html"), index)?;
    fs::write(
        www.join("login.html"),
        "<html><body><form method=\"post\" action=\"/login\">\
         <input name=\"user\"><input name=\"pass\" type=\"password\">\
         <input type=\"submit\"></form></body></html>\n",
    )?;
    fs::write(
        www.join("private/index.html"),
        "<html><body>private area</body></html>\n",
    )?;
    let mut buf = vec![0u8; BIG_FILE_BYTES];
    for i in 1..=BIG_FILES {
        rng.fill(&mut buf);
        fs::write(www.join(format!("files/pkg-{i}.deb")), &buf)?;
    }
    Ok(())
}

/// Writes an SMB share's files (the same on every host but for the seed): a few documents of
/// 40 KB to 1.5 MB of seeded bytes and a text file, so that `ls`, `get` and `mget` have
/// something to move. The folder is made writable for the lab user (uploads).
pub fn write_share(dir: &Path, seed: u64) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut rng = Rng::new(seed);
    let names = [
        "report-q3.pdf",
        "budget.xlsx",
        "minutes.docx",
        "inventory.csv",
    ];
    for name in names {
        let mut buf = vec![0u8; 40 * 1024 + rng.below(1500 * 1024) as usize];
        rng.fill(&mut buf);
        fs::write(dir.join(name), &buf)?;
    }
    fs::write(
        dir.join("readme.txt"),
        "shared documents: reports, budgets, minutes\n",
    )?;
    Ok(())
}

/// What per-session files depend on.
pub struct SessionContext<'a> {
    pub dir: &'a Path,
    pub seed: u64,
    pub victim: Ipv4Addr,
    pub victim6: Ipv6Addr,
    /// The lab's client key (`{key}`).
    pub key: &'a Path,
}

fn page_urls(base: &str, seed: u64) -> Vec<String> {
    let mut pages: Vec<usize> = (0..PAGES).collect();
    Rng::new(seed).shuffle(&mut pages);
    let mut v = vec![format!("{base}/")];
    v.extend(pages.iter().map(|i| format!("{base}/p/{i}.html")));
    v
}

fn lines(v: &[String]) -> String {
    let mut s = v.join("\n");
    s.push('\n');
    s
}

/// The file behind a file placeholder, written into the session folder on first use; None for
/// a name that is not a file placeholder.
pub fn file_placeholder(name: &str, ctx: &SessionContext) -> anyhow::Result<Option<PathBuf>> {
    if name == "key" {
        return Ok(Some(ctx.key.to_path_buf()));
    }
    let path = ctx.dir.join(format!("{name}.txt"));
    if path.exists() {
        return Ok(Some(path));
    }
    let v4 = format!("http://{}", ctx.victim);
    let v6 = format!("http://[{}]", ctx.victim6);
    let curl = |urls: Vec<String>| {
        urls.iter()
            .map(|u| format!("url = \"{u}\"\noutput = \"/dev/null\"\n"))
            .collect::<String>()
    };
    let mut rng = Rng::new(ctx.seed);
    let text = match name {
        "urls" => lines(&page_urls(&v4, ctx.seed)),
        "urls6" => lines(&page_urls(&v6, ctx.seed)),
        "curl_urls" => curl(page_urls(&v4, ctx.seed)),
        // Paths only, so a scenario can put any scheme, address and port in front.
        "pages" => lines(&page_urls("", ctx.seed)),
        "pauses" => {
            // Think times in seconds: mostly short, some longer, a few long. Irregular on
            // purpose: a benign client repeating a request is not a beacon.
            let v: Vec<String> = (0..PAUSES)
                .map(|_| {
                    let ms = match rng.below(100) {
                        0..=59 => 100 + rng.below(500),
                        60..=89 => 600 + rng.below(1200),
                        _ => 1800 + rng.below(2200),
                    };
                    format!("{}.{:03}", ms / 1000, ms % 1000)
                })
                .collect();
            lines(&v)
        }
        "curl_urls6" => curl(page_urls(&v6, ctx.seed)),
        "names" => {
            let mut v = Vec::new();
            for w in WORDS {
                for (t, sub) in [("A", "www"), ("AAAA", "www"), ("A", "api"), ("MX", "mail")] {
                    v.push(format!("{sub}.{w}.lab.test {t}"));
                }
            }
            rng.shuffle(&mut v);
            lines(&v)
        }
        "tunnel_names" => {
            // Base32-like labels carrying "data": what DNS tunnelling tools put in queries.
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
            let mut v = Vec::new();
            for seq in 0..400 {
                let mut label = |n: usize| -> String {
                    (0..n)
                        .map(|_| ALPHABET[rng.below(32) as usize] as char)
                        .collect()
                };
                let (a, b) = (label(50), label(30));
                v.push(format!("{a}.{b}.{seq}.t.c2.test TXT"));
            }
            lines(&v)
        }
        "users" => lines(&["admin", "root", "test", LAB_USER].map(String::from)),
        "passwords" => {
            let mut v: Vec<String> = [
                "123456", "password", "admin", "qwerty", "letmein", "welcome", "monkey", "dragon",
                "master", "sunshine", "princess", "football", "shadow", "baseball", "trustno1",
                "iloveyou", "superman", "hello123", "changeme", "root", "toor", "passw0rd",
                "abc123", "secret", "server", "linux", "ubuntu", "debian", "guest", "login",
            ]
            .map(String::from)
            .to_vec();
            rng.shuffle(&mut v);
            v.push(LAB_PASSWORD.to_string());
            lines(&v)
        }
        "exfil_file" => {
            let path = ctx.dir.join("exfil.bin");
            let mut f = fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..EXFIL_BYTES >> 20 {
                rng.fill(&mut buf);
                f.write_all(&buf)?;
            }
            return Ok(Some(path));
        }
        _ => return Ok(None),
    };
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_reproducible_and_seed_dependent() {
        let base = std::env::temp_dir().join(format!("xtask-inputs-{}", std::process::id()));
        let read = |seed: u64, sub: &str, name: &str| {
            let dir = base.join(sub);
            fs::create_dir_all(&dir).unwrap();
            let ctx = SessionContext {
                dir: &dir,
                seed,
                victim: Ipv4Addr::new(10, 77, 0, 2),
                victim6: "fd77::2".parse().unwrap(),
                key: Path::new("/k"),
            };
            let p = file_placeholder(name, &ctx).unwrap().unwrap();
            fs::read_to_string(p).unwrap()
        };
        for name in [
            "urls",
            "pages",
            "pauses",
            "names",
            "tunnel_names",
            "passwords",
        ] {
            assert_eq!(read(1, "a", name), read(1, "b", name), "{name}");
            assert_ne!(read(1, "c", name), read(2, "d", name), "{name}");
        }
        let pw = read(3, "e", "passwords");
        assert_eq!(pw.lines().last(), Some(LAB_PASSWORD));
        assert_eq!(read(3, "f", "urls").lines().count(), PAGES + 1);
        let pages = read(3, "g", "pages");
        assert_eq!(pages.lines().next(), Some("/"));
        assert!(pages.lines().skip(1).all(|p| p.starts_with("/p/")));
        for p in read(3, "h", "pauses").lines() {
            let s: f64 = p.parse().unwrap();
            assert!((0.1..4.0).contains(&s), "{p}");
        }
        let _ = fs::remove_dir_all(&base);
    }
}
