"""Running a study: expanding it to runs, executing them (locally, in a pool, on Ray) and
reporting progress; every result goes through the store."""
