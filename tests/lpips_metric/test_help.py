"""``--help`` of the command lines answers without importing torch (issue #27: under 2 s)."""

from __future__ import annotations

import pytest

from tests.help_probe import help_output

HEAVY = ("torch", "torchvision", "transformers", "torchmetrics")


@pytest.mark.parametrize("module, expect", [("lpips_metric.train", "== Configuration groups =="),
                                            ("lpips_metric.compare", "--trunk TRUNK")])
def test_help_does_not_import_torch(module, expect):
    text, heavy = help_output(module, HEAVY)
    assert expect in text and heavy == "HEAVY []"
