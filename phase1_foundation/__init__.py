"""Phase 1, days 1-20: from a NumPy matrix product to a Trainer, on MNIST."""
