"""Adapters that plug the loophub domain into JupyterHub and the notebook server."""
