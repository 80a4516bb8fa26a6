"""Example trainables: the paper's toy problem and a real PyTorch task (sklearn digits)."""
