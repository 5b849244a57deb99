"""The study folder: atomic writes, the files each run leaves, and the read model that
everything downstream reads them through."""
