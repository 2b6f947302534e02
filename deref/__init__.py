"""DeReF Studio: the DeReF multimodal survival model, its training pipeline and explanations.

The library never imports Streamlit; the dashboard lives in ``app/``.
"""

__version__ = "0.1.0"
