"""maga_core: the method of the MAGA-GLTrans reproduction (slides, encoders, feature files, the MAGA
alignment, the MIL aggregators with their training and cross-validation, statistics). It imports nothing
of the application (`maga`) around it; see ARCHITECTURE.md.
"""

__version__ = "0.1.0"
