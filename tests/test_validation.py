"""Bad input at every public entry point: a ValueError naming the argument, its value and the
valid range (``name=value is invalid: expected <range>``), raised before any work is done.

Each case is (call, argument, the value as the message shows it, a piece of the range).
The entry points are those of ``metatune.__all__`` that take arguments, the registry's
objective factories and ``metatune.distributed``'s (``run``, ``Resources``,
``MetagradSearch``, ``ensure_ray``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pytest
import torch

import metatune as mt
from metatune import costs, dynamics, objectives, stability
from metatune.errors import InvalidArgumentError

W = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
PARAMS = {"w": W}


def loss(params: dict, batch: Any = None) -> torch.Tensor:
    """½ Σ dᵢ wᵢ², d = (1, 2, 3): a small quadratic, every bad-input call's problem."""
    return 0.5 * (torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) * params["w"] ** 2).sum()


def tiny() -> objectives.Objective:
    return objectives.get("quadratic", dim=4, kappa=10.0, steps=10)


def case(call: Callable[[], Any], name: str, shown: str, expected: str, id: str) -> Any:  # noqa: A002
    return pytest.param(call, name, shown, expected, id=id)


def hyper(lr: Any = 0.1, momentum: Any = 0.5) -> dynamics.Hyperparameters:
    return dynamics.Hyperparameters({"w": torch.tensor(lr)}, {"w": torch.tensor(momentum)})


def grouped(value: float) -> dynamics.GroupedScalar:
    return dynamics.group_hyperparameter(value, PARAMS, name="lr", like=W)


UNROLL = dict(train_loss=loss, params=PARAMS, lr=0.1, momentum=0.5, steps=3)
HYPERGRAD = dict(UNROLL, val_loss=loss)
POPULATION = dict(train_loss=loss, val_loss=loss, params=PARAMS, lrs=[0.1, 0.2], momenta=[0.5, 0.9], steps=3)

