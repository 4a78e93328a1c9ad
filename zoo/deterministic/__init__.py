"""The companion deterministic module: the S5 layer and parallel evaluation of nonlinear
recurrences (DEER, quasi-DEER, ELK, quasi-ELK), both built on the scans of :mod:`zoo.scans`."""

from zoo.deterministic import elk, rnn, s5

__all__ = ["elk", "rnn", "s5"]
