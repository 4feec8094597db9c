"""Data curation: image-text scores (SigLIP, MLM-Filter), selection rules, resharding (docs/curation.md)."""
