"""Fault injection and fuzzing of the `maga` commands and service (issue 23): the harness that the
reliability tests run briefly and `maga bench reliability` runs long, so both measure the same thing."""
