"""Evaluation: utility (AUROC), fidelity (Fréchet distance), diversity (IRS), privacy statistics."""
