"""MLflow tags that tie a sweep's runs together (read back by `llmlab report`)."""

VARIANT_TAG = "llmlab.variant"  # on a trial: the point of the space, e.g. "train.lr=0.001"
SEED_TAG = "llmlab.seed"  # on a trial: its seed
SWEEP_TAG = "llmlab.sweep"  # "parent" on the sweep's run; the sweep's name on a trial
STOPPED_TAG = "llmlab.stopped_early"  # on a trial the scheduler stopped: where and why
EXPLOIT_TAG = "llmlab.exploit"  # `llmlab.exploit.<step>` on a PBT trial: whose checkpoint it took there, with what
