//! Training (issue 12): fine-tuning the encoders of [`crate::model`] on a language (masked LM)
//! or a task (POS, NER, NLI, dependency parsing). What it trains is registered by the crate
//! above through `crossmerge-core`'s one checkpoint writer (`Registry::register_tensors`), so
//! this crate stays below the registry.
//!
//! Here so far: [`optim`], the optimizer step transformers' `Trainer` takes (gradient clipping,
//! `AdamW` with decoupled weight decay, the linear warm-up and decay schedule), checked against
//! torch on the same gradients; [`masking`], masked-LM inputs as transformers' collators make
//! them, seeded per epoch. The training forward pass, data and the `train` command are next
//! (issue 12).

pub mod masking;
pub mod optim;
