"""Evaluation: perplexity and KL divergence as llama-perplexity, sweeps, quant tables, routing stats, plots."""
from workbench.eval.kl import KLDResult, kl_divergence, read_kld, save_base
from workbench.eval.perplexity import PerplexityError, PerplexityResult, perplexity
from workbench.eval.sweep import perplexity_by_context
from workbench.eval.tables import quant_table

__all__ = ["perplexity", "PerplexityResult", "PerplexityError", "kl_divergence", "save_base", "read_kld",
           "KLDResult", "perplexity_by_context", "quant_table"]
