//! Building blocks shared by the text model (and later the vision tower).

pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;

pub use linear::Linear;
pub use mlp::Mlp;
pub use norm::{rms_normalize, RmsNorm};
pub use rope::RotaryTables;
