"""Training and evaluation: the options (built once), the Trainer, the Evaluator, optimizer and EMA, the run log,
DDP helpers, AutoBatch, AutoAnchor and hyperparameter evolution. The inference front is its sibling: neither imports
the other."""
