"""Domain mixing: weights by step (static, stages) or learned from loss (online), and a sampler
that fills each global batch with domains at exactly those weights."""

from llmlab.data.mixture.config import MixtureConfig, OnlineConfig, Stage
from llmlab.data.mixture.online import OnlineWeights
from llmlab.data.mixture.sampler import DomainExhausted, MixtureSampler
from llmlab.data.mixture.schedule import Schedule, initial_weights, weight_vector

__all__ = [
    "DomainExhausted",
    "MixtureConfig",
    "MixtureSampler",
    "OnlineConfig",
    "OnlineWeights",
    "Schedule",
    "Stage",
    "initial_weights",
    "weight_vector",
]
