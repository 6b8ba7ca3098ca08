"""The epoch loop and what it computes each epoch: metrics, flags, learning-rate schedules."""