ENGINE = [
    case(lambda: mt.unroll(**UNROLL | {"steps": 0}), "steps", "0", "an integer >= 1", "unroll-steps-0"),
    case(lambda: mt.unroll(**UNROLL | {"steps": 2.5}), "steps", "2.5", "an integer", "unroll-steps-float"),
    case(lambda: mt.unroll(**UNROLL | {"steps": True}), "steps", "True", "an integer", "unroll-steps-bool"),
    case(lambda: mt.unroll(**UNROLL | {"lr": 0.0}), "lr", "0.0", "learning rate > 0", "unroll-lr-0"),
    case(lambda: mt.unroll(**UNROLL | {"lr": math.nan}), "lr", "nan", "finite learning rate", "unroll-lr-nan"),
    case(lambda: mt.unroll(**UNROLL | {"lr": "0.1"}), "lr", "'0.1'", "a number", "unroll-lr-str"),
    case(lambda: mt.unroll(**UNROLL | {"lr": {"w": -1.0}}), "lr['w']", "-1.0", "> 0", "unroll-lr-group"),
    case(lambda: mt.unroll(**UNROLL | {"lr": {"v": 0.1}}), "lr", "{'v': 0.1}", "prefixes", "unroll-lr-prefix"),
    case(lambda: mt.unroll(**UNROLL | {"momentum": 1.0}), "momentum", "1.0", "in [0, 1)", "unroll-momentum-1"),
    case(lambda: mt.unroll(**UNROLL | {"momentum": -0.5}), "momentum", "-0.5", "in [0, 1)", "unroll-momentum-neg"),
    case(lambda: mt.unroll(**UNROLL | {"nesterov": "yes"}), "nesterov", "'yes'", "True or False",
         "unroll-nesterov"),
    case(lambda: mt.unroll(**UNROLL | {"batches": [None]}), "batches", "'1 batches'", "at least steps=3",
         "unroll-batches"),
    case(lambda: mt.unroll(**UNROLL | {"params": [W]}), "params", "'list'", "dict of name -> tensor",
         "unroll-params"),
    case(lambda: mt.unroll(**UNROLL | {"params": {"w": torch.ones(3, dtype=torch.long)}}), "params['w']",
         "'Tensor'", "floating-point", "unroll-params-int"),
    case(lambda: mt.unroll(**UNROLL, velocity={"w": torch.zeros(2, dtype=torch.float64)}), "velocity",
         "{'w': (2,)}", "shaped like params", "unroll-velocity"),
    case(lambda: mt.unroll(**UNROLL | {"train_loss": lambda p, b: p["w"] ** 2}), "train_loss(params, batch)",
         "(3,)", "scalar (0-d) tensor", "unroll-loss"),
    case(lambda: mt.hypergrad(**HYPERGRAD, mode="sideways"), "mode", "'sideways'", "'truncated'",
         "hypergrad-mode"),
    case(lambda: mt.hypergrad(**HYPERGRAD, mode="truncated", truncate=0), "truncate", "0", "[1, 3]",
         "hypergrad-truncate-0"),
    case(lambda: mt.hypergrad(**HYPERGRAD, mode="truncated", truncate=4), "truncate", "4", "[1, 3]",
         "hypergrad-truncate-long"),
    case(lambda: mt.hypergrad(**HYPERGRAD, truncate=2), "truncate", "2", "None unless mode='truncated'",
         "hypergrad-truncate-forward"),
    case(lambda: mt.hypergrad(**HYPERGRAD, mode="reverse", checkpoint=0), "checkpoint", "0",
         "None or an integer >= 1", "hypergrad-checkpoint-0"),
    case(lambda: mt.hypergrad(**HYPERGRAD, checkpoint=2), "checkpoint", "2", "None in forward mode",
         "hypergrad-checkpoint-forward"),
    case(lambda: mt.hypergrad(**HYPERGRAD, compile="yes"), "compile", "'yes'", "True or False",
         "hypergrad-compile-flag"),
    case(lambda: mt.hypergrad(**HYPERGRAD, costs=2.0), "costs", "2.0", "CostModel", "hypergrad-costs"),
    case(lambda: mt.hypergrad(**HYPERGRAD | {"val_loss": lambda p: p["w"]}), "val_loss(params)", "(3,)",
         "scalar (0-d) tensor", "hypergrad-val-loss"),
    case(lambda: mt.hypergrad(**HYPERGRAD | {"momentum": 1.5}), "momentum", "1.5", "in [0, 1)",
         "hypergrad-momentum"),
    case(lambda: mt.train_population(**POPULATION | {"lrs": [0.1, -1.0]}), "lrs[1]", "-1.0", "> 0",
         "population-lrs"),
    case(lambda: mt.train_population(**POPULATION | {"momenta": [0.5, 1.0]}), "momenta[1]", "1.0", "[0, 1)",
         "population-momenta"),
    case(lambda: mt.train_population(**POPULATION | {"momenta": [0.5]}), "momenta", "'1 values'",
         "as many values as lrs (2)", "population-lengths"),
    case(lambda: mt.train_population(**POPULATION | {"lrs": "0.1"}), "lrs", "'0.1'", "1-d tensor or sequence",
         "population-lrs-str"),
    case(lambda: mt.train_population(**POPULATION, chunk_size=0), "chunk_size", "0", "None or an integer >= 1",
         "population-chunk"),
    case(lambda: mt.train_population(**POPULATION, compile="fast"), "compile", "'fast'", "reduce-overhead",
         "population-compile"),
    case(lambda: mt.train_population(**POPULATION, return_params="no"), "return_params", "'no'",
         "True or False", "population-return-params"),
    case(lambda: mt.train_population(**POPULATION | {"steps": 0}), "steps", "0", ">= 1", "population-steps"),
    case(lambda: mt.train_population(**POPULATION, nesterov=1), "nesterov", "1", "True or False",
         "population-nesterov"),
]

