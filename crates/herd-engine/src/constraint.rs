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
    let complete = constraint.is_complete();
    let mut out = vec![f32::NEG_INFINITY; logits.len()];
    let mut any = false;
    for (i, (o, &l)) in out.iter_mut().zip(logits).enumerate() {
        let id = i as u32;
        let ok = if complete {
            params.stop_token_ids.contains(&id)
        } else {
            constraint.allows(id)
        };
        if ok && !l.is_nan() {
            *o = l;
            any |= l > f32::NEG_INFINITY;
        }
    }
    any.then_some(out)
}
