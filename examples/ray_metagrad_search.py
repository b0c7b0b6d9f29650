"""metagrad as a Ray Tune searcher for your own model: ``python examples/ray_metagrad_search.py``."""

import torch
from ray import tune
from sklearn.datasets import load_diabetes

import metatune as mt
from metatune.distributed import MetagradSearch, default_root, ensure_ray, hypergrad_report

x, y = (torch.tensor(a, dtype=torch.float32) for a in load_diabetes(return_X_y=True, scaled=True))
model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
params = {k: v.detach() for k, v in model.named_parameters()}
loss = lambda p, rows: ((torch.func.functional_call(model, p, (x[rows],)).squeeze(-1) - y[rows] / 100) ** 2).mean()  # noqa: E731
batches = [torch.randint(0, 300, (64,), generator=torch.Generator().manual_seed(t)) for t in range(100)]


def trainable(config):  # train 100 steps at (lr, momentum), differentiate the validation loss
    torch.set_num_threads(1)
    hg = mt.hypergrad(loss, lambda p: loss(p, torch.arange(300, 442)), params, config["lr"], config["momentum"],
                      100, batches, mode="reverse")
    tune.report(hypergrad_report(hg))


ensure_ray()  # a quiet local Ray; or ensure_ray("head-host:6379")
search = MetagradSearch(starts=[(0.01, 0.5), (0.1, 0.9)])
grid = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=search, num_samples=16, max_concurrent_trials=2,
                                                         reuse_actors=True),
                  run_config=tune.RunConfig(storage_path=str(default_root() / "results"), verbose=0)).fit()
best = grid.get_best_result(metric="value", mode="min")
print(f"best lr {best.config['lr']:.4g}, momentum {best.config['momentum']:.3f}, val loss {best.metrics['value']:.4f}")
