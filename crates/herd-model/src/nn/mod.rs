//! Building blocks shared by the text model (and later the vision tower).

pub mod embedding;
pub mod linear;
pub mod low_rank;
pub mod matmul_precision;
pub mod mlp;
pub mod norm;
pub mod rope;

pub use embedding::Embedding;
pub use linear::{BiasedLinear, Linear, WeightFormat};
pub use low_rank::LowRank;
pub use matmul_precision::MatmulPrecision;
pub use mlp::Mlp;
pub use norm::{rms_normalize, RmsNorm};
pub use rope::RotaryTables;
