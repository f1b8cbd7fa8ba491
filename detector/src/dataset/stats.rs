//! Summary statistics of a dataset: rows and sessions per family and attack, session sizes,
//! and per-feature ranges with counts of non-finite values (none should survive an import).

use std::{collections::BTreeMap, fmt};

use serde::Serialize;

use super::Dataset;

/// Rows and sessions of one family.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FamilyStats {
    pub family: String,
    pub rows: u64,
    pub sessions: u64,
}

/// Rows and sessions of one attack label.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttackStats {
    pub attack: String,
    /// Family of its rows (families joined with '/' if its rows disagree).
    pub family: String,
    pub rows: u64,
    pub sessions: u64,
}

/// Range of one feature over its finite values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FeatureStats {
    pub name: String,
    /// `None` when the column has no finite value.
    pub min: Option<f32>,
    pub max: Option<f32>,
    pub mean: Option<f64>,
    pub nan: u64,
    pub inf: u64,
}

/// Rows per session.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SessionSizes {
    pub min: u64,
    pub median: u64,
    pub max: u64,
}

/// Everything `dataset stats` reports about one dataset.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetStats {
    /// File the dataset was read from, if any.
    pub file: Option<String>,
    pub source: String,
    pub rows: u64,
    pub n_features: usize,
    pub benign_rows: u64,
    pub attack_rows: u64,
    /// Sessions that have rows.
    pub sessions: u64,
    pub session_rows: SessionSizes,
    /// First and last timestamp, when the dataset has times.
    pub time_range_ns: Option<(u64, u64)>,
    pub digest: String,
    pub families: Vec<FamilyStats>,
    pub attacks: Vec<AttackStats>,
    pub features: Vec<FeatureStats>,
    /// Non-finite feature values in all columns.
    pub non_finite: u64,
}

/// Computes the statistics of `ds`. Dictionary indices out of range are counted under
/// `<invalid>` rather than trusted.
pub fn compute(ds: &Dataset, file: Option<&str>) -> DatasetStats {
    let rows = ds.rows();
    let name =
        |names: &[String], i: usize| names.get(i).cloned().unwrap_or_else(|| "<invalid>".into());
    let mut session_rows: Vec<u64> = vec![0; ds.session_names.len()];
    let mut fam: BTreeMap<String, (u64, Vec<u32>)> = BTreeMap::new();
    let mut att: BTreeMap<String, (u64, Vec<u32>, Vec<String>)> = BTreeMap::new();
    for i in 0..rows {
        let s = ds.session.get(i).copied().unwrap_or(0);
        if let Some(n) = session_rows.get_mut(s as usize) {
            *n += 1;
        }
        let f = name(
            &ds.family_names,
            ds.family.get(i).map_or(usize::MAX, |&v| v as usize),
        );
        let a = name(
            &ds.attack_names,
            ds.attack.get(i).map_or(usize::MAX, |&v| v as usize),
        );
        let e = fam.entry(f.clone()).or_default();
        e.0 += 1;
        e.1.push(s);
        let e = att.entry(a).or_default();
        e.0 += 1;
        e.1.push(s);
        if !e.2.contains(&f) {
            e.2.push(f);
        }
    }
    let distinct = |mut v: Vec<u32>| {
        v.sort_unstable();
        v.dedup();
        v.len() as u64
    };
    let mut families: Vec<FamilyStats> = fam
        .into_iter()
        .map(|(family, (rows, s))| FamilyStats {
            family,
            rows,
            sessions: distinct(s),
        })
        .collect();
    families.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.family.cmp(&b.family)));
    let mut attacks: Vec<AttackStats> = att
        .into_iter()
        .map(|(attack, (rows, s, f))| AttackStats {
            attack,
            family: f.join("/"),
            rows,
            sessions: distinct(s),
        })
        .collect();
    attacks.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.attack.cmp(&b.attack)));

    let mut used: Vec<u64> = session_rows.into_iter().filter(|&n| n > 0).collect();
    used.sort_unstable();
    let session_sizes = match (used.first(), used.last()) {
        (Some(&min), Some(&max)) => SessionSizes {
            min,
            median: used[used.len() / 2],
            max,
        },
        _ => SessionSizes::default(),
    };

    let n = ds.n_features();
    let mut features: Vec<FeatureStats> = ds
        .feature_names
        .iter()
        .map(|name| FeatureStats {
            name: name.clone(),
            min: None,
            max: None,
            mean: None,
            nan: 0,
            inf: 0,
        })
        .collect();
    let mut sums = vec![(0f64, 0u64); n];
    if n > 0 {
        for row in ds.features.chunks_exact(n) {
            for ((v, f), s) in row.iter().zip(&mut features).zip(&mut sums) {
                if v.is_nan() {
                    f.nan += 1;
                } else if v.is_infinite() {
                    f.inf += 1;
                } else {
                    f.min = Some(f.min.map_or(*v, |m| m.min(*v)));
                    f.max = Some(f.max.map_or(*v, |m| m.max(*v)));
                    s.0 += *v as f64;
                    s.1 += 1;
                }
            }
        }
    }
    for (f, (sum, count)) in features.iter_mut().zip(sums) {
        if count > 0 {
            f.mean = Some(sum / count as f64);
        }
    }
    let non_finite = features.iter().map(|f| f.nan + f.inf).sum();
    let benign_rows = ds.label.iter().filter(|&&l| l == 0).count() as u64;
    DatasetStats {
        file: file.map(str::to_string),
        source: ds.source.clone(),
        rows: rows as u64,
        n_features: n,
        benign_rows,
        attack_rows: rows as u64 - benign_rows,
        sessions: used.len() as u64,
        session_rows: session_sizes,
        time_range_ns: ds
            .timestamp_ns
            .as_ref()
            .and_then(|ts| Some((*ts.iter().min()?, *ts.iter().max()?))),
        digest: ds.digest(),
        families,
        attacks,
        features,
        non_finite,
    }
}

