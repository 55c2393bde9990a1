"""JupyterHub configuration files shipped with loophub."""
