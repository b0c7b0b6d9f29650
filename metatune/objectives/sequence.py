"""``rnn-sequence``: a tanh recurrent network on the adding problem (Hochreiter & Schmidhuber, 1997).

Each input is a sequence of ``length`` pairs (value uᵢ ~ U(0, 1), marker mᵢ ∈ {0, 1}) with
exactly two markers, one in each half; the target is the sum of the two marked values,
read out from the last hidden state, with a mean squared error (predicting the mean, 1,
scores ≈ 1/6). The first marker lies up to ``length`` steps back, so the gradient flows
through products of recurrent Jacobians: as η grows the inner run turns chaotic and the
meta-gradient's sensitivities explode (``HypergradResult.growth_rate`` > 0). The training
and validation sequences are generated from ``data_seed``.

Example:
    >>> from metatune.objectives import get
    >>> objective = get("rnn-sequence", length=10)
    >>> objective.params["length"], objective.steps
    (10, 200)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metatune.datasets import Split
from metatune import checks
from metatune.objectives._supervised import Supervised, seeded_init
from metatune.objectives.base import Objective, SearchSpace, default_device, default_dtype, register


class TanhRNN(nn.Module):
    """hₜ = tanh(W xₜ + b + U hₜ₋₁), h₀ = 0; output w·h_L + c (one number per sequence).

    An explicit unrolled cell (not ``nn.RNN``): plain tensor operations, so it composes
    with ``torch.func`` transforms on every backend.
    """

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.input = nn.Linear(inputs, hidden)
        self.recurrent = nn.Linear(hidden, hidden, bias=False)
        self.readout = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` of shape (batch, length, inputs) -> predictions of shape (batch,)."""
        first, *rest = self.input(x).unbind(1)
        state = torch.tanh(first)  # h₁, as h₀ = 0
        for drive in rest:
            state = torch.tanh(drive + self.recurrent(state))
        return self.readout(state).squeeze(-1)


def adding_problem(n: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` sequences (n, length, 2) of (value, marker) and their targets (n,), float64 on the CPU."""
    values = torch.rand(n, length, generator=generator, dtype=torch.float64)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    markers = torch.zeros(n, length, dtype=torch.float64)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    return torch.stack([values, markers], dim=-1), (values * markers).sum(-1)


def adding_split(
    *, length: int, n_train: int, n_val: int, seed: int, dtype: torch.dtype, device: str | torch.device
) -> Split:
    """Training and validation sets of the adding problem, both drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = adding_problem(n_train, length, generator)
    x_val, y_val = adding_problem(n_val, length, generator)
    to = {"dtype": dtype, "device": device}
    return Split(x_train.to(**to), y_train.to(**to), x_val.to(**to), y_val.to(**to))


def squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean of (prediction − target)², written out: ``F.mse_loss`` fails under jvp of grad (torch 2.x ZeroTensor)."""
    return ((prediction - target) ** 2).mean()


@register("rnn-sequence")
def rnn_sequence(
    *, length: int = 20, hidden: int = 32, n_train: int = 1024, n_val: int = 512, data_seed: int = 0,
    batch_size: int = 64, steps: int = 200, dtype: str = "float32", device: str = "cpu",
) -> Objective:
    """Build the adding problem with sequences of ``length`` and a tanh RNN of ``hidden`` units."""
    sizes = {"hidden": hidden, "n_train": n_train, "n_val": n_val, "batch_size": batch_size, "steps": steps}
    for name, value in sizes.items():
        checks.positive_int(name, value)
    length = checks.integer("length", length, low=2, note="one marker in each half")
    data_seed = checks.integer("data_seed", data_seed, low=0)
    torch_dtype, device = default_dtype(dtype), default_device(device)
    data = adding_split(length=length, n_train=n_train, n_val=n_val, seed=data_seed, dtype=torch_dtype, device=device)
    model = TanhRNN(2, hidden).to(dtype=torch_dtype, device=device)
    problem = Supervised(model, data, squared_error, batch_size)
    return Objective(
        name="rnn-sequence",
        description=f"tanh RNN ({hidden} units) on the adding problem, length {length}, "
        f"{n_train} training sequences, batch {batch_size}, data seed {data_seed}",
        init_params=seeded_init(lambda: TanhRNN(2, hidden), torch_dtype, device),
        train_loss=problem.train_loss, val_loss=problem.val_loss, batches=problem.batches,
        space=SearchSpace(lr_low=1e-4, lr_high=1.0),
        steps=steps,
        params={"length": length, "hidden": hidden, "n_train": n_train, "n_val": n_val,
                "data_seed": data_seed, "batch_size": batch_size, "steps": steps},
    )