DYNAMICS = [
    case(lambda: dynamics.init_state([W]), "params", "'list'", "dict of name -> tensor", "init-state"),
    case(lambda: dynamics.heavy_ball(PARAMS, dynamics.init_state(PARAMS), {"v": W}, hyper()), "grads", "['v']",
         "keyed by the parameter names ['w']", "heavy-ball-grads"),
    case(lambda: dynamics.nesterov(PARAMS, dynamics.init_state(PARAMS), PARAMS,
                                   dynamics.Hyperparameters({}, {"w": torch.tensor(0.5)})),
         "hyper.lr", "[]", "keyed by the parameter names", "nesterov-hyper"),
    case(lambda: dynamics.update_rule("yes"), "nesterov", "'yes'", "True or False", "update-rule"),
    case(lambda: dynamics.group_hyperparameter("0.1", PARAMS, name="lr", like=W), "lr", "'0.1'",
         "a number, a one-element tensor", "group-str"),
    case(lambda: dynamics.group_hyperparameter({}, PARAMS, name="momentum", like=W), "momentum", "{}",
         "non-empty dict", "group-empty"),
    case(lambda: dynamics.group_hyperparameter(torch.ones(2), PARAMS, name="lr", like=W), "lr", "(2,)",
         "a scalar", "group-shape"),
    case(lambda: dynamics.check_lr(grouped(-0.1)), "lr", "-0.1", "learning rate > 0", "check-lr"),
    case(lambda: dynamics.check_momentum(grouped(2.0), name="momentum"), "momentum", "2.0", "[0, 1)",
         "check-momentum"),
]

