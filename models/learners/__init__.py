"""Learners: SGD, EKF, DEKF, PF and the baselines, all behind `base.Learner`."""

from __future__ import annotations

from typing import Any

import torch

from models.cells import NetSpec
from models.learners.base import Learner, State
from models.learners.baselines import MeanLearner, PersistenceLearner, RLSConfig, RLSLearner
from models.learners.ekf import DEKFLearner, EKFConfig, EKFLearner
from models.learners.pf import PFConfig, PFLearner
from models.learners.sgd import SGDConfig, SGDLearner

LEARNERS = ("sgd", "ekf", "dekf", "pf")
BASELINES = ("mean", "persistence", "linear")
CONFIGS: dict[str, type] = {"sgd": SGDConfig, "ekf": EKFConfig, "dekf": EKFConfig, "pf": PFConfig, "linear": RLSConfig}


def make_learner(name: str, spec: NetSpec, dtype: torch.dtype = torch.float32, warm: bool = False,
                 **overrides: Any) -> Learner:
    """Build a learner by name; `overrides` are fields of its config dataclass.

    `warm`: its keys start from an offline-trained theta, so it fine-tunes rather than learns from
    nothing: the config's `*_warm` settings replace their cold counterparts (SGD a smaller step,
    PF a slower random walk of the read-out; EKF's smaller P_0 is applied by init_state)."""
    if name not in LEARNERS + BASELINES:
        raise ValueError(f"unknown learner {name!r}; choose from {', '.join(LEARNERS + BASELINES)}")
    if name in ("mean", "persistence"):
        if overrides:
            raise ValueError(f"{name} takes no options, got {sorted(overrides)}")
        return (MeanLearner if name == "mean" else PersistenceLearner)(spec, dtype)
    config = CONFIGS[name](**overrides)
    if warm and hasattr(config, "for_warm_start"):
        config = config.for_warm_start()
    cls = {"sgd": SGDLearner, "ekf": EKFLearner, "dekf": DEKFLearner, "pf": PFLearner, "linear": RLSLearner}[name]
    return cls(spec, config, dtype)


__all__ = ["LEARNERS", "BASELINES", "Learner", "State", "make_learner", "NetSpec"]
