"""deqrobust: adversarial robustness of deep equilibrium models, reproduced."""

__version__ = "0.1.0"
