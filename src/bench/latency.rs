//! Latency distributions: quantiles and the points of a CDF, from sorted samples (pure).

/// Points of each CDF kept in the report: enough for a smooth curve, bounded in the JSON.
pub const CDF_POINTS: usize = 200;

/// The `q` quantile (0 ≤ q ≤ 1) of `sorted` by the nearest-rank method, or `None` if empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `points` (value, cumulative fraction) pairs spread evenly over the fractions, ending with
/// the maximum; fewer when there are fewer samples.
pub fn cdf_points(sorted: &[f64], points: usize) -> Vec<[f64; 2]> {
    let n = sorted.len();
    if n == 0 || points == 0 {
        return Vec::new();
    }
    let steps = points.min(n);
    (1..=steps)
        .map(|i| {
            let fraction = i as f64 / steps as f64;
            let index = ((fraction * n as f64).ceil() as usize).clamp(1, n) - 1;
            [sorted[index], (index + 1) as f64 / n as f64]
        })
        .collect()
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn quantiles_follow_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn a_cdf_is_bounded_and_ends_at_the_maximum() {
        let v: Vec<f64> = (1..=10_000).map(f64::from).collect();
        let cdf = cdf_points(&v, 200);
        assert_eq!(cdf.len(), 200);
        assert_eq!(cdf.last(), Some(&[10_000.0, 1.0]));
        assert_eq!(cdf[99], [5_000.0, 0.5]);
        assert!(
            cdf.windows(2)
                .all(|w| w[0][0] <= w[1][0] && w[0][1] < w[1][1])
        );
        assert_eq!(cdf_points(&[3.0, 4.0], 200), vec![[3.0, 0.5], [4.0, 1.0]]);
        assert!(cdf_points(&[], 200).is_empty());
    }
}