STABILITY = [
    case(lambda: stability.estimate(loss, PARAMS, 0.0, 0.5), "lr", "0.0", "> 0", "estimate-lr"),
    case(lambda: stability.estimate(loss, PARAMS, 0.1, 1.0), "momentum", "1.0", "[0, 1)", "estimate-momentum"),
    case(lambda: stability.estimate(loss, PARAMS, 0.1, 0.5, nesterov="yes"), "nesterov", "'yes'",
         "True or False", "estimate-nesterov"),
    case(lambda: stability.estimate(loss, PARAMS, 0.1, 0.5, tol=-1.0), "tol", "-1.0", ">= 0", "estimate-tol"),
    case(lambda: stability.estimate(loss, PARAMS, 0.1, 0.5, seed=1.5), "seed", "1.5", "an integer >= 0",
         "estimate-seed"),
    case(lambda: stability.estimate(loss, {}, 0.1, 0.5), "params", "'dict'", "non-empty dict",
         "estimate-params"),
    case(lambda: stability.along_run(loss, PARAMS, 0.1, 0.5, steps=4, every=0), "every", "0", ">= 1",
         "along-run-every"),
    case(lambda: stability.along_run(loss, PARAMS, 0.1, 0.5, steps=-1), "steps", "-1", ">= 1",
         "along-run-steps"),
    case(lambda: stability.spectral_radius(0.1, 0.5, []), "eigenvalues", "[]", "at least one",
         "spectral-radius-empty"),
    case(lambda: stability.spectral_radius(0.1, 0.5, [1.0, math.inf]), "eigenvalues[1]", "inf", "finite",
         "spectral-radius-inf"),
    case(lambda: stability.spectral_radius(0.1, 0.5, "big"), "eigenvalues", "'big'", "a real number",
         "spectral-radius-str"),
    case(lambda: stability.spectral_radius([0.1, -1.0], 0.5, [1.0]), "lr[1]", "-1.0", "> 0",
         "spectral-radius-lr"),
    case(lambda: stability.spectral_radius(0.1, np.array([0.5, 1.0]), [1.0]), "momentum[1]", "1.0", "[0, 1)",
         "spectral-radius-momentum"),
    case(lambda: stability.spectral_radius(0.1, 0.5, [1.0], nesterov=1), "nesterov", "1", "True or False",
         "spectral-radius-nesterov"),
    case(lambda: stability.critical_lr(math.nan, 0.5), "lambda_max", "nan", "finite", "critical-lr-nan"),
    case(lambda: stability.critical_lr([1.0, 2.0], 0.5), "lambda_max", "[1.0, 2.0]", "one real number",
         "critical-lr-array"),
    case(lambda: stability.critical_lr(1.0, -0.1), "momentum", "-0.1", "[0, 1)", "critical-lr-momentum"),
    case(lambda: stability.regime(0.1, 0.5, 1.0, rtol=-1.0), "rtol", "-1.0", ">= 0", "regime-rtol"),
    case(lambda: stability.regime(0.1, 0.5, math.inf), "eigenvalue", "inf", "finite", "regime-eigenvalue"),
    case(lambda: stability.damping_ratio(0.0, 0.5, 1.0), "lr", "0.0", "> 0", "damping-ratio"),
    case(lambda: stability.optimal_hyperparameters(0.0, 1.0), "lambda_min", "0.0", "> 0", "optimal-zero"),
    case(lambda: stability.optimal_hyperparameters(2.0, 1.0), "lambda_min", "2.0", "lambda_max=1.0",
         "optimal-order"),
    case(lambda: stability.hessian_vector_product(loss, None), "params", "'NoneType'", "non-empty dict",
         "hvp-params"),
    case(lambda: stability.HessianOperator(3, PARAMS), "hvp", "3", "a function v -> H v", "operator-hvp"),
    case(lambda: stability.extreme_eigenvalues(np.eye(3)), "operator", "array(", "HessianOperator",
         "extreme-operator"),
    case(lambda: stability.extreme_eigenvalues(
        stability.HessianOperator(stability.hessian_vector_product(loss, PARAMS), PARAMS), tol=-1.0),
        "tol", "-1.0", ">= 0", "extreme-tol"),
    case(lambda: stability.spectrum_ends(
        stability.HessianOperator(stability.hessian_vector_product(loss, PARAMS), PARAMS), max_steps=0),
        "max_steps", "0", ">= 1", "spectrum-ends-steps"),
    case(lambda: stability.lanczos_quadrature(
        stability.HessianOperator(stability.hessian_vector_product(loss, PARAMS), PARAMS), np.ones(7)),
        "start", "(7,)", "a vector of", "quadrature-start"),
    case(lambda: stability.horizon_loss(0.1, 0.5, [1.0, 2.0], [1.0], 10), "weights", "[1.0]", "one weight per node",
         "horizon-weights"),
    case(lambda: stability.horizon_loss(0.1, 0.5, [1.0], [1.0], 0), "steps", "0", ">= 1", "horizon-steps"),
    case(lambda: stability.horizon_loss(0.1, 1.0, [1.0], [1.0], 10), "momentum", "1.0", "", "horizon-momentum"),
    case(lambda: mt.hypergrad(**HYPERGRAD, mode="auto", memory_budget=0), "memory_budget", "0", "> 0",
         "hypergrad-memory-budget"),
    case(lambda: stability.largest_eigenvalue(
        stability.HessianOperator(stability.hessian_vector_product(loss, PARAMS), PARAMS), seed=-1),
        "seed", "-1", "an integer >= 0", "largest-seed"),
]


def _tune_cases() -> list[Any]:
    cases = []
    for method in mt.METHODS:
        cases += [
            case(lambda m=method: mt.tune(tiny(), m, budget=-1.0), "budget", "-1.0", "> 0", f"tune-{method}-budget"),
            case(lambda m=method: mt.tune(tiny(), m, budget=500, seed=1.7), "seed", "1.7", "an integer >= 0",
                 f"tune-{method}-seed"),
            case(lambda m=method: mt.tune(tiny(), m, budget=500, bogus=1), "bogus", "1", "'steps'",
                 f"tune-{method}-unknown-option"),
            case(lambda m=method: mt.tune(tiny(), m, budget=500, steps=0), "steps", "0", ">= 1",
                 f"tune-{method}-steps"),
        ]
    return cases


