"""maga: the application around maga_core (the method): data manifests' cohorts, presets, cached runs,
batch extraction, the cohort pipeline, experiments, distillation, end-to-end training, telepathology,
benchmarks, the book's presentation layer (`maga.book`) and the `maga` command. See ARCHITECTURE.md."""
