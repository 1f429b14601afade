"""Release for sharing (DESIGN step 10): an audited synthetic set as a dataset nobody can trace back.

``export_release`` writes PNGs under random names + ``metadata.csv`` (Hugging Face
``imagefolder`` layout) + a dataset card (``README.md``) and ``privacy.json`` with the privacy
and utility tables and a plain verdict, and refuses when the singling-out audit fails.
``find_leaks`` scans every byte of an export for tokens that must not be there.

This package takes plain data (arrays, tables, dicts); it does not know about stages or runs.
"""

from .card import FORMAT, render_card, size_category
from .imagefolder import DEFAULT_PRETTY_NAME, NAME_ALPHABET, SPLIT, ExportReport, export_release
from .leaks import MIN_TOKEN_BYTES, Leak, check_tokens, find_leaks, png_chunks
from .tables import (PRIVACY_FIELDS, PRIVACY_OPTIONAL, THIS_RELEASE, UTILITY_FIELDS, UTILITY_OPTIONAL,
                     attacker_rows, check_privacy, check_settings, check_utility, utility_rows)
from .verdict import DEFAULT_BOUND, ExportRefused, Failure, Verdict, judge

__all__ = [
    "export_release", "ExportReport", "ExportRefused", "find_leaks", "Leak", "judge", "Verdict", "Failure",
    "attacker_rows", "utility_rows", "check_privacy", "check_utility", "check_settings", "check_tokens",
    "png_chunks", "render_card", "size_category", "DEFAULT_BOUND", "DEFAULT_PRETTY_NAME", "FORMAT",
    "MIN_TOKEN_BYTES", "NAME_ALPHABET", "PRIVACY_FIELDS", "PRIVACY_OPTIONAL", "SPLIT", "THIS_RELEASE",
    "UTILITY_FIELDS", "UTILITY_OPTIONAL",
]
