"""The breast-cancer data set bundled with scikit-learn (569 x 30), for logistic regression."""

from __future__ import annotations

import numpy as np


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """Standardised features with a bias column and 0/1 labels; no download.

    Returns:
      ``features [569, 31]`` (float32; each of the 30 columns has mean 0 and variance 1, the
      last column is all ones) and ``labels [569]`` (float32, 1 = benign).
    """
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    features = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1).astype(np.float32)
    return features, y.astype(np.float32)
