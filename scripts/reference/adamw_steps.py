"""Reference for crossmerge's optimizer (crates/nn/src/train/optim.rs): what transformers'
Trainer does per step, with torch. Writes tests/fixtures/train/adamw.json.

Three parameters named as BERT names them (a weight that decays, a bias and a LayerNorm weight
that do not, as transformers' `get_decay_parameter_names` decides), fixed gradients for 4
steps (seeded, scaled so that gradient clipping at 1.0 is active in some steps and not in
others), `torch.nn.utils.clip_grad_norm_(params, 1.0)`, `torch.optim.AdamW` (betas 0.9/0.999,
eps 1e-8, weight decay 0.01 on the decaying group only) and
`transformers.get_linear_schedule_with_warmup` (2 warm-up steps of 6). The parameters after
every step are recorded.

    python scripts/reference/adamw_steps.py   # torch and transformers installed
"""

import json
import pathlib

import torch
from transformers import get_linear_schedule_with_warmup

torch.manual_seed(0)
names = [
    "encoder.layer.0.attention.self.query.weight",
    "encoder.layer.0.attention.self.query.bias",
    "encoder.layer.0.attention.output.LayerNorm.weight",
]
shapes = [(4, 3), (4,), (3,)]
params = [torch.nn.Parameter(torch.randn(s) * 0.5) for s in shapes]
initial = [p.detach().clone() for p in params]
decay = [p for n, p in zip(names, params) if "bias" not in n and "LayerNorm" not in n]
no_decay = [p for n, p in zip(names, params) if not ("bias" not in n and "LayerNorm" not in n)]
lr, wd, warmup, total, max_norm = 5e-3, 0.01, 2, 6, 1.0
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
    lr=lr,
    betas=(0.9, 0.999),
    eps=1e-8,
)
sched = get_linear_schedule_with_warmup(opt, warmup, total)
scales = [3.0, 0.05, 1.5, 0.2]  # clipping active in steps 1 and 3
grads, after, lrs, norms = [], [], [], []
for scale in scales:
    g = [torch.randn(s) * scale for s in shapes]
    for p, gi in zip(params, g):
        p.grad = gi.clone()
    lrs.append(sched.get_last_lr()[0])
    norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm)))
    opt.step()
    sched.step()
    grads.append([gi.flatten().tolist() for gi in g])
    after.append([p.detach().flatten().tolist() for p in params])

out = {
    "torch": torch.__version__,
    "names": names,
    "shapes": [list(s) for s in shapes],
    "initial": [p.flatten().tolist() for p in initial],
    "lr": lr,
    "weight_decay": wd,
    "warmup_steps": warmup,
    "total_steps": total,
    "max_grad_norm": max_norm,
    "grads": grads,
    "lr_used": lrs,
    "grad_norm": norms,
    "after": after,
}
path = pathlib.Path(__file__).resolve().parents[2] / "tests/fixtures/train/adamw.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path}")
