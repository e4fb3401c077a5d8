"""Training: the plain-torch loop, optimizer and schedule, checkpoints, and the Ray Train launcher.

`llmlab.train.trainer` imports Ray; the rest runs in one process without it.
"""
