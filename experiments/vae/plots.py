"""Figures of the VAE runs, drawn only from saved results (``plot(workdir)`` redraws them)."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from .._workdir import read_json, save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(images: np.ndarray, shape: tuple[int, int], cols: int, pad: int = 1) -> np.ndarray:
    """``[n, h*w]`` -> one image of ``rows x cols`` cells, ``pad`` blank pixels between cells."""
    h, w = shape
    n = len(images)
    rows = -(-n // cols)
    out = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad), np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = r * (h + pad), c * (w + pad)
        out[y : y + h, x : x + w] = img.reshape(h, w)
    return out


def _image_shape(config: dict[str, Any], dim: int) -> tuple[int, int]:
    side = int(round(dim**0.5))
    if side * side != dim:
        raise ValueError(f"cannot draw images of {dim} pixels as a square")
    return side, side


def _show(plt, image: np.ndarray, title: str, stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5, 5 * image.shape[0] / image.shape[1]))
    ax.imshow(image, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def plot_run(workdir: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> list[Path]:
    """Samples, reconstructions, ELBO and gradient-variance curves, manifold (latent size 2)."""
    plt = _pyplot()
    workdir = Path(workdir)
    paths: list[Path] = []
    est = config["estimator"]
    npz_path = workdir / "figures_data.npz"
    if npz_path.exists():
        arrays = np.load(npz_path)
        shape = _image_shape(config, arrays["samples"].shape[1])
        paths += _show(
            plt, _grid(arrays["samples"], shape, 8), f"samples (means), {est}", workdir / "samples"
        )
        pairs = np.concatenate([arrays["originals"], arrays["reconstructions"]])
        paths += _show(
            plt,
            _grid(pairs, shape, 16),
            f"test images (top) and reconstructions (bottom), {est}",
            workdir / "reconstructions",
        )
        if "manifold" in arrays:
            m = arrays["manifold"]
            side = int(round(len(m) ** 0.5))
            paths += _show(
                plt, _grid(m, shape, side), f"2-D latent manifold, {est}", workdir / "manifold"
            )
    if rows:
        paths += plot_curves(workdir, {est: rows}, title=config["dataset"])
    return paths


def plot_curves(
    workdir: Path,
    runs: dict[str, list[dict[str, Any]]],
    *,
    title: str,
    other_objective: Collection[str] = (),
) -> list[Path]:
    """ELBO curves, and each run's gradient variance at its OWN parameters, one plot each;
    the runs named in ``other_objective`` (IWAE-bound gradients) are marked †."""
    plt = _pyplot()
    paths = []
    finals = {
        name: [r["test_elbo"] for r in rows if "test_elbo" in r][-1:] or [-rows[-1]["train_loss"]]
        for name, rows in runs.items()
        if rows
    }
    top = max(v[0] for v in finals.values())
    mid = float(np.median([v[0] for v in finals.values()]))
    low = mid - 2 * (top - mid) - 10  # runs far below the others are drawn off scale
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in runs.items():
        ep = [r["epoch"] for r in rows]
        (line,) = ax.plot(ep, [-r["train_loss"] for r in rows], lw=1, alpha=0.6)
        te = [(r["epoch"], r["test_elbo"]) for r in rows if "test_elbo" in r]
        label = name if finals.get(name, [top])[0] >= low else f"{name} (off scale)"
        if te:
            ax.plot(*zip(*te, strict=True), "o-", ms=3, color=line.get_color(), label=label)
    ax.set_ylim(low, top + 0.1 * (top - low))
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats; dots: test ELBO, line: training objective\n(the K-sample bound for iwae)")
    ax.set_title(f"{title}: ELBO during training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths += save_figure(fig, Path(workdir) / "elbo_curves")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for name, rows in runs.items():
        gv = [
            (
                r["epoch"],
                r["own_params_grad_var_per_sample"],
                r["own_params_grad_var_per_sample_se"],
            )
            for r in rows
            if "own_params_grad_var_per_sample" in r
        ]
        if gv:
            ep, v, se = (np.asarray(c) for c in zip(*gv, strict=True))
            n = rows[-1].get("own_params_grad_var_num_estimates", "?")
            label = f"{name} (M = {n})" + (" †" if name in other_objective else "")
            ax.errorbar(ep, v, yerr=se, fmt="o-", ms=3, capsize=2, label=label)
            drawn = True
    if drawn:
        ax.set_yscale("log")
    ax.set_xlabel("epoch of each run's own training")
    ax.set_ylabel("per-sample variance of the encoder gradient\n(trace, × K), ± jackknife SE")
    ax.set_title(
        f"{title}: at each run's OWN parameters and baseline state\n"
        "(not comparable across estimators; †: gradient of the IWAE bound)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax.grid(alpha=0.3, which="both")
    paths += save_figure(fig, Path(workdir) / "grad_variance_own_params")
    plt.close(fig)
    return paths


def plot_protocol_variance(workdir: Path, protocol: dict[str, Any], *, title: str) -> list[Path]:
    """``grad_variance``: every estimator's per-sample variance (± jackknife SE) at the SAME
    parameters, the reference run's checkpoints (``vae.compare``'s protocol)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    names = list(dict.fromkeys(r["estimator"] for r in protocol["rows"]))
    for name in names:
        rows = [r for r in protocol["rows"] if r["estimator"] == name and r["finite"]]
        if not rows:
            continue
        ep = np.asarray([r["epoch"] for r in rows])
        v = np.asarray([r["per_sample_variance"] for r in rows])
        se = np.asarray([r["per_sample_variance_se"] for r in rows])
        other = rows[0]["objective"] != "ELBO"
        label = f"{name}, K = {rows[0]['samples_per_example']}"
        label += " († IWAE-bound gradient: other objective)" if other else ""
        ax.errorbar(
            ep,
            v,
            yerr=se,
            fmt="s--" if other else "o-",
            ms=4,
            capsize=3,
            label=label,
            alpha=0.6 if other else 1.0,
        )
    ax.set_yscale("log")
    ax.set_xticks(protocol["checkpoint_epochs"])
    ax.set_xlabel(f"checkpoint: end of epoch of the {protocol['reference']} run")
    ax.set_ylabel("per-sample variance of one encoder-gradient\nestimate (trace, × K), ± SE")
    ax.set_title(
        f"{title}: every estimator at the same parameters, batch of {protocol['batch_size']} "
        f"and keys\n{protocol['num_estimates']} estimates each; SE: jackknife",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax.grid(alpha=0.3, which="both")
    paths = save_figure(fig, Path(workdir) / "grad_variance")
    plt.close(fig)
    return paths


def read_rows(workdir: Path) -> list[dict[str, Any]]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def read_results(workdir: Path) -> dict[str, Any]:
    return read_json(Path(workdir) / "results.json")
