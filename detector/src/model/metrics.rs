//! Ranking metrics shared by training (validation AUC), the tests and the evaluation harness.

/// ROC-AUC of `scores` against 0/1 `labels` (ties count one half). `None` when one class is
/// absent or lengths differ.
pub fn roc_auc(scores: &[f32], labels: &[u8]) -> Option<f64> {
    if scores.len() != labels.len() {
        return None;
    }
    let n_pos = labels.iter().filter(|&&l| l == 1).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the positives' ranks, ties sharing the mean rank (Mann–Whitney U).
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        let pos = idx[i..=j].iter().filter(|&&k| labels[k] == 1).count();
        rank_sum += mean_rank * pos as f64;
        i = j + 1;
    }
    let np = n_pos as f64;
    Some((rank_sum - np * (np + 1.0) / 2.0) / (np * n_neg as f64))
}

/// Average precision (area under the precision–recall curve, step-wise). `None` without
/// positives.
pub fn pr_auc(scores: &[f32], labels: &[u8]) -> Option<f64> {
    if scores.len() != labels.len() {
        return None;
    }
    let n_pos = labels.iter().filter(|&&l| l == 1).count();
    if n_pos == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut ap) = (0usize, 0usize, 0f64);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let pos = idx[i..=j].iter().filter(|&&k| labels[k] == 1).count();
        tp += pos;
        fp += j + 1 - i - pos;
        ap += pos as f64 / n_pos as f64 * (tp as f64 / (tp + fp) as f64);
        i = j + 1;
    }
    Some(ap)
}

/// True-positive rate at the highest threshold whose false-positive rate is ≤ `max_fpr`
/// (alert when score > threshold). `None` when one class is absent.
pub fn tpr_at_fpr(scores: &[f32], labels: &[u8], max_fpr: f64) -> Option<f64> {
    let mut neg: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|(_, &l)| l == 0)
        .map(|(&s, _)| s)
        .collect();
    let n_pos = labels.iter().filter(|&&l| l == 1).count();
    if neg.is_empty() || n_pos == 0 || scores.len() != labels.len() {
        return None;
    }
    neg.sort_by(|a, b| b.total_cmp(a));
    // Allow floor(max_fpr · n) negatives above the threshold.
    let allowed = (max_fpr * neg.len() as f64).floor() as usize;
    let threshold = neg[allowed.min(neg.len() - 1)];
    let tp = scores
        .iter()
        .zip(labels)
        .filter(|(&s, &l)| l == 1 && s > threshold)
        .count();
    Some(tp as f64 / n_pos as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_known_rankings() {
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]), Some(0.0));
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &[0, 1, 0, 1]), Some(0.5));
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]), Some(0.75));
        assert_eq!(roc_auc(&[0.1, 0.2], &[1, 1]), None);
        assert_eq!(pr_auc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(
            tpr_at_fpr(&[0.1, 0.2, 0.15, 0.9], &[0, 0, 1, 1], 0.0),
            Some(0.5)
        );
    }
}
