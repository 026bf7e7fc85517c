//! Constrained decoding: a rule over which tokens may come next (JSON mode is one). Before each
//! draw the engine gives every token the rule refuses a logit of −∞; once the rule says the
//! output is complete, only the request's stop tokens remain.

use crate::sampling::SamplingParams;

/// A rule over the next token. It sees token ids only; a rule over text carries its own table
/// of each token's bytes.
pub trait TokenConstraint: Send + std::fmt::Debug {
    /// Whether `token` may come next.
    fn allows(&self, token: u32) -> bool;
    /// Records that `token` was chosen.
    fn advance(&mut self, token: u32);
    /// True once the output is whole: only a stop token may follow.
    fn is_complete(&self) -> bool;
}

/// `logits` with every token `constraint` refuses set to −∞ (the stop tokens alone once it is
/// complete); `None` when no token at all is left.
pub fn masked_logits(
    logits: &[f32],
    constraint: &dyn TokenConstraint,
    params: &SamplingParams,
) -> Option<Vec<f32>> {
    let mut out = vec![f32::NEG_INFINITY; logits.len()];
    let mut any = false;
    let mut keep = |o: &mut f32, l: f32| {
        if !l.is_nan() {
            *o = l;
            any |= l > f32::NEG_INFINITY;
        }
    };
    if constraint.is_complete() {
        // Only a stop id may follow: those (a checkpoint may list many), not the vocabulary
        // times the list.
        for &id in &params.stop_token_ids {
            if let (Some(o), Some(&l)) = (out.get_mut(id as usize), logits.get(id as usize)) {
                keep(o, l);
            }
        }
    } else {
        for (i, (o, &l)) in out.iter_mut().zip(logits).enumerate() {
            if constraint.allows(i as u32) {
                keep(o, l);
            }
        }
    }
    any.then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Even ids until complete.
    #[derive(Debug)]
    struct Even {
        complete: bool,
    }

    impl TokenConstraint for Even {
        fn allows(&self, token: u32) -> bool {
            token.is_multiple_of(2)
        }
        fn advance(&mut self, _: u32) {}
        fn is_complete(&self) -> bool {
            self.complete
        }
    }

    #[test]
    fn refused_tokens_and_nan_become_minus_infinity_and_a_complete_rule_leaves_the_stop_ids() {
        let inf = f32::NEG_INFINITY;
        let logits = [1.0, 2.0, f32::NAN, 4.0, 5.0];
        let params = SamplingParams {
            // Out of the vocabulary, and repeated: ignored.
            stop_token_ids: vec![3, 99, 3],
            ..SamplingParams::greedy()
        };
        let open = masked_logits(&logits, &Even { complete: false }, &params).unwrap();
        assert_eq!(open[..2], [1.0, inf]);
        assert_eq!(open[2..], [inf, inf, 5.0]);
        let done = masked_logits(&logits, &Even { complete: true }, &params).unwrap();
        assert_eq!(done, [inf, inf, inf, 4.0, inf]);
        let none = SamplingParams {
            stop_token_ids: vec![2],
            ..SamplingParams::greedy()
        };
        assert_eq!(masked_logits(&logits, &Even { complete: true }, &none), None);
    }
}
