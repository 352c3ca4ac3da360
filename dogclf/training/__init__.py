"""Training: the one entry point that runs unchanged on the local backend and on SageMaker, and its callbacks."""

from dogclf.training.callbacks import Callback, StepInfo, TrainingContext

__all__ = ["Callback", "StepInfo", "TrainingContext"]
