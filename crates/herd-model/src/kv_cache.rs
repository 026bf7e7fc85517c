//! Keys and values of past positions, per layer, written in place.
//!
//! Each layer holds one buffer per side, [Hkv, capacity, Dh], filled from slot 0: a step
//! writes its keys and values after the ones already there (`slice_set`), and attention reads
//! a view of the filled slots — no copy of the history per token. Capacity doubles when a
//! step does not fit, so a global layer's history is copied O(log L) times in all, not L.
//!
//! Global layers keep the whole history. Chunked layers keep only the block the next position
//! falls in, since no later query can see an earlier block: when a step crosses into a new
//! block the old block's slots are reused for it, so their memory stays near the chunk length
//! whatever the context length (transformers keeps the last C − 1, the same bound).
//!
//! A cache stores its values in the compute dtype, in f16/bf16, or as Q8_0 blocks
//! ([`KvFormat`]); a Q8_0 buffer is bytes, [Hkv, capacity, Dh/32 · 34], one row of blocks per
//! position, quantized as it is written.

use candle_core::{DType, Device, Tensor};

use crate::config::{LayerPlan, ModelConfig};
use crate::error::{Error, Result};
use crate::kernels::isa::Isa;
use crate::kernels::{half_matmul, kv_q8};
use crate::text::mask::chunk_start;

/// How a cache stores keys and values (`--kv-dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvFormat {
    /// Values as this float dtype (f32 keeps the reference's values; f16/bf16 halve them).
    Dtype(DType),
    /// ggml's Q8_0 (llama.cpp's `-ctk/-ctv q8_0`): 32 values in 34 bytes, 0.27× an f32 cache
    /// and 0.53× an f16 one. Needs a head size that is a multiple of 32, and the CPU.
    Q8_0,
}

impl KvFormat {
    /// The name `--kv-dtype` takes and `herd bench` prints.
    pub fn name(self) -> String {
        match self {
            KvFormat::Dtype(d) => format!("{d:?}").to_lowercase(),
            KvFormat::Q8_0 => "q8_0".to_string(),
        }
    }

    /// Bytes one position's keys (or values) take in a head of `head_dim` values.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvFormat::Dtype(d) => head_dim * d.size_in_bytes(),
            KvFormat::Q8_0 => kv_q8::row_bytes(head_dim),
        }
    }

    /// Whether a model of `head_dim` on `device` can keep its cache in this format.
    pub fn check(self, head_dim: usize, device: &Device) -> Result<()> {
        match self {
            KvFormat::Dtype(DType::F32 | DType::F16 | DType::BF16) => Ok(()),
            KvFormat::Dtype(d) => Err(Error::KvCache(format!(
                "{d:?} is not a cache dtype (f32, f16, bf16, q8_0)"
            ))),
            KvFormat::Q8_0 if !head_dim.is_multiple_of(kv_q8::BLOCK) || head_dim == 0 => Err(Error::KvCache(
                format!("q8_0 stores blocks of 32 values; this model's heads have {head_dim}"),
            )),
            KvFormat::Q8_0 if !device.is_cpu() => Err(Error::KvCache(
                "q8_0 is read by herd's CPU kernels only; use f16 or bf16 on a GPU".into(),
            )),
            KvFormat::Q8_0 => Ok(()),
        }
    }
}

/// Slots a buffer starts with (grown by doubling as the history does).
const MIN_CAPACITY: usize = 256;

/// One layer's cache: keys/values for absolute positions `start .. start + len`, in slots
/// `0 .. len` of buffers [Hkv, capacity, Dh]. Not `Clone`: the buffers are written in place,
/// so two caches must never share them; [`LayerCache::try_clone`] copies.
#[derive(Debug)]
pub struct LayerCache {
    chunk_len: Option<usize>,
    /// How the buffers store values (None: as the keys come in).
    format: Option<KvFormat>,
    kv: Option<(Tensor, Tensor)>,
    len: usize,
    start: usize,
    /// Slots the first allocation takes at least ([`KvCache::reserve`]): a sequence whose
    /// length is known up front allocates once, and never doubles past it.
    reserved: usize,
}

impl LayerCache {
    pub fn new(plan: &LayerPlan) -> Self {
        Self::with_format(plan, None)
    }

    /// A layer cache storing its keys and values as `format` (converted on the way in), or as
    /// they come when `None`.
    pub fn with_format(plan: &LayerPlan, format: Option<KvFormat>) -> Self {
        LayerCache {
            chunk_len: plan.attention.chunk_len(),
            format,
            kv: None,
            len: 0,
            start: 0,
            reserved: 0,
        }
    }

