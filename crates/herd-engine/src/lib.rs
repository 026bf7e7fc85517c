//! herd-engine: the token-level engine. It knows token ids and logits, never text: sampling
//! parameters (one validated type shared by the CLI and, later, the server), the sampler, and
//! the generation loop over any [`LanguageModel`].

pub mod constraint;
pub mod core;
pub mod error;
pub mod frontend;
pub mod generate;
pub mod guard;
pub mod image;
pub mod model;
pub mod request;
pub mod resize;
pub mod sampling;
pub mod scheduler;
pub mod video;

pub use core::{EngineCore, EngineStats};
pub use error::EngineError;
pub use generate::{generate, generate_with_images, FinishReason, Generation, PREFILL_PIECE};
pub use model::{Feed, ImageFeatures, LanguageModel, Logits};
pub use request::{Event, Request, TokenLogprob, Usage};
pub use sampling::{Sampler, SamplingParams};
pub use scheduler::{RequestId, SchedulerConfig};