METAGRAD = dict(budget=5_000)
TUNE = [
    *_tune_cases(),
    case(lambda: mt.tune(tiny(), "online", mode="reverse"), "mode", "'reverse'",
         "keyword argument of tune(method='online'), one of [", "tune-online-mode"),
    case(lambda: mt.tune(tiny(), "online", starts=3), "starts", "3", "'horizon'", "tune-online-starts"),
    case(lambda: mt.tune(tiny(), "online", horizon=0), "horizon", "0", "an integer >= 1", "tune-online-horizon"),
    case(lambda: mt.tune(tiny(), "sideways"), "method", "'sideways'", "'metagrad'", "tune-method"),
    case(lambda: mt.tune(tiny(), "tpe", backend="spark"), "backend", "'spark'", "['local', 'ray']",
         "tune-backend"),
    case(lambda: mt.tune("nope"), "objective", "'nope'", "'quadratic'", "tune-objective"),
    case(lambda: mt.tune(42, "tpe"), "objective", "42", "Objective", "tune-objective-type"),
    case(lambda: mt.tune(tiny(), "tpe", budget=5), "budget", "5", "at least one training run: 11",
         "tune-budget-small"),
    case(lambda: mt.tune(tiny(), "tpe", space="wide"), "space", "'wide'", "SearchSpace", "tune-space"),
    case(lambda: mt.tune(tiny(), "tpe", callback=3), "callback", "3", "a function", "tune-callback"),
    case(lambda: mt.tune(tiny(), "tpe", groups="rows"), "groups", "'rows'", "one of ('layers', 'tensors')",
         "tune-groups"),
    case(lambda: mt.tune(tiny(), "tpe", groups=["y"]), "groups", "['y']", "uncovered: ['x']",
         "tune-groups-uncovered"),
    case(lambda: mt.tune(tiny(), "grid", groups="layers"), "groups", "'layers'", "None: grid searches one η",
         "tune-grid-groups"),
    case(lambda: mt.tuners.check_groups("grid", ["x"], tiny().init_params(0)), "groups", "['x']",
         "None: grid searches one η and one β", "check-groups-grid"),
    case(lambda: mt.tuners.check_groups("online", "tensors", tiny().init_params(0)), "groups", "'tensors'",
         "None: online searches one η and one β", "check-groups-online"),
    case(lambda: mt.tuners.check_groups("sideways", None, {}), "method", "'sideways'", "'metagrad'",
         "check-groups-method"),
    case(lambda: mt.tune(tiny(), **METAGRAD, mode="truncated"), "mode", "'truncated'", "'forward', 'reverse']",
         "metagrad-mode"),
    case(lambda: mt.tune(tiny(), **METAGRAD, outer="sgd"), "outer", "'sgd'", "['bfgs', 'adam']",
         "metagrad-outer"),
    case(lambda: mt.tune(tiny(), **METAGRAD, meta_lr=0), "meta_lr", "0", "> 0", "metagrad-meta-lr"),
    case(lambda: mt.tune(tiny(), **METAGRAD, margin=1.0), "margin", "1.0", "[0, 1)", "metagrad-margin"),
    case(lambda: mt.tune(tiny(), **METAGRAD, guard="no"), "guard", "'no'", "False", "metagrad-guard"),
    case(lambda: mt.tune(tiny(), **METAGRAD, screen=-1), "screen", "-1", "None or an integer >= 0",
         "metagrad-screen"),
    case(lambda: mt.tune(tiny(), **METAGRAD, starts=0), "starts", "0", "an integer >= 1", "metagrad-starts"),
    case(lambda: mt.tune(tiny(), **METAGRAD, max_amplification=1.0), "max_amplification", "1.0", "> 1",
         "metagrad-max-amplification"),
    case(lambda: mt.tune(tiny(), **METAGRAD, max_amplification=math.nan), "max_amplification", "nan", "> 1",
         "metagrad-max-amplification-nan"),
    case(lambda: mt.tune(tiny(), **METAGRAD, horizon=5), "horizon", "5", "'guard'", "metagrad-unknown"),
]

