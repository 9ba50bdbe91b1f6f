"""maga_core: the library behind the MAGA-GLTrans reproduction book.

Layers (lower never imports higher): errors/config -> slides -> data -> encoders -> maga/extract
-> mil/stats -> distill/e2e/telepath -> bench/book/cli. See ARCHITECTURE.md.
"""

__version__ = "0.1.0"
