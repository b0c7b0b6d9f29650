"""Learn an η_t, β_t schedule for your own model by meta-gradient, then train with it in torch.optim.SGD.

η and β are given at K knots (log-linear / linear in between over the T steps); mt.hypergrad
returns ∂(validation loss)/∂ each knot; a few normalised gradient steps on u = (log η_k,
log(1 − β_k)) learn the schedule. The judge is plain torch.optim.SGD with its param_groups'
lr and momentum set per step from the learned path, against the constant start.

Run:  OMP_NUM_THREADS=1 .venv/bin/python examples/learned_schedule.py   (about 10 s on one core)
"""

import copy

import torch
from sklearn.datasets import load_digits

import metatune as mt
from metatune.schedule import Knots, Shape

torch.set_num_threads(1)
torch.manual_seed(0)
x, y = load_digits(return_X_y=True)  # your data here
x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
x_train, y_train, x_val, y_val = x[:1200], y[:1200], x[1200:], y[1200:]
model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))  # your model
start = {name: p.detach().clone() for name, p in model.named_parameters()}
T, K = 100, 4
batches = [torch.randint(0, 1200, (64,)) for _ in range(T)]  # a fixed, seeded minibatch sequence


def train_loss(p, idx):
    logits = torch.func.functional_call(model, p, (x_train[idx],))
    return torch.nn.functional.cross_entropy(logits, y_train[idx])


def val_loss(p):
    return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x_val,)), y_val)


def knots(u):
    """(η_k, β_k) from u = (log η_k …, log(1 − β_k) …)."""
    return u[:K].exp(), 1 - u[K:].exp()


u = u_start = torch.log(torch.tensor([0.05] * K + [1 - 0.5] * K, dtype=torch.float64))  # η 0.05, β 0.5
for step in range(12):
    lr, momentum = knots(u)
    hg = mt.hypergrad(train_loss, val_loss, start, lr=Knots(lr.tolist()), momentum=Knots(momentum.tolist()),
                      steps=T, batches=batches, mode="reverse")
    if step == 0:
        print(f"constant start: val loss {hg.value:.4f}\n  dval/d lr_k {[f'{g:+.3f}' for g in hg.lr]}"
              f"\n  dval/d momentum_k {[f'{g:+.3f}' for g in hg.momentum]}")
    # chain rule into u: ∂/∂log η = η ∂/∂η, ∂/∂log(1 − β) = −(1 − β) ∂/∂β
    grad = torch.cat([lr * torch.tensor(hg.lr), -(1 - momentum) * torch.tensor(hg.momentum)])
    u = u - 0.25 * grad / grad.norm()  # a normalised step in u
lr, momentum = knots(u)
print(f"learned knots: lr {[round(v, 4) for v in lr.tolist()]}  "
      f"momentum {[round(v, 3) for v in momentum.tolist()]}")


def sgd_val_loss(lr_knots, momentum_knots):
    """Train a copy of the model from the same start with plain torch.optim.SGD, η_t and β_t set per step."""
    shape = Shape.of_knots(K)
    lr_path, momentum_path = shape.lr_path(lr_knots, T), shape.momentum_path(momentum_knots, T)
    net = copy.deepcopy(model)  # still at the start: metatune never touched its parameters
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.5)  # lr, momentum reset at every step
    for t, idx in enumerate(batches):
        sgd.param_groups[0].update(lr=float(lr_path[t]), momentum=float(momentum_path[t]))
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(net(x_train[idx]), y_train[idx]).backward()
        sgd.step()
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(net(x_val), y_val).item()


constant, learned = sgd_val_loss(*knots(u_start)), sgd_val_loss(lr, momentum)
print(f"torch.optim.SGD, val loss after T={T}: constant start {constant:.4f}, learned {learned:.4f}")
