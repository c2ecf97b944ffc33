"""The default model, in one place: the daemon's settings and `streamer bench` both read it, so
bench's table predicts what the daemon does with no flags. Torch-free (the CLI imports it at start).

Chosen by measurement on every stream in ../shared/data and the demo's keys (benchmarks/RESULTS.md,
"How the defaults were chosen"): the per-key ensemble, an LSTM of 16 with the skip head (a lone
learner on a tick stream needs its direct path v^T x on the lags: without it SGD loses to persistence
by 59% and 127% on two of the demo's keys), online normalisation of every key's inputs and target.
The ensemble's recurrent experts use the plain head (`EnsembleConfig.expert_head`): its RLS expert
carries the linear part, and without the direct path the ensemble is 3-14% better on every
regression stream (level on ETTh1). Its Kalman experts run smaller than the model (a DEKF at m=8, a
full EKF at m=6: `EnsembleConfig.expert_hidden_max`), which beats one DEKF at m=16 on every stream
in less memory. Beside them an EKF-trained feed-forward net of the regressor (`mlp`, m=16): where the
target is a function of the inputs now, it learns faster than any recurrent net (8-14% lower error on
the regression streams, level on ETTh1, level or better on the demo's keys)."""

from __future__ import annotations

from typing import Literal

# the learners a key can run (each trains a net, or mixes several), and the baselines
LEARNER_NAMES = ("ensemble", "sgd", "ekf", "dekf", "pf", "mlp")
RECURRENT_NAMES = ("sgd", "ekf", "dekf", "pf")  # those whose net is the model's recurrent one (a warm start's)
BASELINE_NAMES = ("mean", "persistence", "linear")
LearnerName = Literal["ensemble", "sgd", "ekf", "dekf", "pf", "mlp"]  # the same list, for pydantic (a test checks it)

LEARNER: LearnerName = "ensemble"
CELL: Literal["lstm", "gru"] = "lstm"
HEAD: Literal["plain", "skip", "gated"] = "skip"
HIDDEN = 16
LAGS = 4  # the daemon's regressor: a key's last 4 values (`streamer bench --lags 3`: 3 past ones beside the current)
NORMALIZE: Literal["online", "none"] = "online"
