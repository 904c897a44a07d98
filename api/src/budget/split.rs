//! Sharing a whole number of pence by the largest-remainder method.

/// Splits `total` pence in proportion to `weights`: floor every share, then hand the leftover
/// pennies one at a time to the largest remainders, ties going to the earlier share. The
/// shares always sum to `total` exactly. All-zero weights give everything to nobody: all zero,
/// unless `total` is non-zero, when the shares are equal by the same method.
pub fn largest_remainder(total: i128, weights: &[i128]) -> Vec<i128> {
    if weights.is_empty() {
        return Vec::new();
    }
    let weight_sum: i128 = weights.iter().sum();
    let (weights, weight_sum): (Vec<i128>, i128) = if weight_sum == 0 {
        (
            vec![1; weights.len()],
            i128::try_from(weights.len()).unwrap_or(1),
        )
    } else {
        (weights.to_vec(), weight_sum)
    };
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (i, weight) in weights.iter().enumerate() {
        let exact = total * weight;
        shares.push(exact.div_euclid(weight_sum));
        remainders.push((exact.rem_euclid(weight_sum), i));
    }
    let mut left = total - shares.iter().sum::<i128>();
    // Largest remainder first; on a tie, the share given first.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders {
        if left <= 0 {
            break;
        }
        if let Some(share) = shares.get_mut(i) {
            *share += 1;
            left -= 1;
        }
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_worked_examples_of_budget_rules() {
        // 10.00 split 33.33 / 33.33 / 33.34 -> 3.33, 3.33, 3.34.
        assert_eq!(
            largest_remainder(1000, &[3333, 3333, 3334]),
            [333, 333, 334]
        );
        // 100.01 split 50 / 50 -> the first share given takes the penny.
        assert_eq!(largest_remainder(10001, &[5000, 5000]), [5001, 5000]);
    }

    #[test]
    fn lines_share_an_awards_figure_in_proportion() {
        // 21508.93 shared by lines of 300.00 and 112.50.
        let shares = largest_remainder(2_150_893, &[30000, 11250]);
        assert_eq!(shares, [1_564_286, 586_607]);
        assert_eq!(shares.iter().sum::<i128>(), 2_150_893);
    }

    proptest! {
        #[test]
        fn shares_always_sum_to_the_total(total in 0i128..10_000_000_000, weights in proptest::collection::vec(0i128..1_000_000, 1..12)) {
            let shares = largest_remainder(total, &weights);
            prop_assert_eq!(shares.iter().sum::<i128>(), total);
            prop_assert!(shares.iter().all(|s| *s >= 0));
        }

        #[test]
        fn each_share_is_within_a_penny_of_its_exact_part(total in 0i128..1_000_000_000, weights in proptest::collection::vec(1i128..100_000, 1..8)) {
            let sum: i128 = weights.iter().sum();
            for (share, weight) in largest_remainder(total, &weights).iter().zip(&weights) {
                let exact_floor = total * weight / sum;
                prop_assert!(*share == exact_floor || *share == exact_floor + 1);
            }
        }
    }
}
