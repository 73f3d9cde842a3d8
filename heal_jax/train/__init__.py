"""Trainer: state, optimizer, loss, step, checkpoints, metrics, phases, the loop."""