COMPARE = [
    case(lambda: mt.compare(tiny(), methods="tpe"), "methods", "'tpe'", "a list of method names",
         "compare-methods-str"),
    case(lambda: mt.compare(tiny(), methods=["tpe", "sideways"]), "methods", "['tpe', 'sideways']",
         "unknown: ['sideways']", "compare-methods-unknown"),
    case(lambda: mt.compare(tiny(), seeds=5), "seeds", "5", "a list of integer seeds", "compare-seeds-int"),
    case(lambda: mt.compare(tiny(), seeds=[0, 1.5]), "seeds[1]", "1.5", "an integer >= 0", "compare-seeds-float"),
    case(lambda: mt.compare(tiny(), seeds=[]), "seeds", "[]", "at least one seed", "compare-seeds-empty"),
    case(lambda: mt.compare(tiny(), budget=0), "budget", "0", "> 0", "compare-budget"),
    case(lambda: mt.compare(tiny(), target=math.nan), "target", "nan", "a number", "compare-target"),
    case(lambda: mt.compare(tiny(), on_trial=3), "on_trial", "3", "a function", "compare-on-trial"),
    case(lambda: mt.compare(tiny(), ["tpe"], options={"tpe": {"mode": "reverse"}}), "mode", "'reverse'",
         "'space', 'steps']", "compare-options-unknown"),
    case(lambda: mt.compare(tiny(), ["tpe"], options={"gp": {}}), "options", "'gp'", "['tpe']",
         "compare-options-method"),
    case(lambda: mt.compare(tiny(), backend="spark"), "backend", "'spark'", "['local', 'ray']",
         "compare-backend"),
    case(lambda: mt.compare(tiny(), backend_options={"concurrency": 2}), "backend_options",
         "{'concurrency': 2}", "None unless backend='ray'", "compare-backend-options"),
    case(lambda: mt.compare(3.0), "objective", "3.0", "Objective", "compare-objective"),
]

OBJECTIVES = [
    case(lambda: objectives.get("nope"), "objective", "'nope'", "'quadratic'", "get-name"),
    case(lambda: objectives.get(["quadratic"]), "objective", "['quadratic']", "'quadratic'", "get-name-list"),
    case(lambda: objectives.get("quadratic", bogus=1), "bogus", "1", "'kappa'", "get-param"),
    case(lambda: objectives.parameters("nope"), "objective", "'nope'", "one of", "parameters-name"),
    case(lambda: objectives.register(""), "name", "''", "non-empty string", "register-name"),
    case(lambda: objectives.register("x")(3), "factory", "3", "a function", "register-factory"),
    case(lambda: objectives.unregister(3), "name", "3", "a registered objective's name", "unregister-name"),
    case(lambda: objectives.SearchSpace(lr_low=0.0), "lr_low", "0.0", "> 0", "space-lr-low"),
    case(lambda: objectives.SearchSpace(lr_low="small"), "lr_low", "'small'", "> 0", "space-lr-type"),
    case(lambda: objectives.SearchSpace(lr_low=1.0, lr_high=0.5), "space.lr", "(1.0, 0.5)", "0 < low < high",
         "space-lr-order"),
    case(lambda: objectives.SearchSpace(momentum_high=1.0), "momentum_high", "1.0", "[0, 1)",
         "space-momentum"),
    case(lambda: objectives.SearchSpace(lr_log="yes"), "lr_log", "'yes'", "True or False", "space-log"),
]

