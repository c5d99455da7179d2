"""Data stage: raw corpora -> cleaned, deduplicated, tokenized, packed Arrow shards + a manifest."""
