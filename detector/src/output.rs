//! Where JSON lines go: stdout or a file (appended, never truncated).

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::Path,
};

use anyhow::Context;
use serde::Serialize;

/// A buffered JSON-lines writer.
pub struct JsonLines {
    out: BufWriter<Box<dyn Write + Send>>,
    /// Where the lines go, for error messages.
    pub target: String,
}

impl JsonLines {
    /// Writes to `path`, or to stdout when `path` is None or "-".
    pub fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            None => Ok(Self::stdout()),
            Some(p) if p == Path::new("-") => Ok(Self::stdout()),
            Some(p) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("cannot open output file {}", p.display()))?;
                Ok(Self {
                    out: BufWriter::with_capacity(1 << 16, Box::new(file)),
                    target: p.display().to_string(),
                })
            }
        }
    }

    fn stdout() -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, Box::new(io::stdout())),
            target: "stdout".into(),
        }
    }

    /// Appends one line.
    pub fn write<T: Serialize>(&mut self, value: &T) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, value)
            .and_then(|()| self.out.write_all(b"\n").map_err(serde_json::Error::io))
            .with_context(|| format!("cannot write to {}", self.target))
    }

    /// Pushes buffered lines out (called after each batch, so readers see records promptly).
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out
            .flush()
            .with_context(|| format!("cannot write to {}", self.target))
    }
}