FACTORY_CASES = {
    "mlp-regression": [("hidden", 0, ">= 1"), ("noise", -0.1, ">= 0"), ("data_seed", -1, ">= 0"),
                       ("batch_size", 0, ">= 1")],
    "quadratic": [("dim", 1, ">= 2"), ("dim", 2.5, "an integer"), ("kappa", 0.5, ">= 1"),
                  ("kappa", math.inf, "finite"), ("rotation_seed", -1, ">= 0"), ("steps", 0, ">= 1"),
                  ("dtype", "float16", "'float64'"), ("spectrum", "cubic", "'log'"), ("device", "gpu-please", "torch device")],
    "rosenbrock": [("dim", 1, ">= 2"), ("a", math.nan, "finite"), ("b", 0.0, "> 0"), ("jitter", -1.0, ">= 0"),
                   ("steps", 0, ">= 1")],
    "logistic-digits": [("data_seed", -1, ">= 0"), ("batch_size", 0, ">= 1"), ("weight_decay", -1.0, ">= 0"),
                        ("steps", 0, ">= 1"), ("dtype", "half", "'float32'")],
    "mlp-digits": [("hidden", 0, ">= 1"), ("batch_size", True, "an integer"), ("steps", 1.5, "an integer")],
    "cnn-digits": [("width", 0, ">= 1"), ("data_seed", 0.5, "an integer")],
    "autoencoder-digits": [("hidden", 0, ">= 1"), ("code", -1, ">= 1"), ("data_seed", -1, ">= 0"),
                           ("batch_size", 0, ">= 1"), ("steps", 0, ">= 1")],
    "rnn-sequence": [("length", 1, ">= 2"), ("hidden", 0, ">= 1"), ("n_train", 0, ">= 1"), ("n_val", -3, ">= 1"),
                     ("batch_size", 0, ">= 1"), ("data_seed", 1.5, "an integer"), ("steps", 0, ">= 1")],
}
FACTORIES = [
    case(lambda n=name, k=key, v=value: objectives.get(n, **{k: v}), key, repr(value), expected,
         f"{name}-{key}-{value}")
    for name, rows in FACTORY_CASES.items() for key, value, expected in rows
]

COSTS = [
    case(lambda: costs.CostModel().hvps(-1), "count", "-1", ">= 0", "cost-hvps"),
    case(lambda: costs.CostModel(backward_step=math.nan), "backward_step", "nan", ">= 0", "cost-backward"),
    case(lambda: costs.CostModel().hypergrad("sideways", 10), "mode", "'sideways'", "'forward'", "cost-mode"),
    case(lambda: costs.CostModel().hypergrad("forward", 0), "steps", "0", ">= 1", "cost-steps"),
    case(lambda: costs.CostModel().hypergrad("forward", 10, 0), "hyperparameters", "0", ">= 1",
         "cost-hyperparameters"),
    case(lambda: costs.CostModel().hypergrad("truncated", 10, window=11), "window", "11", "[1, 10]",
         "cost-window"),
    case(lambda: costs.CostModel().hypergrad("reverse", 10, checkpoint=0), "checkpoint", "0", ">= 1",
         "cost-checkpoint"),
    case(lambda: costs.measure(3, PARAMS), "train_loss", "3", "a function (params, batch)", "measure-loss"),
    case(lambda: costs.measure(loss, {}), "params", "'dict'", "non-empty dict", "measure-params"),
]


def _distributed_cases() -> list[Any]:
    def dist() -> Any:
        return pytest.importorskip("metatune.distributed")

    return [
        case(lambda: dist().run(mt.TuningJob("tiny", "tpe", budget=500, concurrency=0), objective=tiny()), "concurrency", "0", ">= 1", "run-concurrency"),
        case(lambda: dist().run(mt.TuningJob("tiny", "tpe", budget=500), objective=tiny(), max_retries=-1), "max_retries", "-1", ">= 0",
             "run-max-retries"),
        case(lambda: dist().run(mt.TuningJob("tiny", "tpe", budget=500), objective=tiny(), reuse_actors="yes"), "reuse_actors", "'yes'", "True or False",
             "run-reuse-actors"),
        case(lambda: dist().run(mt.TuningJob("tiny", "tpe", budget=500), objective=tiny(), cancel=3), "cancel", "3", "threading.Event", "run-cancel"),
        case(lambda: dist().run(mt.TuningJob("tiny", "tpe", budget=500, resources={"cpu": 0})), "resources.cpu", "0", "(0, 1024]",
             "run-resources-cpu"),
        case(lambda: dist().run(mt.TuningJob("tiny", "tpe", budget=500, resources={"gpus": 1})), "resources", "{'gpus': 1}",
             "'cpu', 'gpu'", "run-resources-keys"),
        case(lambda: dist().run(mt.TuningJob("tiny", "online", budget=500), objective=tiny()), "method", "'online'", "runs in-process only",
             "run-method"),
        case(lambda: dist().run(mt.TuningJob("tiny", "tpe", budget=500, options={"mode": "reverse"}), objective=tiny()),
             "mode", "'reverse'", "one of []",
             "run-unknown-option"),
        case(lambda: (dist(), mt.tune(tiny(), "tpe", 500, backend="ray", bogus=1))[1], "bogus", "1", "'steps'",
             "tune-ray-unknown-option"),
        case(lambda: dist().Resources(gpu=-1), "resources.gpu", "-1", "[0, 64]", "resources-gpu"),
        case(lambda: dist().MetagradSearch(starts=0), "starts", "0", ">= 1", "search-starts"),
        case(lambda: dist().MetagradSearch(starts=[(0.1, 1.0)]), "starts[0][1]", "1.0", "[0, 1)",
             "search-starts-momentum"),
        case(lambda: dist().MetagradSearch(outer="sgd"), "outer", "'sgd'", "['bfgs', 'adam']", "search-outer"),
        case(lambda: dist().MetagradSearch(meta_lr=-1.0), "meta_lr", "-1.0", "> 0", "search-meta-lr"),
        case(lambda: dist().MetagradSearch(space={"lr": 1}), "space", "{'lr': 1}", "SearchSpace", "search-space"),
        case(lambda: dist().MetagradSearch(seed=-2), "seed", "-2", ">= 0", "search-seed"),
        case(lambda: dist().ensure_ray(3), "ray_address", "3", "host:port", "ensure-ray-address"),
    ]


