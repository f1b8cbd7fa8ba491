//! Requests in, typed answers out: `detector status`, and the dismissals the operator makes
//! and withdraws. Incidents and model history go to the adaptation room.

use std::path::{Path, PathBuf};

use tracing::{error, info};

use crate::{
    control::{self, DismissalList, DismissalSummary, Dismissed, Response, Withdrawn},
    detect::Detector,
    dismissals::{self, Dismissal, Dismissals},
    features::LIVE_COUNT,
    incidents::Selector,
};

/// The dismissals in force, on disk and in the detector.
pub struct DismissalBook {
    set: Dismissals,
    path: PathBuf,
    /// The file could not be read: kept as it is (not overwritten by the next dismissal) and
    /// reported; no dismissal applies until it is fixed or removed.
    broken: Option<String>,
}

impl DismissalBook {
    /// The dismissals saved in the state directory, put in force on `detector`.
    pub fn open(state_dir: &Path, detector: &mut Detector) -> Self {
        let path = dismissals::path(state_dir);
        let (set, broken) = match Dismissals::load(&path) {
            Ok(d) => (d, None),
            Err(e) => {
                error!("{e:#}; no dismissals apply until the file is fixed or removed");
                (Dismissals::default(), Some(format!("{e:#}")))
            }
        };
        if !set.dismissals.is_empty() {
            info!(
                dismissals = set.dismissals.len(),
                "dismissed patterns restored from the state directory"
            );
        }
        detector.set_dismissed(set.exemplars());
        Self { set, path, broken }
    }

    /// How many are in force.
    pub fn len(&self) -> usize {
        self.set.dismissals.len()
    }

    /// `dismiss`: the recent alerts `sel` picks were benign; patterns like them are silenced.
    pub fn dismiss(&mut self, detector: &mut Detector, sel: &Selector, now_unix: u64) -> Response {
        if let Some(e) = &self.broken {
            return control::error(format!("dismissals are off: {e}"));
        }
        let id = format!("dismissal-{now_unix:x}");
        let threshold = detector.policy.alert_threshold();
        let dismissal =
            match Dismissal::select(detector.recent(), sel, threshold, id.clone(), now_unix) {
                Ok(d) => d,
                Err(e) => return control::error(format!("{e:#}")),
            };
        let (flows, selected) = (dismissal.flows, dismissal.selected.clone());
        let mut next = self.set.clone();
        next.add(dismissal);
        if let Err(e) = self.put(next, detector) {
            error!("{e:#}");
            return control::error(format!("{e:#}"));
        }
        info!(%id, flows, %selected, "alerts dismissed as benign: patterns like these are no longer raised");
        Response::Dismissed(Dismissed {
            ok: true,
            dismissal: id,
            flows,
            dismissals: self.len(),
        })
    }

    /// `undismiss`: alerts like the dismissal's flows are raised again.
    pub fn undismiss(&mut self, detector: &mut Detector, id: &str) -> Response {
        if let Some(e) = &self.broken {
            return control::error(format!("dismissals are off: {e}"));
        }
        let mut next = self.set.clone();
        if !next.remove(id) {
            return control::error(format!(
                "no dismissal {id} (detector incident dismissals lists them)"
            ));
        }
        if let Err(e) = self.put(next, detector) {
            error!("{e:#}");
            return control::error(format!("{e:#}"));
        }
        info!(%id, "dismissal withdrawn: alerts like its flows are raised again");
        Response::Withdrawn(Withdrawn {
            ok: true,
            withdrawn: id.to_string(),
            dismissals: self.len(),
        })
    }

    /// `dismissals`: those in force, oldest first, without their exemplars.
    pub fn list(&self) -> Response {
        Response::Dismissals(DismissalList {
            ok: true,
            dismissals: self
                .set
                .dismissals
                .iter()
                .map(|d| DismissalSummary {
                    id: d.id.clone(),
                    created_unix_ns: d.created_unix_ns,
                    selected: d.selected.clone(),
                    flows: d.flows,
                    exemplars: d.exemplars.len() / LIVE_COUNT,
                })
                .collect(),
        })
    }

    /// Puts `next` in force: on disk first, then in the detector. Not in force unless saved: a
    /// dismissal lost at the next restart would silently bring its alerts back (a withdrawal,
    /// its silence); on error the old set stays, on disk and in force.
    fn put(&mut self, next: Dismissals, detector: &mut Detector) -> anyhow::Result<()> {
        next.save(&self.path)?;
        self.set = next;
        detector.set_dismissed(self.set.exemplars());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tests::{detector_with_a_scan, temp_dir};

    #[test]
    fn a_dismissal_is_saved_listed_and_withdrawn() {
        let dir = temp_dir("dismiss");
        let (mut det, scanner) = detector_with_a_scan();
        let mut book = DismissalBook::open(&dir, &mut det);
        assert_eq!(book.len(), 0);
        let sel = Selector::from_request(vec![], Some(&scanner), None, None).unwrap();
        let Response::Dismissed(d) = book.dismiss(&mut det, &sel, 77) else {
            panic!("not dismissed")
        };
        assert!(d.flows > 0);
        let Response::Dismissals(list) = book.list() else {
            panic!()
        };
        assert_eq!(list.dismissals.len(), 1);
        // Saved: another agent on the same state finds it.
        let (mut det2, _) = detector_with_a_scan();
        assert_eq!(DismissalBook::open(&dir, &mut det2).len(), 1);
        assert!(matches!(
            book.undismiss(&mut det, "nope"),
            Response::Failure(_)
        ));
        assert!(matches!(
            book.undismiss(&mut det, &d.dismissal),
            Response::Withdrawn(_)
        ));
        assert_eq!(book.len(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_damaged_file_turns_dismissals_off_and_is_kept() {
        let dir = temp_dir("dismiss-bad");
        let path = dismissals::path(&dir);
        std::fs::write(&path, b"not json").unwrap();
        let (mut det, scanner) = detector_with_a_scan();
        let mut book = DismissalBook::open(&dir, &mut det);
        let sel = Selector::from_request(vec![], Some(&scanner), None, None).unwrap();
        let Response::Failure(f) = book.dismiss(&mut det, &sel, 1) else {
            panic!("dismissed over a damaged file")
        };
        assert!(f.error.contains("dismissals are off"), "{}", f.error);
        assert_eq!(std::fs::read(&path).unwrap(), b"not json");
        let _ = std::fs::remove_dir_all(dir);
    }
}
