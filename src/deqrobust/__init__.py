"""deqrobust: adversarial robustness of deep equilibrium models, reproduced."""

__version__ = "0.2.0"
