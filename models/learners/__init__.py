"""Learners: SGD, EKF, DEKF, PF, an EKF-trained feed-forward net, their ensemble and the baselines, all behind
`base.Learner`.

The registry below is the one list of learners: the daemon's settings, `streamer bench`, the
conformance suite and the checkpoint code all read it."""

from __future__ import annotations

from typing import Any

import torch

from models import defaults
from models.cells import NetSpec
from models.learners.base import Learner, State
from models.learners.baselines import MeanLearner, PersistenceLearner, RLSConfig, RLSLearner
from models.learners.ekf import DEKFConfig, DEKFLearner, EKFConfig, EKFLearner
from models.learners.ensemble import EnsembleConfig, EnsembleLearner
from models.learners.mlp import MLPConfig, MLPLearner
from models.learners.pf import PFConfig, PFLearner
from models.learners.sgd import SGDConfig, SGDLearner

# name -> (learner class, its config dataclass or None when it takes no options)
REGISTRY: dict[str, tuple[type, type | None]] = {
    "ensemble": (EnsembleLearner, EnsembleConfig),
    "sgd": (SGDLearner, SGDConfig),
    "ekf": (EKFLearner, EKFConfig),
    "dekf": (DEKFLearner, DEKFConfig),
    "pf": (PFLearner, PFConfig),
    "mlp": (MLPLearner, MLPConfig),
    "mean": (MeanLearner, None),
    "persistence": (PersistenceLearner, None),
    "linear": (RLSLearner, RLSConfig),
}
BASELINES = defaults.BASELINE_NAMES  # what every learner is judged against
LEARNERS = defaults.LEARNER_NAMES  # the ones that train a net (or mix several)
assert set(REGISTRY) == set(LEARNERS + BASELINES), "models.defaults and the registry list other learners"
RECURRENT = defaults.RECURRENT_NAMES  # one recurrent net each: they take a warm start's theta (the model's)
assert set(RECURRENT) <= set(LEARNERS)
WARM_STARTABLE = (*RECURRENT, "ensemble")  # the learners on the model's recurrent net, whose weights a warm start holds
CONFIGS: dict[str, type] = {n: c for n, (_, c) in REGISTRY.items() if c is not None}
DEFAULT_LEARNER = defaults.LEARNER


def make_learner(name: str, spec: NetSpec, dtype: torch.dtype = torch.float32, warm: bool = False,
                 **overrides: Any) -> Learner:
    """Build a learner by name; `overrides` are fields of its config dataclass.

    `warm`: its keys start from an offline-trained theta, so it fine-tunes rather than learns from
    nothing: the config's `*_warm` settings replace their cold counterparts (SGD a smaller step,
    PF a slower random walk of the read-out; EKF's smaller P_0 is applied by init_state)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown learner {name!r}; choose from {', '.join(REGISTRY)}")
    cls, config_cls = REGISTRY[name]
    if config_cls is None:
        if overrides:
            raise ValueError(f"{name} takes no options, got {sorted(overrides)}")
        return cls(spec, dtype)  # type: ignore[no-any-return]
    config = config_cls(**overrides)
    if name == "ensemble":
        return EnsembleLearner(spec, config, dtype, warm=warm)
    if warm and hasattr(config, "for_warm_start"):
        config = config.for_warm_start()
    return cls(spec, config, dtype)  # type: ignore[no-any-return]


__all__ = ["REGISTRY", "LEARNERS", "RECURRENT", "WARM_STARTABLE", "BASELINES", "CONFIGS", "DEFAULT_LEARNER", "Learner",
           "State", "make_learner", "NetSpec"]
