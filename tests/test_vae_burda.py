"""Burda et al.'s (2016) Table 1 settings: the learning-rate schedule against its closed form,
the VAE's k averaged samples against the variance they must divide, and every Table 1 config
run end to end at a tiny size (MNIST-format files of random images, no download)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import _config as cfg
from experiments import run_experiment, vae
from experiments.vae import config as vae_config
from experiments.vae import train

BURDA = [f"burda_{objective}_k{k}" for objective in ("vae", "iwae") for k in (1, 5, 50)]


def _stage(epoch: int) -> int:
    """Burda et al.'s stage of 0-based ``epoch``: stage i spans 3^i epochs."""
    ends = np.cumsum([3**i for i in range(vae_config.BURDA_STAGES)])
    return min(int(np.searchsorted(ends, epoch, side="right")), vae_config.BURDA_STAGES - 1)


def test_table1_configs_hold_the_papers_settings():
    for name in BURDA:
        config = cfg.load_config(name)
        objective, k = name.split("_")[1], int(name.split("_k")[1])
        assert config.hidden == (200, 200) and config.latent_dim == 50
        assert config.activation == "tanh" and config.binarization == "dynamic"
        assert config.batch_size == 20 and config.adam_eps == 1e-4
        assert config.lr_schedule == "burda" and config.learning_rate == 1e-3
        assert config.num_epochs == sum(3**i for i in range(8)) == 3280
        assert config.ll_num_samples == 5000 and config.ll_test_examples == 0
        assert config.train_examples == 0 and config.test_examples == 0
        assert config.num_samples == k
        assert config.estimator == ("pathwise" if objective == "vae" else "iwae")
        assert config.average_samples == (objective == "vae")


def test_schedule_and_adam_match_the_closed_form_at_every_step():
    """With a constant gradient of 1 Adam's bias-corrected moments are exactly 1, so update n
    is -rate(n) / (1 + eps): every step of the 3,280-step schedule (one step per epoch) is
    checked against 1e-3 * 10^(-i/7) of its stage."""
    config = cfg.load_config("burda_vae_k1")
    optimizer = train.make_optimizer(config, steps_per_epoch=1)
    params = jnp.zeros(())

    def step(opt, _):
        updates, opt = optimizer.update(jnp.ones(()), opt, params)
        return opt, updates

    _, updates = jax.lax.scan(step, optimizer.init(params), length=3300)
    want = np.array([-1e-3 * 10 ** (-_stage(n) / 7) / (1 + 1e-4) for n in range(3300)])
    # float32 rounds 1 - 0.999^t by up to 2^-24 / (1 - 0.999) = 6e-5 relative, 3e-5 after the
    # square root; neighbouring stages differ by 10^(1/7) = 1.39x.
    rtol = 2.0**-24 / (1 - 0.999) / 2 + 4 * 2.0**-24
    np.testing.assert_allclose(np.asarray(updates), want, rtol=rtol)
    assert updates[0] == pytest.approx(-1e-3 / (1 + 1e-4), rel=rtol)
    assert updates[-1] == pytest.approx(-1e-4 / (1 + 1e-4), rel=rtol)
    # The constant schedule is Adam's default, unchanged (old runs resume bit for bit).
    constant = cfg.load_config("vae_mnist")
    assert train.learning_rate(constant, None) == 1e-3
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train.learning_rate(config, None)


def _example_losses(name: str, overrides: list[str], num_keys: int) -> np.ndarray:
    """The per-example loss (negative ELBO estimate) of one fixed image at fixed parameters
    under ``num_keys`` keys, for config ``name`` at a tiny size."""
    config = cfg.load_config(name)
    cfg.apply_overrides(config, ["hidden=(8, 8)", "latent_dim=3", *overrides])
    setup, state = vae.init_run(config, 16, num_batches=1)
    model = nnx.merge(setup.graphdef, state["params"])
    x = (jnp.arange(16) % 3 == 0).astype(jnp.float32)

    @jax.jit
    def losses(keys):
        return jax.vmap(lambda key: train.example_loss(setup, model, x, key, ())[0])(keys)

    return np.asarray(losses(jax.random.split(jax.random.key(1), num_keys)), np.float64)


def _variance_and_se(v: np.ndarray) -> tuple[float, float]:
    """The sample variance and its standard error sqrt((m4 - s^4) / n) (any distribution)."""
    d = v - v.mean()
    s2 = float(np.mean(d**2))
    return s2, math.sqrt(float(np.mean(d**4)) - s2**2) / math.sqrt(len(v))


def _z_average_of_k(k_losses: np.ndarray, one_losses: np.ndarray, k: int) -> float:
    """z of Var[k-sample loss] - Var[one-sample loss] / k (independent keys)."""
    vk, sk = _variance_and_se(k_losses)
    v1, s1 = _variance_and_se(one_losses)
    return (vk - v1 / k) / math.hypot(sk, s1 / k)


def test_vae_k_averages_k_independent_samples():
    """burda_vae_k5's loss is the mean of 5 independent single-sample ELBO estimates: at the same
    parameters its variance is the single-sample variance / 5 (z within 4, one test), and the
    companion check, average_samples off, is rejected by the same statistic."""
    n = 20_000
    one = _example_losses("burda_vae_k1", [], n)
    five = _example_losses("burda_vae_k5", [], n)
    assert abs(_z_average_of_k(five, one, 5)) < 4
    assert np.mean(five) == pytest.approx(np.mean(one), abs=5 * np.std(one) / math.sqrt(n))
    # Companion: without averaging the k5 config draws one sample; the statistic sees it.
    unaveraged = _example_losses("burda_vae_k5", ["average_samples=false"], n)
    assert abs(_z_average_of_k(unaveraged, one, 5)) > 10


@pytest.mark.parametrize("name", BURDA)
def test_table1_config_runs_at_a_tiny_size(tmp_path, small_idx_dir, name):
    """Each Table 1 config end to end: two epochs (across the schedule's first stage end) on
    300 random images in batches of 20, then the importance-sampled log p(x)."""
    config = cfg.load_config(name)
    cfg.apply_overrides(
        config,
        [
            f"data_dir={small_idx_dir}",
            "verify_checksums=false",
            "num_epochs=2",
            "test_examples=20",
            "hidden=(8, 8)",
            "latent_dim=3",
            "ll_num_samples=50",
            "ll_chunk_size=50",
            "grad_var_num_estimates=3",
            "grad_var_batch_size=8",
            "progress=false",
            "figures=false",
        ],
    )
    results = run_experiment(config, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [15, 30]  # 300 images / 20
    assert results["epochs"] == 2 and np.isfinite(results["test_elbo"])
    assert np.isfinite(results["test_log_likelihood"])


def test_bad_schedule_values_are_named():
    for override, key in [
        ("lr_schedule=cosine", "lr_schedule"),
        ("adam_eps=0.0", "adam_eps"),
    ]:
        config = cfg.load_config("burda_vae_k5")
        cfg.apply_overrides(config, [override])
        with pytest.raises(ValueError, match=key):
            vae.validate(config)
