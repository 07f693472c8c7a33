"""What branch and bound proves: a property of a network's outputs over an input set.

VNN-LIB's form, a disjunction of conjunctions of linear output constraints: the property is
violated at an output z when, for some group, every row of the group has ``C z <= d``.
Robustness is one row ``z_y - z_j`` per other class j, each its own group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Property:
    """Rows ``C`` [S, K], thresholds ``d`` [S] and ``group`` [S]: violated at output z when
    some group has ``C[r] z <= d[r]`` for all of its rows; proved on a set when every group
    has a row whose lower bound of ``C[r] z`` exceeds ``d[r]`` there."""

    C: torch.Tensor
    d: torch.Tensor
    group: torch.Tensor

    @classmethod
    def robustness(cls, label: int, classes: int, device=None) -> "Property":
        """z_label > z_j for every other class j."""
        others = [j for j in range(classes) if j != label]
        C = torch.zeros(len(others), classes, device=device)
        C[:, label] = 1.0
        C[torch.arange(len(others)), others] = -1.0
        return cls(C, torch.zeros(len(others), device=device), torch.arange(len(others), device=device))

    def proved(self, lower: torch.Tensor) -> torch.Tensor:
        """[D] True where every group has a row whose bound (``lower`` [D, S]) beats its d."""
        return self.worst(lower - self.d) > 0

    def violated(self, z: torch.Tensor) -> torch.Tensor:
        """[P] True where the outputs ``z`` [P, K] violate the property."""
        return self.value(z) <= 0

    def value(self, z: torch.Tensor) -> torch.Tensor:
        """[P]: the smallest over groups of the largest ``C z - d`` in the group (<= 0 where
        violated): what the falsifier descends."""
        return self.worst(z @ self.C.T - self.d)

    def worst(self, slack: torch.Tensor) -> torch.Tensor:
        """[P]: per row of ``slack`` [P, S], the min over groups of the max over the group's rows."""
        return self.groups(slack).min(1).values

    def groups(self, slack: torch.Tensor) -> torch.Tensor:
        """[P, G]: per row of ``slack`` [P, S] and group, the max over the group's rows."""
        groups = int(self.group.max()) + 1
        worst = torch.full((len(slack), groups), float("-inf"), device=slack.device, dtype=slack.dtype)
        return worst.scatter_reduce(1, self.group.expand(len(slack), -1), slack, "amax")
