"""Privacy instruments and the release filter: re-identification verifiers (``reid``), ..."""
