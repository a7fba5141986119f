"""Fine-tuning: a run of the stock sentence-transformers trainer (``trainer.py``), the loss for
the data's shape (``losses.py``), token-budget batches (``batches.py``) and reuse of the frozen
layers' states (``frozen_states.py``), and queries the model writes for an unlabelled corpus
(``generated_queries.py``). Install with ``pip install "echo-embeddings[train]"``.

The readers of training files live in :mod:`echo_embeddings.data` and are re-exported here.
"""

from ..data import Passage, TrainingData, pairs_from_corpus, read_passages, read_training_file, read_training_files
from .generated_queries import generate_queries, load_generator, queries_from_corpus, round_trip, write_pairs
from .losses import LOSSES, check_loss, evaluator_for, loss_for
from .trainer import ROUTES, below_count, layers_below_output, train

__all__ = [
    "LOSSES",
    "ROUTES",
    "Passage",
    "TrainingData",
    "below_count",
    "check_loss",
    "evaluator_for",
    "generate_queries",
    "load_generator",
    "layers_below_output",
    "loss_for",
    "pairs_from_corpus",
    "queries_from_corpus",
    "read_passages",
    "read_training_file",
    "read_training_files",
    "round_trip",
    "train",
    "write_pairs",
]
