//! tracefs: where it is mounted, and whether a tracepoint's record layout is the one the eBPF
//! programs were written against.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};

/// Where tracefs may be mounted (the same places aya looks).
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The mounted tracefs, or an error that says how to mount it.
pub fn find() -> anyhow::Result<PathBuf> {
    for c in CANDIDATES {
        let p = Path::new(c);
        if p.join("events").is_dir() {
            return Ok(p.to_path_buf());
        }
    }
    bail!(
        "tracefs is not mounted (looked in {}): mount it with `mount -t tracefs nodev /sys/kernel/tracing` \
         or run `cargo xtask setup`",
        CANDIDATES.join(" and ")
    )
}

/// One field of a tracepoint record as its `format` file describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// Parses the fields of a tracepoint `format` file.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?.split(';').next()?;
            // "unsigned short common_type" / "__u8 saddr[4]" / "__data_loc char[] filename"
            let name = decl.split_whitespace().last()?;
            let name = name.split('[').next()?.to_string();
            let num = |key: &str| -> Option<usize> {
                line.split(';')
                    .find_map(|part| part.trim().strip_prefix(key))
                    .and_then(|v| v.trim().parse().ok())
            };
            Some(Field {
                name,
                offset: num("offset:")?,
                size: num("size:")?,
            })
        })
        .collect()
}

/// Checks that tracepoint `category/name` has each `(field, offset, size)` the program reads.
pub fn check_layout(
    tracefs: &Path,
    category: &str,
    name: &str,
    expected: &[(&str, usize, usize)],
) -> anyhow::Result<()> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {category}/{name} is not available ({})",
            path.display()
        )
    })?;
    let fields = parse_format(&text);
    for &(field, offset, size) in expected {
        match fields.iter().find(|f| f.name == field) {
            Some(f) if f.offset == offset && f.size == size => {}
            Some(f) => bail!(
                "tracepoint {category}/{name}: field {field} is at offset {} size {}, the program expects offset {offset} size {size}",
                f.offset,
                f.size
            ),
            None => bail!("tracepoint {category}/{name} has no field {field}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXEC: &str = "name: sched_process_exec\nID: 318\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\
        \tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n\n\
        print fmt: \"filename=%s\"\n";

    #[test]
    fn parses_fields_with_arrays_and_data_loc() {
        let f = parse_format(EXEC);
        assert_eq!(f.len(), 4);
        assert_eq!(
            f[1],
            Field {
                name: "filename".into(),
                offset: 8,
                size: 4
            }
        );
        assert_eq!(
            f[3],
            Field {
                name: "saddr".into(),
                offset: 32,
                size: 4
            }
        );
    }

    #[test]
    fn layout_mismatch_is_reported() {
        let dir = std::env::temp_dir().join(format!("detector-tracefs-{}", std::process::id()));
        let tp = dir.join("events/sched/sched_process_exec");
        fs::create_dir_all(&tp).unwrap();
        fs::write(tp.join("format"), EXEC).unwrap();
        assert!(check_layout(&dir, "sched", "sched_process_exec", &[("pid", 12, 4)]).is_ok());
        let err = check_layout(&dir, "sched", "sched_process_exec", &[("pid", 16, 4)]).unwrap_err();
        assert!(err.to_string().contains("offset 12"), "{err}");
        let err =
            check_layout(&dir, "sched", "sched_process_exec", &[("old_pid", 16, 4)]).unwrap_err();
        assert!(err.to_string().contains("no field old_pid"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
