"""Meta-gradient and stability report for your own torch.nn.Module, in about 20 lines.

Run:  .venv/bin/python examples/metagrad_your_model.py
"""

import torch

import metatune as mt

torch.set_num_threads(1)
torch.manual_seed(0)
x, y = torch.randn(512, 20), torch.randint(0, 3, (512,))  # your data here
x_val, y_val = torch.randn(256, 20), torch.randint(0, 3, (256,))
model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))  # your model here
params = {name: p.detach() for name, p in model.named_parameters()}
batches = [torch.randint(0, 512, (64,)) for _ in range(200)]  # a fixed, seeded minibatch sequence


def train_loss(p, idx):
    return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x[idx],)), y[idx])


def val_loss(p):
    return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x_val,)), y_val)


hg = mt.hypergrad(train_loss, val_loss, params, lr=0.1, momentum=0.9, steps=200, batches=batches)
print(f"val loss {hg.value:.4f}   d/d lr {hg.lr:+.4f}   d/d momentum {hg.momentum:+.4f}")
print(f"sensitivity growth per step {hg.growth_rate:+.4f}  diverged={hg.diverged}  cost={hg.gradient_evals:.0f} grads")
report = mt.stability.estimate(train_loss, params, lr=0.1, momentum=0.9, batch=batches[0])
print(f"lambda_max {report.lambda_max:.3f}  rho {report.spectral_radius:.4f}  critical lr {report.critical_lr:.3f}"
      f"  stable={report.stable}  saddle={report.saddle}")
