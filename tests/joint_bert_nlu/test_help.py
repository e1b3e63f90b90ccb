"""``--help`` of the command lines answers without importing torch or transformers (issue #27, item 3)."""

from __future__ import annotations

import pytest

from tests.help_probe import help_output

HEAVY = ("torch", "transformers", "seqeval", "sklearn")


@pytest.mark.parametrize("module, expect", [("joint_bert_nlu.train", "== Configuration groups =="),
                                            ("joint_bert_nlu.predict", "--ood-threshold")])
def test_help_imports_neither_torch_nor_transformers(module, expect):
    text, heavy = help_output(module, HEAVY)
    assert expect in text and heavy == "HEAVY []"