    /// A copy with buffers of its own.
    pub fn try_clone(&self) -> Result<Self> {
        let kv = match &self.kv {
            Some((k, v)) => Some((k.force_contiguous()?, v.force_contiguous()?)),
            None => None,
        };
        Ok(LayerCache {
            chunk_len: self.chunk_len,
            format: self.format,
            kv,
            len: self.len,
            start: self.start,
            reserved: self.reserved,
        })
    }

    /// Absolute position of the first cached key.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots allocated per side.
    pub fn capacity(&self) -> usize {
        self.kv
            .as_ref()
            .map_or(0, |(k, _)| k.dims().get(1).copied().unwrap_or(0))
    }

    /// The keys and values stored for positions `start .. start + len`, [Hkv, len, Dh] each
    /// (for Q8_0, [Hkv, len, Dh/32 · 34] bytes, as [`Self::extend`] returns them); `None`
    /// before the first.
    pub fn stored(&self) -> Result<Option<(Tensor, Tensor)>> {
        match &self.kv {
            Some((k, v)) => Ok(Some((k.narrow(1, 0, self.len)?, v.narrow(1, 0, self.len)?))),
            None => Ok(None),
        }
    }

    /// How the buffers store values (None: as the keys come in).
    pub fn format(&self) -> Option<KvFormat> {
        self.format
    }

    /// Appends the step's keys/values [Hkv, T, Dh] in place; returns views of every
    /// key/value a query of this step may need, [Hkv, L, Dh] (for Q8_0, [Hkv, L, Dh/32 · 34]
    /// bytes: [`widen_q8_0`] reads them), starting at absolute position [`Self::start`].
    pub fn extend(&mut self, k_new: &Tensor, v_new: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k_new, v_new) = match self.format {
            Some(KvFormat::Q8_0) => (quantize_q8_0(k_new)?, quantize_q8_0(v_new)?),
            Some(KvFormat::Dtype(d)) => (to_cache_dtype(k_new, d)?, to_cache_dtype(v_new, d)?),
            None => (k_new.clone(), v_new.clone()),
        };
        let (k_new, v_new) = (&k_new, &v_new);
        // dh: values per row, or bytes per row of Q8_0 blocks.
        let (hkv, t, dh) = k_new.dims3()?;
        let needed = self.len + t;
        if needed > self.capacity() {
            let doubled = (2 * self.capacity()).max(MIN_CAPACITY);
            // A chunked layer never needs more than its block plus one step.
            let doubled = self.chunk_len.map_or(doubled, |c| doubled.min(c));
            // A reservation is the whole allocation while the sequence stays within it.
            let capacity = if needed <= self.reserved {
                self.reserved
            } else {
                needed.max(doubled)
            };
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((hkv, capacity, dh), k_new.dtype(), k_new.device())?;
                if let Some(old) = old {
                    if self.len > 0 {
                        buf.slice_set(&old.narrow(1, 0, self.len)?.force_contiguous()?, 1, 0)?;
                    }
                }
                Ok(buf)
            };
            let k = grow(self.kv.as_ref().map(|(k, _)| k))?;
            let v = grow(self.kv.as_ref().map(|(_, v)| v))?;
            self.kv = Some((k, v));
        }
        let Some((k, v)) = &self.kv else {
            unreachable!("the buffers were just made")
        };
        k.slice_set(&k_new.contiguous()?, 1, self.len)?;
        v.slice_set(&v_new.contiguous()?, 1, self.len)?;
        self.len = needed;
        Ok((k.narrow(1, 0, needed)?, v.narrow(1, 0, needed)?))
    }

    /// Drops what no query at `next_pos` or later can attend to.
    pub fn evict_before(&mut self, next_pos: usize) -> Result<()> {
        let keep_from = chunk_start(next_pos, self.chunk_len);
        if keep_from <= self.start {
            return Ok(());
        }
        let drop = (keep_from - self.start).min(self.len);
        if drop == self.len {
            // The usual case: a new block starts; its keys reuse the old block's slots.
            self.len = 0;
        } else if let Some((k, v)) = &self.kv {
            // A step straddled the boundary: move the new block's keys to the front.
            let keep = self.len - drop;
            // A copy, always: with one KV head the narrowed view already counts as contiguous
            // and would alias the buffer it is written back into.
            let k_rest = k.narrow(1, drop, keep)?.force_contiguous()?;
            let v_rest = v.narrow(1, drop, keep)?.force_contiguous()?;
            k.slice_set(&k_rest, 1, 0)?;
            v.slice_set(&v_rest, 1, 0)?;
            self.len = keep;
        }
        self.start = keep_from;
        Ok(())
    }

    /// Bytes held by this layer's key and value buffers (a Q8_0 buffer's element is a byte).
    pub fn bytes(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, v)| {
            (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes()
        })
    }
}

