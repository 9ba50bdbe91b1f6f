"""G2L-style knowledge distillation across model size (seed 001): a frozen large encoder teaches a
small one through a linear projection and a feature-level loss, on task-specific tiles only.

Modules: `losses` (pluggable feature losses), `augment` (institution/stain variation), `students`
(the small registry encoders and the distilled-checkpoint loader), `train` (the trainer),
`robustness` (de Jong et al. 2025 robustness index), `measure` (params, FLOPs, speed, memory),
`study` (teacher vs distilled vs undistilled table), `figures` (the chapter's plots), `bench`
(`maga bench distill`).
"""
