"""Data sets: the paper's synthetic problems and MNIST, split, z-scored, on the device."""
from gradflow_exp.data.dataset import Dataset, build_dataset

__all__ = ["Dataset", "build_dataset"]
