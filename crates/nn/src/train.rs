//! Training (issue 12): fine-tuning the encoders of [`crate::model`] on a language (masked LM)
//! or a task (POS, NER, NLI, dependency parsing), with the backward passes candle lacks for
//! fused LayerNorm and softmax written from plain ops. What it trains is registered by the
//! crate above through `crossmerge-core`'s one checkpoint writer
//! (`Registry::register_tensors`), so this crate stays below the registry.
//!
//! Nothing is here yet: this module marks the place in the layering.
