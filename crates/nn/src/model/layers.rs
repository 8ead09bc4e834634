//! The building blocks: a linear map and LayerNorm from plain candle ops (fused on the CPU
//! where `crate::kernels` can).

#![allow(clippy::many_single_char_names)] // b, t, h, d, q, k, v: the attention formula's names

use candle_core::{D, Tensor};

use super::{Weights, candle};
use crate::error::Result;

/// `x·Wᵀ + b` over the last dimension. The weight is kept transposed, `(in, out)` and
/// contiguous: the matrix product reads it row by row (measured 6% faster on the CPU than
/// through a transposed view).
pub(super) struct Linear {
    pub(super) wt: Tensor,
    /// In training, the weight `(out, in)` as the graph has it, for the one-node CPU layer
    /// (`kernels::grad::linear`).
    w: Option<Tensor>,
    pub(super) b: Option<Tensor>,
    /// The bias (zeros when the layer has none) for the fused CPU kernels.
    pub(super) host_bias: Option<Vec<f32>>,
}

impl Linear {
    pub(super) fn load(weights: &Weights, name: &str, encoder: bool) -> Result<Self> {
        let get = |n: &str| {
            if encoder {
                weights.encoder(n)
            } else {
                weights.head(n)
            }
        };
        Self::new(
            &get(&format!("{name}.weight"))?,
            get(&format!("{name}.bias")).ok(),
        )
    }

    /// Several layers over the same input as one: their weights stacked on the output
    /// dimension (the query, key and value projections: one matrix product instead of three).
    pub(super) fn stacked(weights: &Weights, names: &[String]) -> Result<Self> {
        let mut ws = Vec::with_capacity(names.len());
        let mut bs = Vec::with_capacity(names.len());
        for n in names {
            ws.push(weights.encoder(&format!("{n}.weight"))?);
            let w = ws.last().expect("just pushed");
            bs.push(match weights.encoder(&format!("{n}.bias")) {
                Ok(b) => b,
                Err(_) => w
                    .dim(0)
                    .and_then(|o| Tensor::zeros(o, w.dtype(), w.device()))
                    .map_err(candle)?,
            });
        }
        let w = Tensor::cat(&ws, 0).map_err(candle)?;
        let b = Tensor::cat(&bs, 0).map_err(candle)?;
        Self::new(&w, Some(b))
    }