ALL = ENGINE + DYNAMICS + STABILITY + TUNE + COMPARE + OBJECTIVES + FACTORIES + COSTS + _distributed_cases()


@pytest.mark.parametrize(("call", "name", "shown", "expected"), ALL)
def test_bad_input_names_the_argument_its_value_and_the_valid_range(
    call: Callable[[], Any], name: str, shown: str, expected: str
) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert isinstance(info.value, InvalidArgumentError)
    message = str(info.value)
    assert message.startswith(f"{name}={shown}"), message
    head, _, valid = message.partition(" is invalid: expected ")
    assert valid, message
    assert expected in valid, message


def test_every_public_entry_point_has_a_case() -> None:
    """Every function and class of the public API that takes arguments appears in a case."""
    import inspect

    source = inspect.getsource(inspect.getmodule(test_every_public_entry_point_has_a_case))
    public = {
        "mt": [n for n in mt.__all__ if callable(getattr(mt, n)) and not inspect.isclass(getattr(mt, n))],
        "stability": [n for n in stability.__all__ if inspect.isfunction(getattr(stability, n))]
        + ["HessianOperator"],
        "dynamics": ["init_state", "heavy_ball", "nesterov", "update_rule", "group_hyperparameter", "check_lr",
                     "check_momentum"],
        "objectives": [n for n in objectives.__all__ if inspect.isfunction(getattr(objectives, n))
                       and n not in ("names", "describe", "load_entry_points")] + ["SearchSpace"],
        "costs": ["measure", "CostModel"],
    }
    missing = [f"{module}.{name}" for module, names in public.items() for name in names
               if f"{module}.{name}(" not in source]
    assert not missing


def test_the_messages_read_as_the_design_says() -> None:
    """Spot checks of whole messages: what a user reads."""
    own = mt.tuners.accepted_options("online")
    assert {"horizon", "meta_lr", "margin", "guard", "max_amplification"} <= set(own)
    assert not {"mode", "outer", "screen", "starts", "budget", "seed", "callback", "space", "steps"} & set(own)
    accepted = sorted([*own, "concurrency", "groups", "history", "resources", "schedule", "space", "steps"])
    with pytest.raises(ValueError) as info:
        mt.tune(tiny(), "online", mode="reverse")
    assert str(info.value) == (
        f"mode='reverse' is invalid: expected a keyword argument of tune(method='online'), one of {accepted}"
    )
    with pytest.raises(ValueError) as info:
        mt.unroll(**UNROLL | {"steps": 0})
    assert str(info.value) == "steps=0 is invalid: expected an integer >= 1"
    with pytest.raises(ValueError) as info:
        mt.unroll(**UNROLL | {"nesterov": "no"})
    assert str(info.value) == "nesterov='no' is invalid: expected True or False"
