"""Data pipeline: sources, formatting into input_ids/labels, truncation, collation, data report."""
