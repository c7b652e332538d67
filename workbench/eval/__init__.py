"""Evaluation: perplexity and KL divergence as llama-perplexity, sweeps, quant tables, routing stats, plots."""
from .kl import KLDResult, kl_divergence, read_kld, save_base
from .perplexity import PerplexityError, PerplexityResult, perplexity
from .sweep import perplexity_by_context
from .tables import quant_table

__all__ = ["perplexity", "PerplexityResult", "PerplexityError", "kl_divergence", "save_base", "read_kld",
           "KLDResult", "perplexity_by_context", "quant_table"]