/// Rows and files per feature set over several datasets.
pub fn per_source(all: &[DatasetStats]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in all {
        let e = out.entry(s.source.clone()).or_default();
        e.0 += 1;
        e.1 += s.rows;
    }
    out
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v != 0.0 && (v.abs() >= 1e7 || v.abs() < 1e-3) => format!("{v:.4e}"),
        Some(v) => format!("{:.4}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string(),
    }
}

impl fmt::Display for DatasetStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            writeln!(f, "{file}")?;
        }
        writeln!(
            f,
            "  feature set {}: {} rows ({} benign, {} attack), {} features, {} sessions \
             (rows per session: min {}, median {}, max {})",
            self.source,
            self.rows,
            self.benign_rows,
            self.attack_rows,
            self.n_features,
            self.sessions,
            self.session_rows.min,
            self.session_rows.median,
            self.session_rows.max
        )?;
        if let Some((a, b)) = self.time_range_ns {
            writeln!(
                f,
                "  timestamps: {a} .. {b} ns ({:.1} h)",
                (b - a) as f64 / 3.6e12
            )?;
        }
        writeln!(f, "  sha256: {}", self.digest)?;
        writeln!(f)?;
        writeln!(f, "  {:<16} {:>10} {:>9}", "family", "rows", "sessions")?;
        for s in &self.families {
            writeln!(f, "  {:<16} {:>10} {:>9}", s.family, s.rows, s.sessions)?;
        }
        writeln!(f)?;
        let width = self
            .attacks
            .iter()
            .map(|a| a.attack.len())
            .max()
            .unwrap_or(0)
            .max(6);
        writeln!(
            f,
            "  {:<width$} {:<14} {:>10} {:>9}",
            "attack", "family", "rows", "sessions"
        )?;
        for a in &self.attacks {
            writeln!(
                f,
                "  {:<width$} {:<14} {:>10} {:>9}",
                a.attack, a.family, a.rows, a.sessions
            )?;
        }
        writeln!(f)?;
        let width = self
            .features
            .iter()
            .map(|x| x.name.len())
            .max()
            .unwrap_or(0)
            .max(7);
        writeln!(
            f,
            "  {:<width$} {:>12} {:>12} {:>12} {:>6} {:>6}",
            "feature", "min", "max", "mean", "nan", "inf"
        )?;
        for x in &self.features {
            writeln!(
                f,
                "  {:<width$} {:>12} {:>12} {:>12} {:>6} {:>6}",
                x.name,
                num(x.min.map(f64::from)),
                num(x.max.map(f64::from)),
                num(x.mean),
                x.nan,
                x.inf
            )?;
        }
        if self.non_finite > 0 {
            writeln!(
                f,
                "  warning: {} non-finite feature values (an import never writes any)",
                self.non_finite
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_families_attacks_sessions_and_ranges() {
        let mut ds = Dataset::new("t", vec!["a".into(), "b".into()]);
        ds.push(&[1.0, 10.0], 0, "benign", "normal", "s0", None);
        ds.push(&[3.0, f32::NAN], 1, "dos", "neptune", "s1", None);
        ds.push(&[5.0, f32::INFINITY], 1, "dos", "neptune", "s1", None);
        ds.push(&[-1.0, 20.0], 1, "dos", "smurf", "s2", None);
        let s = compute(&ds, Some("x.dds"));
        assert_eq!(
            (s.rows, s.benign_rows, s.attack_rows, s.sessions),
            (4, 1, 3, 3)
        );
        assert_eq!(
            s.session_rows,
            SessionSizes {
                min: 1,
                median: 1,
                max: 2
            }
        );
        assert_eq!(
            s.families[0],
            FamilyStats {
                family: "dos".into(),
                rows: 3,
                sessions: 2
            }
        );
        assert_eq!(s.attacks[0].attack, "neptune");
        assert_eq!(s.attacks[0].sessions, 1);
        assert_eq!(s.features[0].min, Some(-1.0));
        assert_eq!(s.features[0].max, Some(5.0));
        assert_eq!(s.features[0].mean, Some(2.0));
        assert_eq!((s.features[1].nan, s.features[1].inf), (1, 1));
        assert_eq!(s.features[1].mean, Some(15.0));
        assert_eq!(s.non_finite, 2);
        let text = s.to_string();
        assert!(text.contains("neptune"), "{text}");
        assert!(text.contains("2 non-finite"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["families"][0]["family"], "dos");
        assert_eq!(per_source(&[s.clone(), s])["t"], (2, 8));
    }
}
