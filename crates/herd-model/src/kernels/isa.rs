//! Which SIMD instruction set the CPU kernels run on. Detected once at first use; `HERD_ISA`
//! (`portable`, `avx2`, `avx512`, `avx512bf16`, `amx`) caps it, so a benchmark can compare paths and a machine with
//! AVX-512 can still exercise every fallback. Kernels also take an explicit [`Isa`], which is how
//! the twin tests force each path.

use std::sync::OnceLock;

/// An instruction-set level; each includes what the kernels need of the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, vectorised by the compiler for the build target.
    Portable,
    /// AVX2 + FMA (+ F16C): 256-bit integer and float.
    Avx2,
    /// AVX-512 F/BW/VL with VNNI (`vpdpbusd`).
    Avx512,
    /// AVX-512 plus BF16 dot products (`vdpbf16ps`): prefill products with bf16 weights, with
    /// block-quantized ones, or under `--dtype bf16` run on [`super::dpbf16`]; everything else
    /// as on [`Isa::Avx512`].
    Avx512Bf16,
    /// AVX-512 BF16 plus AMX-BF16 tiles, granted by the OS: prefill products run on the tiles
    /// ([`super::amx`]), everything else as on [`Isa::Avx512`].
    Amx,
}

impl Isa {
    pub const ALL: [Isa; 5] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::Amx];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Amx => "amx",
        }
    }

    pub fn parse(text: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(text.trim()))
    }

    /// The widest level this CPU supports.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// Is this level usable on this CPU?
    pub fn is_supported(self) -> bool {
        self <= Isa::detected()
    }

    /// The levels this CPU supports, narrowest first (what the twin tests iterate over).
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The level the kernels use: [`Isa::detected`], lowered by `HERD_ISA` when that names a
    /// narrower one (a wider one than the CPU has is ignored, never trusted).
    pub fn current() -> Isa {
        static CURRENT: OnceLock<Isa> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let detected = Isa::detected();
            match std::env::var("HERD_ISA").ok().as_deref().and_then(Isa::parse) {
                Some(asked) => asked.min(detected),
                None => detected,
            }
        })
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    // The AVX-512 kernels also use AVX2, FMA and F16C instructions (tails, scale conversion).
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
        // Every CPU with AMX tiles has AVX-512 BF16; one without it stays below both.
        if !has!("avx512bf16") {
            Isa::Avx512
        } else if super::amx::usable() {
            Isa::Amx
        } else {
            Isa::Avx512Bf16
        }
    } else if avx2 {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Portable
}