/// The whole model's cache for one sequence (not `Clone`, as [`LayerCache`]; see
/// [`KvCache::try_clone`]).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Number of positions fed so far (= the next token's position).
    n_positions: usize,
}

impl KvCache {
    pub fn new(config: &ModelConfig) -> Self {
        Self::with_format(config, None)
    }

    /// A cache storing keys and values as `format` (f16/bf16 halve an f32 cache, Q8_0 takes
    /// 0.27 of it; decode reads them where they lie), or in the compute dtype when `None`.
    pub fn with_format(config: &ModelConfig, format: Option<KvFormat>) -> Self {
        KvCache {
            layers: config
                .layers
                .iter()
                .map(|plan| LayerCache::with_format(plan, format))
                .collect(),
            n_positions: 0,
        }
    }

    /// A copy with buffers of its own.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(KvCache {
            layers: self
                .layers
                .iter()
                .map(LayerCache::try_clone)
                .collect::<Result<_>>()?,
            n_positions: self.n_positions,
        })
    }

    pub fn n_positions(&self) -> usize {
        self.n_positions
    }

    pub fn layers_mut(&mut self) -> &mut [LayerCache] {
        &mut self.layers
    }

    pub fn layers(&self) -> &[LayerCache] {
        &self.layers
    }

    /// Records that a step of `n` tokens was fed and evicts what is no longer visible.
    pub(crate) fn advance(&mut self, n: usize) -> Result<()> {
        self.n_positions += n;
        for layer in &mut self.layers {
            layer.evict_before(self.n_positions)?;
        }
        Ok(())
    }

    /// Sizes each layer's buffers for a sequence of `positions` positions, allocated once
    /// on the first step (a chunked layer's at most its block): what a server's memory budget
    /// counts per sequence, and no doubling copies on the way there.
    pub fn reserve(&mut self, positions: usize) {
        for layer in &mut self.layers {
            layer.reserved = layer.chunk_len.map_or(positions, |c| positions.min(c));
        }
    }

    /// Bytes held across all layers.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes).sum()
    }
}

/// Keys or values [Hkv, T, Dh] (any float dtype) as Q8_0 rows, bytes [Hkv, T, Dh/32 · 34].
/// x in a cache's dtype: f32 → f16 on the CPU through herd's vectorised narrowing (the same
/// bits as candle's scalar loop, which took ~3 % of a long prompt on one thread), candle's
/// conversion otherwise.
fn to_cache_dtype(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if dtype == DType::F16 && x.dtype() == DType::F32 && x.device().is_cpu() {
        let narrowed = crate::nn::linear::with_cpu_values(x, |values: &[f32]| {
            let mut out = vec![half::f16::ZERO; values.len()];
            half_matmul::narrow_f16_on(Isa::current(), values, &mut out);
            out
        })?;
        return Ok(Tensor::from_vec(narrowed, x.shape(), x.device())?);
    }
    Ok(x.to_dtype(dtype)?)
}

fn quantize_q8_0(x: &Tensor) -> Result<Tensor> {
    let (hkv, t, dh) = x.dims3()?;
    KvFormat::Q8_0.check(dh, x.device())?;
    let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut bytes = vec![0u8; hkv * t * kv_q8::row_bytes(dh)];
    kv_q8::quantize(&values, &mut bytes);
    Ok(Tensor::from_vec(
        bytes,
        (hkv, t, kv_q8::row_bytes(dh)),
        x.device(),
    )?)
}

