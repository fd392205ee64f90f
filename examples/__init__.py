"""Estimators that live outside the ``estimators`` package, as a user's own would."""
