"""reconlib: post-training pruning of LLMs by reconstruction-error minimization (Shin et al., EMNLP 2024)."""
from .config import RunConfig, profile

__all__ = ["RunConfig", "profile"]