    pub(super) fn new(w: &Tensor, b: Option<Tensor>) -> Result<Self> {
        let host_bias = if crate::kernels::fused(w) {
            let bias = match &b {
                Some(b) => b.flatten_all().and_then(|b| b.to_vec1()),
                None => w.dim(0).map(|n| vec![0f32; n]),
            };
            Some(bias.map_err(candle)?)
        } else {
            None
        };
        // In training (a weight in an autograd graph) the transposed view is used as it is:
        // a contiguous copy would cost a copy of every weight, and another in the backward
        // pass, for each micro-batch.
        let (wt, trained) = if w.track_op() {
            (w.t().map_err(candle)?, Some(w.clone()))
        } else {
            (w.t().and_then(|t| t.contiguous()).map_err(candle)?, None)
        };
        Ok(Self {
            wt,
            w: trained,
            b,
            host_bias,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_dropped(x, None)
    }

    /// [`Linear::forward`], then (in training) dropout at rate `p` of `dropout`.
    pub(super) fn forward_dropped(
        &self,
        x: &Tensor,
        dropout: Option<(&super::Dropout, f64)>,
    ) -> Result<Tensor> {
        if let Some(y) = self.one_node(x, || dropout.and_then(|(d, p)| d.site(p)), false)? {
            return Ok(y);
        }
        let y = self.plain(x)?;
        match dropout {
            Some((d, p)) => d.apply(&y, p).map_err(candle),
            None => Ok(y),
        }
    }

    /// `GELU(x·Wᵀ + b)` (the intermediate layer).
    pub(super) fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.one_node(x, || None, true)? {
            return Ok(y);
        }
        crate::kernels::gelu(&self.plain(x)?).map_err(candle)
    }

    /// On the CPU in training, rows through product, bias and GELU or dropout as one node of
    /// the graph (`kernels::grad::linear`); `None` where that does not apply.
    fn one_node(
        &self,
        x: &Tensor,
        mask: impl FnOnce() -> Option<crate::kernels::grad::MaskOp>,
        gelu: bool,
    ) -> Result<Option<Tensor>> {
        use crate::kernels::grad;
        match (&self.w, &self.b) {
            (Some(w), Some(b)) if grad::applies(x) && x.rank() == 2 => {
                grad::linear(x, w, b, mask(), gelu)
                    .map(Some)
                    .map_err(candle)
            }
            _ => Ok(None),
        }
    }

    fn plain(&self, x: &Tensor) -> Result<Tensor> {
        // CUDA's matmul takes only row-major (or transposed) operands: a strided view such as
        // the [CLS] rows of a batch must be copied first (a no-op when already contiguous).
        let x = x.contiguous().map_err(candle)?;
        // As rows `(…·t, in)`: one matrix product. A batched product against the weight
        // broadcast over the batch would, in the backward pass, make one weight-sized
        // gradient per sentence and then sum them.
        let dims = x.dims().to_vec();
        let (&k, lead) = dims
            .split_last()
            .expect("a linear layer's input has a last dim");
        // Rows pass as they are: in training a reshape is a node of the graph.
        let rows = if lead.len() == 1 {
            x
        } else {
            x.reshape((lead.iter().product::<usize>(), k))
                .map_err(candle)?
        };
        let mut y = rows.matmul(&self.wt).map_err(candle)?;
        if let Some(b) = &self.b {
            y = if crate::kernels::grad::applies(&y) {
                crate::kernels::grad::bias_add(&y, b)
            } else {
                y.broadcast_add(b)
            }
            .map_err(candle)?;
        }
        if lead.len() == 1 {
            return Ok(y);
        }
        let mut shape = lead.to_vec();
        shape.push(y.dim(1).map_err(candle)?);
        y.reshape(shape).map_err(candle)
    }

    /// `x·Wᵀ` for rows `x` (b·t, in), the bias left to a fused kernel.
    pub(super) fn product(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.wt)
    }

    pub(super) fn bias(&self) -> &[f32] {
        self.host_bias
            .as_deref()
            .expect("fused kernels only run on host weights")
    }
}

pub(super) struct LayerNorm {
    pub(super) w: Tensor,
    pub(super) b: Tensor,
    pub(super) eps: f64,
    /// The weights for the fused CPU kernel (f32 on the CPU).
    pub(super) fused: Option<crate::kernels::NormWeights>,
}

impl LayerNorm {
    pub(super) fn load(weights: &Weights, name: &str, eps: f64, encoder: bool) -> Result<Self> {
        let get = |n: &str| {
            if encoder {
                weights.encoder(n)
            } else {
                weights.head(n)
            }
        };
        let (w, b) = (
            get(&format!("{name}.weight"))?,
            get(&format!("{name}.bias"))?,
        );
        let fused = crate::kernels::NormWeights::new(&w, &b).map_err(candle)?;
        Ok(Self { w, b, eps, fused })
    }

    /// Mean, centred variance, scale and shift (as torch's LayerNorm, biased variance): one
    /// fused pass on the CPU, plain ops elsewhere.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(fused) = self.fused.as_ref().filter(|_| x.device().is_cpu()) {
            return fused.forward(x, self.eps).map_err(candle);
        }
        if crate::kernels::grad::applies(x) {
            return crate::kernels::grad::layer_norm(x, &self.w, &self.b, self.eps).map_err(candle);
        }
        let f = || -> candle_core::Result<Tensor> {
            let mean = x.mean_keepdim(D::Minus1)?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
            normed.broadcast_mul(&self.w)?.broadcast_add(&self.b)
        };
        f().map_err(candle)
    }
}
