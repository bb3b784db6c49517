"""Phase 2, days 21-40: a CIFAR-10 CNN, its evaluation, and a hyperparameter search."""
