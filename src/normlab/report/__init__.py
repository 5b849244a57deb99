"""Everything drawn from a stored study: statistics, findings, figures, galleries, the
norm explanation and the report documents. Reads only the store, never trains."""