/// A view of Q8_0 rows [Hkv, L, Dh/32 · 34] (bytes, as [`LayerCache::extend`] returns them) as
/// f32 values [Hkv, L, Dh]: what the prompt's attention reads, once per block of queries.
pub fn widen_q8_0(rows: &Tensor) -> Result<Tensor> {
    let (hkv, l, rb) = rows.dims3()?;
    if rows.dtype() != DType::U8 || !rb.is_multiple_of(kv_q8::BLOCK_BYTES) {
        return Err(Error::KvCache(format!(
            "{:?} {:?} is not a view of Q8_0 rows",
            rows.dtype(),
            rows.dims()
        )));
    }
    let dh = rb / kv_q8::BLOCK_BYTES * kv_q8::BLOCK;
    let mut out = vec![0f32; hkv * l * dh];
    if l > 0 {
        // Each head's rows are contiguous in the cache's buffer (narrowed along L, heads a
        // capacity apart): widened from where they lie.
        let rows = if rows.stride().get(1..) == Some(&[rb, 1][..]) {
            rows.clone()
        } else {
            rows.contiguous()?
        };
        let (store, layout) = rows.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*store else {
            return Err(Error::KvCache("Q8_0 rows live on the CPU".into()));
        };
        let data = cpu.as_slice::<u8>()?;
        let head_stride = layout.stride()[0];
        for (h, o) in out.chunks_exact_mut(l * dh).enumerate() {
            let start = layout.start_offset() + h * head_stride;
            let head = data
                .get(start..start + l * rb)
                .ok_or_else(|| Error::KvCache("Q8_0 rows outside their buffer".into()))?;
            kv_q8::dequantize(head, o);
        }
    }
    Ok(Tensor::from_vec(out, (hkv, l, dh), rows.device())?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::LayerCache;

    fn keys(hkv: usize, positions: std::ops::Range<usize>) -> Tensor {
        // Key value = absolute position, so what a slot holds is readable.
        let t = positions.len();
        let v: Vec<f32> = (0..hkv)
            .flat_map(|_| positions.clone().flat_map(|p| [p as f32; 2]))
            .collect();
        Tensor::from_vec(v, (hkv, t, 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_step_straddling_a_block_keeps_the_new_block_with_one_kv_head() {
        // One KV head: the narrowed remainder is contiguous in candle's eyes and must still be
        // copied before it is written back over its own buffer.
        for hkv in [1, 3] {
            let mut cache = LayerCache {
                chunk_len: Some(4),
                format: None,
                kv: None,
                len: 0,
                start: 0,
                reserved: 0,
            };
            let k = keys(hkv, 0..3);
            cache.extend(&k, &k).unwrap();
            let k = keys(hkv, 3..6); // positions 3, 4, 5: block 0 ends at 4
            let (all, _) = cache.extend(&k, &k).unwrap();
            assert_eq!(all.dims3().unwrap().1, 6);
            cache.evict_before(6).unwrap();
            assert_eq!((cache.start(), cache.len()), (4, 2));
            let k = keys(hkv, 6..7);
            let (all, _) = cache.extend(&k, &k).unwrap();
            let held: Vec<f32> = all
                .narrow(0, hkv - 1, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(held, vec![4.0, 4.0, 5.0, 5.0, 6.0, 6.0], "{hkv} heads");
            assert!(cache.capacity() <= 4 + 3);
        }
    }

    #[test]
    fn a_reserved_cache_allocates_once_and_a_chunked_layer_at_most_its_block() {
        for (chunk_len, expected) in [(None, 1000), (Some(4), 4)] {
            let mut cache = LayerCache {
                chunk_len,
                format: None,
                kv: None,
                len: 0,
                start: 0,
                reserved: chunk_len.map_or(1000, |c: usize| c.min(1000)),
            };
            let k = keys(2, 0..1);
            cache.extend(&k, &k).unwrap();
            assert_eq!(cache.capacity(), expected);
        }
    }

    #[test]
    fn try_clone_does_not_share_buffers() {
        let mut a = LayerCache {
            chunk_len: None,
            format: None,
            kv: None,
            len: 0,
            start: 0,
            reserved: 0,
        };
        let k = keys(2, 0..2);
        a.extend(&k, &k).unwrap();
        let mut b = a.try_clone().unwrap();
        let k2 = keys(2, 7..8);
        a.extend(&k2, &k2).unwrap();
        let k3 = keys(2, 9..10);
        let (b_all, _) = b.extend(&k3, &k3).unwrap();
        let (a_all, _) = a.extend(&keys(2, 11..12), &keys(2, 11..12)).unwrap();
        let row = |t: &Tensor, i: usize| -> f32 {
            t.narrow(1, i, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
        };
        assert_eq!(row(&a_all, 2), 7.0);
        assert_eq!(row(&b_all, 2), 9.0);
    }
}
