"""reconlib: post-training pruning of LLMs by reconstruction-error minimization (Shin et al., EMNLP 2024)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "0")  # the Hub path stays real; models.load_model falls back to local files

from .config import RunConfig, profile  # noqa: E402

__all__ = ["RunConfig", "profile"]
