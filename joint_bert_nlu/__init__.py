"""Joint BERT (Chen et al. 2019): joint intent classification and slot filling on ATIS and SNIPS.

Library entry points (no Hydra needed):
    data.load_dataset, data.EncodedDataset, data.collate      reading and encoding
    model.JointBertModel.from_encoder / .from_pretrained      the joint model
    training.train_joint                                      fine-tuning with the common Trainer
    evaluate.evaluate_examples, evaluate.compute_metrics      intent acc, slot F1 (seqeval), sentence acc
    inference.JointNLUPredictor                               raw text -> intent + slot spans
Command lines: ``python -m joint_bert_nlu.{train,predict,reproduce,bench}``; see README.md.

Importing the package registers its typed Hydra schemas (``joint_bert_nlu.config``, ``schema/joint_bert_nlu/...``),
which ``conf/`` needs to compose.
"""

from . import config as _config  # noqa: F401
