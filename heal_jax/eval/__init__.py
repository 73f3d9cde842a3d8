"""Evaluation: log-likelihood benchmarks and note quality (ROUGE, rule-based HEAL rubric)."""
